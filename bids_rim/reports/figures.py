"""Report figures (reportlets): small deterministic PNGs drawn with matplotlib's Agg backend.

Every figure shows QSM with one fixed window (``QSM_WINDOW_PPM``, shown in ppb) so that all
reportlets of all subjects can be compared by eye, and is written atomically with no
software/date metadata so that a rerun gives byte-identical files.

Images are reoriented to the closest RAS+ orientation for display (a flip/permutation of the
voxel axes, never an interpolation) and drawn in neurological convention (patient left on
the left of the panel), with L/R letters on the axial panels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import ndimage  # noqa: E402

from bids_rim.bidsio.derivatives import atomic_write_bytes  # noqa: E402 - the one atomic writer

#: QSM display window in ppm (paramagnetic rims are tens of ppb above white matter).
QSM_WINDOW_PPM = (-0.10, 0.15)
#: FLAIR display window, as percentiles of the FLAIR inside the brain mask.
FLAIR_WINDOW_PERCENTILES = (1.0, 99.5)
#: PNG metadata that matplotlib would otherwise fill with its version (keeps reruns identical).
PNG_METADATA = {"Software": None}
REPORT_DPI = 100

LESION_OUTLINE_COLOUR = "#ff2a2a"
CENTROID_MARKER_COLOUR = "#ffd21f"
FLAIR_EDGE_COLOUR = "#ff5a36"
PLANES = ("axial", "coronal", "sagittal")


# --------------------------------------------------------------------------- writing
def save_figure_png(figure: Figure, out_png: Path, *, dpi: int = REPORT_DPI) -> Path:
    """Render ``figure`` to PNG bytes (no metadata) and write them atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata=PNG_METADATA, facecolor=figure.get_facecolor())
    return atomic_write_bytes(Path(out_png), buffer.getvalue())


# --------------------------------------------------------------------------- volumes
class DisplayVolume:
    """A 3D image reoriented to RAS+ voxel axes for display, with its voxel size in mm.

    ``to_display_voxel`` maps voxel indices of the original image to this array's indices,
    so table centroids (given in the original QSM voxel grid) land on the right voxel.
    """

    def __init__(self, image: nib.Nifti1Image, *, dtype: Any = np.float32):
        if image.ndim != 3:
            raise ValueError(f"expected a 3D image, got shape {image.shape}")
        canonical = nib.as_closest_canonical(image)
        self.data = np.asarray(canonical.dataobj, dtype=dtype)
        self.zooms_mm = np.asarray(canonical.header.get_zooms()[:3], dtype=float)
        self.affine = canonical.affine
        self._original_to_display = np.linalg.inv(canonical.affine) @ image.affine

    def to_display_voxel(self, ijk: np.ndarray) -> np.ndarray:
        """Integer display-array indices of original voxel indices ``ijk``."""
        homogeneous = np.append(np.asarray(ijk, dtype=float), 1.0)
        return np.rint(self._original_to_display @ homogeneous)[:3].astype(int)


def _plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2D slice ready for ``imshow(origin='lower')``: rows are the vertical axis."""
    if plane == "axial":
        return volume[:, :, index].T
    if plane == "coronal":
        return volume[:, index, :].T
    if plane == "sagittal":
        return volume[index, :, :].T
    raise ValueError(f"unknown plane {plane!r}")


def _plane_axes(plane: str) -> tuple[int, int, int]:
    """(horizontal, vertical, through-plane) array axes of a display plane."""
    return {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}[plane]


def flair_window(flair: np.ndarray, brain_mask: np.ndarray | None) -> tuple[float, float]:
    """Robust FLAIR display window from the percentiles of its brain voxels."""
    values = flair[brain_mask > 0] if brain_mask is not None and np.any(brain_mask > 0) else flair[flair > 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, FLAIR_WINDOW_PERCENTILES)
    return float(low), float(high if high > low else low + 1.0)


def _qsm_ppb_for_display(qsm_ppm: np.ndarray, brain_mask: np.ndarray | None) -> np.ma.MaskedArray:
    """QSM in ppb with voxels outside the brain masked (drawn black)."""
    qsm_ppb = qsm_ppm * 1000.0
    outside = (brain_mask <= 0) if brain_mask is not None else np.zeros(qsm_ppb.shape, dtype=bool)
    return np.ma.masked_array(qsm_ppb, mask=outside)


def _grey_with_black_background() -> matplotlib.colors.Colormap:
    return plt.get_cmap("gray").with_extremes(bad="black")


# --------------------------------------------------------------------------- registration
def _mask_bounding_box(mask: np.ndarray, margin_vox: int = 2) -> tuple[slice, slice, slice]:
    coordinates = np.argwhere(mask > 0)
    if coordinates.size == 0:
        return tuple(slice(0, size) for size in mask.shape)  # type: ignore[return-value]
    low = np.maximum(coordinates.min(axis=0) - margin_vox, 0)
    high = np.minimum(coordinates.max(axis=0) + margin_vox + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def flair_edge_level(flair_smooth: np.ndarray, brain_mask: np.ndarray) -> float | None:
    """Iso-intensity level of smoothed FLAIR that traces its CSF/tissue boundaries.

    Halfway between the dark end of the brain's FLAIR (5th percentile, CSF) and its median
    (tissue): the iso-contour then outlines the ventricles, sulci and the brain surface, the
    landmarks a registration check compares with QSM. One level keeps the overlay legible.
    """
    values = flair_smooth[brain_mask > 0]
    if values.size == 0:
        return None
    dark, typical = np.percentile(values, [5.0, 50.0])
    return float(0.5 * (dark + typical)) if typical > dark else None


def registration_overlay(qsm: nib.Nifti1Image, flair_on_qsm: nib.Nifti1Image, brain_mask: nib.Nifti1Image,
                         out_png: Path, *, n_slices: int = 5, title: str | None = None) -> Path:
    """Registration check: contours of FLAIR (on the QSM grid) drawn over QSM.

    Three rows (axial, coronal, sagittal) of ``n_slices`` slices spread over the brain
    mask. If FLAIR is well registered its contours follow the QSM anatomy (ventricles,
    cortex, deep grey matter); a shift shows as contours offset from the QSM edges.
    """
    qsm_volume = DisplayVolume(qsm)
    flair_volume = DisplayVolume(flair_on_qsm)
    mask = DisplayVolume(brain_mask).data > 0
    sigma_vox = 1.0 / qsm_volume.zooms_mm
    flair_smooth = ndimage.gaussian_filter(flair_volume.data, sigma=sigma_vox)
    level = flair_edge_level(flair_smooth, mask)
    qsm_ppb = _qsm_ppb_for_display(qsm_volume.data, mask)
    box = _mask_bounding_box(mask)
    colour_map = _grey_with_black_background()
    vmin_ppb, vmax_ppb = (1000.0 * v for v in QSM_WINDOW_PPM)

    figure = plt.figure(figsize=(1.6 * n_slices + 1.0, 1.9 * 3 + 0.5), facecolor="black")
    grid = figure.add_gridspec(3, n_slices, left=0.05, right=0.88, bottom=0.02, top=0.92, wspace=0.02, hspace=0.04)
    image_artist = None
    for row, plane in enumerate(PLANES):
        horizontal, vertical, through = _plane_axes(plane)
        span = box[through]
        positions = np.linspace(span.start + 0.2 * (span.stop - span.start),
                                span.start + 0.8 * (span.stop - span.start), n_slices)
        extent = _extent_mm(qsm_volume, box, horizontal, vertical)
        for column, position in enumerate(np.rint(positions).astype(int)):
            axes = figure.add_subplot(grid[row, column])
            axes.set_facecolor("black")
            qsm_slice = _plane_slice(qsm_ppb, plane, position)[box[vertical], box[horizontal]]
            flair_slice = _plane_slice(flair_smooth, plane, position)[box[vertical], box[horizontal]]
            mask_slice = _plane_slice(mask, plane, position)[box[vertical], box[horizontal]]
            image_artist = axes.imshow(qsm_slice, cmap=colour_map, vmin=vmin_ppb, vmax=vmax_ppb, origin="lower",
                                       extent=extent, interpolation="nearest")
            if level is not None and np.nanmin(flair_slice) < level < np.nanmax(flair_slice):
                axes.contour(np.where(mask_slice, flair_slice, np.nan), levels=[level], colors=FLAIR_EDGE_COLOUR,
                             linewidths=0.8, origin="lower", extent=extent)
            axes.set_axis_off()
            world_mm = qsm_volume.affine[through, through] * position + qsm_volume.affine[through, 3]
            axes.text(0.03, 0.03, f"{'xyz'[through]} = {world_mm:+.0f} mm", color="white", fontsize=7,
                      transform=axes.transAxes)
            if plane == "axial" and column == 0:
                _left_right_letters(axes)
        figure.text(0.02, (2.5 - row) / 3 * 0.9 + 0.02, plane, color="white", rotation=90, fontsize=9,
                    va="center", ha="center")
    colour_bar_axes = figure.add_axes((0.92, 0.3, 0.015, 0.4))
    colour_bar = figure.colorbar(image_artist, cax=colour_bar_axes)
    _style_colour_bar(colour_bar, "QSM (ppb)")
    figure.suptitle(title or "FLAIR contours (orange) over QSM", color="white", fontsize=10, y=0.975)
    try:
        return save_figure_png(figure, out_png)
    finally:
        plt.close(figure)


def _extent_mm(volume: DisplayVolume, box: tuple[slice, slice, slice], horizontal: int,
               vertical: int) -> tuple[float, float, float, float]:
    """imshow extent (mm) of a cropped slice, so anisotropic voxels keep their true shape."""
    h_zoom, v_zoom = volume.zooms_mm[horizontal], volume.zooms_mm[vertical]
    h, v = box[horizontal], box[vertical]
    return ((h.start - 0.5) * h_zoom, (h.stop - 0.5) * h_zoom, (v.start - 0.5) * v_zoom, (v.stop - 0.5) * v_zoom)


def _left_right_letters(axes: plt.Axes) -> None:
    style = {"color": "white", "fontsize": 7, "transform": axes.transAxes, "va": "top"}
    axes.text(0.03, 0.97, "L", ha="left", **style)
    axes.text(0.97, 0.97, "R", ha="right", **style)


def _style_colour_bar(colour_bar: Any, label: str) -> None:
    colour_bar.set_label(label, color="white", fontsize=7)
    colour_bar.ax.tick_params(colors="white", labelsize=6)
    colour_bar.outline.set_edgecolor("white")


# --------------------------------------------------------------------------- lesion mosaics
class LesionMosaicRenderer:
    """Draws one lesion mosaic after another on a single reused figure (fast for 80+ lesions).

    Layout: columns axial/coronal/sagittal through the lesion centroid, top row QSM (fixed
    window, colour bar in ppb; a small marker at each panel edge points at the centroid),
    bottom row FLAIR with the lesion outline (red). The outline is drawn on FLAIR only so that
    a paramagnetic rim, which lies exactly on the lesion edge, stays unobstructed on QSM.
    """

    FIGURE_SIZE_IN = (4.8, 3.05)

    def __init__(self, qsm: nib.Nifti1Image, flair_on_qsm: nib.Nifti1Image, labels: nib.Nifti1Image, *,
                 brain_mask: nib.Nifti1Image | None = None, half_width_mm: float = 12.0, dpi: int = REPORT_DPI):
        self.qsm = DisplayVolume(qsm)
        self.flair = DisplayVolume(flair_on_qsm)
        self.labels = DisplayVolume(labels, dtype=np.int32)
        mask = DisplayVolume(brain_mask).data > 0 if brain_mask is not None else None
        self.qsm_ppb = _qsm_ppb_for_display(self.qsm.data, mask)
        self.flair_window = flair_window(self.flair.data, mask)
        self.dpi = dpi
        zooms = self.qsm.zooms_mm
        self.half_width_vox = np.maximum(np.ceil(half_width_mm / zooms).astype(int), 1)
        self._outlines: list[Any] = []
        self._build_figure()

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) of the PNGs this renderer writes."""
        return (round(self.FIGURE_SIZE_IN[0] * self.dpi), round(self.FIGURE_SIZE_IN[1] * self.dpi))

    def _build_figure(self) -> None:
        width_in, height_in = self.FIGURE_SIZE_IN
        self.figure = plt.figure(figsize=self.FIGURE_SIZE_IN, facecolor="black")
        vmin_ppb, vmax_ppb = (1000.0 * v for v in QSM_WINDOW_PPM)
        grey = _grey_with_black_background()
        self.panels: dict[tuple[str, str], tuple[plt.Axes, Any]] = {}
        panel_size, gap, left, bottom = 0.255, 0.01, 0.06, 0.02
        height_fraction = panel_size * width_in / height_in
        for row, modality in enumerate(("qsm", "flair")):
            y = bottom + (1 - row) * (height_fraction + gap)
            for column, plane in enumerate(PLANES):
                axes = self.figure.add_axes((left + column * (panel_size + gap), y, panel_size, height_fraction))
                axes.set_axis_off()
                axes.set_facecolor("black")
                horizontal, vertical, _ = _plane_axes(plane)
                shape = (2 * self.half_width_vox[vertical] + 1, 2 * self.half_width_vox[horizontal] + 1)
                extent = (-(self.half_width_vox[horizontal] + 0.5) * self.qsm.zooms_mm[horizontal],
                          (self.half_width_vox[horizontal] + 0.5) * self.qsm.zooms_mm[horizontal],
                          -(self.half_width_vox[vertical] + 0.5) * self.qsm.zooms_mm[vertical],
                          (self.half_width_vox[vertical] + 0.5) * self.qsm.zooms_mm[vertical])
                if modality == "qsm":
                    artist = axes.imshow(np.ma.masked_all(shape), cmap=grey, vmin=vmin_ppb, vmax=vmax_ppb,
                                         origin="lower", extent=extent, interpolation="nearest")
                    _centroid_markers(axes, extent)
                else:
                    artist = axes.imshow(np.ma.masked_all(shape), cmap=grey, vmin=self.flair_window[0],
                                         vmax=self.flair_window[1], origin="lower", extent=extent,
                                         interpolation="nearest")
                axes.set_xlim(extent[0], extent[1])
                axes.set_ylim(extent[2], extent[3])
                if row == 0:
                    if plane == "axial":
                        _left_right_letters(axes)
                    axes.set_title(plane, color="white", fontsize=7, pad=2)
                self.panels[(modality, plane)] = (axes, artist)
            self.figure.text(0.03, y + height_fraction / 2, "QSM" if modality == "qsm" else "FLAIR", color="white",
                             rotation=90, fontsize=8, va="center", ha="center")
        qsm_top = bottom + height_fraction + gap
        colour_bar_axes = self.figure.add_axes((left + 3 * (panel_size + gap) + 0.01, qsm_top + 0.02, 0.02,
                                                height_fraction - 0.04))
        colour_bar = self.figure.colorbar(self.panels[("qsm", "axial")][1], cax=colour_bar_axes)
        _style_colour_bar(colour_bar, "ppb")
        self.title = self.figure.text(0.5, 0.985, "", color="white", fontsize=8, ha="center", va="top")

    def _crop(self, volume: np.ndarray | np.ma.MaskedArray, centre: np.ndarray, plane: str) -> np.ma.MaskedArray:
        """Slice through ``centre`` cropped to the mosaic's half width; outside the image is masked."""
        horizontal, vertical, through = _plane_axes(plane)
        half = self.half_width_vox
        shape = volume.shape
        index = int(np.clip(centre[through], 0, shape[through] - 1))
        full = _plane_slice(volume, plane, index)
        full_mask = _plane_slice(np.ma.getmaskarray(volume), plane, index)
        out = np.zeros((2 * half[vertical] + 1, 2 * half[horizontal] + 1), dtype=np.float32)
        out_mask = np.ones(out.shape, dtype=bool)
        rows = np.arange(centre[vertical] - half[vertical], centre[vertical] + half[vertical] + 1)
        cols = np.arange(centre[horizontal] - half[horizontal], centre[horizontal] + half[horizontal] + 1)
        row_ok = (rows >= 0) & (rows < shape[vertical])
        col_ok = (cols >= 0) & (cols < shape[horizontal])
        block = np.ix_(rows[row_ok], cols[col_ok])
        target = np.ix_(np.flatnonzero(row_ok), np.flatnonzero(col_ok))
        out[target] = np.ma.getdata(full)[block]
        out_mask[target] = full_mask[block]
        return np.ma.masked_array(out, mask=out_mask)

    def render(self, lesion_row: Mapping[str, Any], out_png: Path) -> Path:
        """Draw the lesion of ``lesion_row`` (a lesion-table row) and write it to ``out_png``."""
        lesion_id = int(lesion_row["lesion_id"])
        centroid_ijk = np.array([float(lesion_row[f"centroid_{axis}"]) for axis in "ijk"])
        centre = self.qsm.to_display_voxel(centroid_ijk)
        lesion = np.ma.masked_array((self.labels.data == lesion_id).astype(np.float32))
        for outline in self._outlines:
            outline.remove()
        self._outlines = []
        for plane in PLANES:
            qsm_axes, qsm_artist = self.panels[("qsm", plane)]
            qsm_artist.set_data(self._crop(self.qsm_ppb, centre, plane))
            flair_axes, flair_artist = self.panels[("flair", plane)]
            flair_artist.set_data(self._crop(np.ma.masked_array(self.flair.data), centre, plane))
            lesion_slice = self._crop(lesion, centre, plane).filled(0.0)
            if lesion_slice.any():
                self._outlines.append(flair_axes.contour(lesion_slice, levels=[0.5], colors=LESION_OUTLINE_COLOUR,
                                                         linewidths=0.8, origin="lower",
                                                         extent=flair_artist.get_extent()))
        self.title.set_text(lesion_title(lesion_row))
        return save_figure_png(self.figure, out_png, dpi=self.dpi)

    def close(self) -> None:
        plt.close(self.figure)

    def __enter__(self) -> "LesionMosaicRenderer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _centroid_markers(axes: plt.Axes, extent: tuple[float, float, float, float]) -> None:
    """Short ticks at the four panel edges that point at the centroid, leaving it clear."""
    x0, x1, y0, y1 = extent
    tick_x, tick_y = 0.12 * (x1 - x0), 0.12 * (y1 - y0)
    style = {"color": CENTROID_MARKER_COLOUR, "linewidth": 1.0}
    axes.plot([0, 0], [y0, y0 + tick_y], **style)
    axes.plot([0, 0], [y1 - tick_y, y1], **style)
    axes.plot([x0, x0 + tick_x], [0, 0], **style)
    axes.plot([x1 - tick_x, x1], [0, 0], **style)


def lesion_title(lesion_row: Mapping[str, Any]) -> str:
    """``Lesion 003 · 145 mm³ · P(rim+) 0.91 ± 0.04 · rim+`` (rim parts only when present)."""
    parts = [f"Lesion {int(lesion_row['lesion_id']):03d}"]
    volume = lesion_row.get("volume_mm3")
    if volume is not None and np.isfinite(volume):
        parts.append(f"{float(volume):.0f} mm³")
    probability = lesion_row.get("rim_probability")
    if probability is not None and np.isfinite(probability):
        text = f"P(rim+) {float(probability):.2f}"
        uncertainty = lesion_row.get("rim_uncertainty")
        if uncertainty is not None and np.isfinite(uncertainty):
            text += f" ± {float(uncertainty):.2f}"
        parts.append(text)
    label = lesion_row.get("rim_label")
    if label is not None and np.isfinite(label):
        parts.append("rim+" if int(label) == 1 else "rim−")
    return " · ".join(parts)


def lesion_mosaic(qsm: nib.Nifti1Image, flair_on_qsm: nib.Nifti1Image, labels: nib.Nifti1Image,
                  lesion_row: Mapping[str, Any], out_png: Path, *, half_width_mm: float = 12.0,
                  brain_mask: nib.Nifti1Image | None = None) -> Path:
    """One lesion's mosaic: three planes through its centroid, QSM above FLAIR (see the renderer)."""
    with LesionMosaicRenderer(qsm, flair_on_qsm, labels, brain_mask=brain_mask,
                              half_width_mm=half_width_mm) as renderer:
        return renderer.render(lesion_row, out_png)
