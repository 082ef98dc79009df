"""One imaging session: paint the truth on the QSM grid, then acquire QSM, GRE and FLAIR."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .anatomy import (
    BRAIN_CENTRE_MNI,
    SMALL_CROP_MNI,
    SubjectAnatomy,
    draw_head_pose,
    load_mni_template,
    render_anatomy,
)
from .geometry import (
    grid_affine,
    random_rigid,
    resample,
    rotation_matrix,
    smooth_random_field,
)
from .lesions import Lesion, lesion_fractions
from .painting import tube_fraction
from .params import SynthParams
from .population import Site
from .qsm import DipoleModel, NoiseModel
from .threads import sample_linear
from .tissue import build_property_maps
from .vessels import Tube

FULL_BRAIN_MNI = np.array([[-72.0, 72.0], [-108.0, 74.0], [-72.0, 82.0]])


@dataclass
class SessionImages:
    """Everything a session produces (arrays with their affines) plus the truth."""

    qsm_affine: np.ndarray
    qsm_ppm: np.ndarray
    qsm_clean_ppm: np.ndarray     # same reconstruction without field noise (oracle only)
    qsm_background_ppm: np.ndarray  # noise-free reconstruction without the rims (oracle only)
    magnitude: np.ndarray
    truth_labels: np.ndarray      # true lesion ids on the QSM grid
    rim_fraction: np.ndarray      # true rim partial volume on the QSM grid
    brain_mask: np.ndarray
    vessel_fraction: np.ndarray   # true vein + calcification partial volume (oracle only)
    noise_model: NoiseModel       # to redraw the QSM noise around a lesion (oracle only)
    flair_affine: np.ndarray
    flair: np.ndarray
    flair_lesion_fraction: np.ndarray
    flair_lesion_labels: np.ndarray
    qsm_to_flair_ras: np.ndarray
    rotation_deg: float
    translation_mm: float


def qsm_spacing(site: Site, size: str) -> float:
    """QSM voxel size: the site's for ``full``; 1.1-1.3 mm for the cropped ``small`` size."""
    return site.qsm_spacing_mm if size == "full" else round(1.1 + (site.qsm_spacing_mm - 0.6) / 2, 2)


def _qsm_grid(subject: SubjectAnatomy, pose: np.ndarray, spacing: float, size: str,
              rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    box = (FULL_BRAIN_MNI if size == "full" else SMALL_CROP_MNI) - BRAIN_CENTRE_MNI[:, None]
    margin = 4.0 if size == "full" else 0.0
    corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1)
    corners = corners * subject.scale.max()
    x = pose[:3, :3] @ corners + pose[:3, 3:4]
    lo, hi = x.min(axis=1) - margin, x.max(axis=1) + margin
    if size == "small":  # the crop box is axis-aligned in the head, not after rotation
        centre, extent = (lo + hi) / 2, (box[:, 1] - box[:, 0]) * subject.scale.max()
        lo, hi = centre - extent / 2, centre + extent / 2
    shape = tuple(int(np.ceil(e / spacing)) for e in hi - lo)
    centre = (lo + hi) / 2 + rng.uniform(-2, 2, size=3)
    return grid_affine(np.full(3, spacing), shape, centre), shape


def simulate_session(subject: SubjectAnatomy, lesions: list[Lesion], veins: list[Tube],
                     site: Site, params: SynthParams, size: str,
                     rng: np.random.Generator) -> SessionImages:
    """Render the truth on the QSM grid and acquire all images of one session."""
    tissue = params.tissue
    pose = draw_head_pose(rng, params.anatomy)
    spacing = qsm_spacing(site, size)
    affine, shape = _qsm_grid(subject, pose, spacing, size, rng)
    anat = render_anatomy(subject, pose, affine, shape)
    props = build_property_maps(anat, subject, tissue, rng, spacing)
    chi_wm = subject.chi_ppm["chi_wm_ppm"]

    labels = np.zeros(shape, dtype=np.int16)
    best = np.zeros(shape, dtype=np.float32)
    rim_total = np.zeros(shape, dtype=np.float32)
    rim_chi_ppm = np.zeros(shape, dtype=np.float32)
    lesion_boxes = []  # where the lesions' partial volume may be > 0
    for lesion in lesions:
        fr = lesion_fractions(lesion, pose, affine, shape)
        if fr is None:
            continue
        b = fr.box
        lesion_boxes.append(b)
        tissue_here = (1 - anat.ventricles[b]) * (anat.brain[b] > 0.5)
        f = fr.lesion * tissue_here
        rim = fr.rim * tissue_here  # fr.rim already holds its own partial volume
        chi_lesion = chi_wm + lesion.core_chi_ppb / 1000.0
        rim_chi = rim * (lesion.rim_chi_ppb - lesion.core_chi_ppb) / 1000.0
        props.chi_ppm[b] = props.chi_ppm[b] * (1 - f) + f * chi_lesion + rim_chi
        rim_chi_ppm[b] += rim_chi
        props.flair[b] = props.flair[b] * (1 - f) + f * lesion.flair_ratio * tissue.flair_wm
        props.r2star_hz[b] = (props.r2star_hz[b] * (1 - f) + f * (
            tissue.r2star_wm_hz + tissue.r2star_lesion_change_hz
            + tissue.r2star_per_ppm_iron_hz * max(lesion.core_chi_ppb, 0) / 1000)
            + rim * tissue.r2star_per_ppm_iron_hz * lesion.rim_chi_ppb / 1000)
        props.proton_density[b] += f * tissue.proton_density_lesion_change
        won = (f >= 0.5) & (f > best[b])
        labels[b][won] = lesion.lesion_id
        best[b] = np.maximum(best[b], f)
        rim_total[b] = np.maximum(rim_total[b], rim)

    to_vox = np.linalg.inv(affine) @ pose
    vein_frac = np.zeros(shape, dtype=np.float32)
    for tube in veins + [t for lesion in lesions for t in lesion.veins]:
        pts = (to_vox[:3, :3] @ tube.points_y_mm.T + to_vox[:3, 3:4]).T
        tube_fraction(shape, pts, tube.radius_mm / spacing, out=vein_frac)
    vessel_fraction = vein_frac.copy()
    chi_vein = subject.chi_ppm["chi_vein_ppm"]
    props.chi_ppm += vein_frac * (chi_vein - props.chi_ppm)
    rim_chi_ppm *= 1 - vein_frac
    props.flair += vein_frac * (tissue.flair_vein - props.flair)
    props.r2star_hz += vein_frac * (tissue.r2star_vein_hz - props.r2star_hz)
    for lesion in lesions:
        if lesion.calcification_y_mm is None:
            continue
        centre = to_vox[:3, :3] @ lesion.calcification_y_mm + to_vox[:3, 3]
        calc = tube_fraction(shape, np.stack([centre, centre + 1e-3]),
                             lesion.calcification_radius_mm / spacing)
        props.chi_ppm += calc * (lesion.calcification_chi_ppm - props.chi_ppm)
        rim_chi_ppm *= 1 - calc
        props.r2star_hz += calc * 60.0
        props.flair *= 1 - 0.5 * calc
        np.maximum(vessel_fraction, calc, out=vessel_fraction)

    brain_mask = (anat.brain > 0.5).astype(np.float32)
    magnitude_clean = props.r2star_hz * np.float32(-params.sites.gre_echo_time_s)
    np.exp(magnitude_clean, out=magnitude_clean)
    magnitude_clean *= props.proton_density
    wm_magnitude = float(np.median(magnitude_clean[anat.wm > 0.9]))
    in_head = anat.brain > 0.05
    props.chi_ppm *= in_head
    rim_chi_ppm *= in_head
    qsm, qsm_clean, rims_only, noise_model = _acquire_qsm(props.chi_ppm, rim_chi_ppm, brain_mask,
                                                          magnitude_clean, wm_magnitude, anat,
                                                          site, spacing, rng)
    magnitude = _rician(magnitude_clean, wm_magnitude / site.gre_snr, rng)
    magnitude *= np.float32(site.flair_intensity_scale * 2)

    flair_parts = _acquire_flair(props.flair, best, labels, lesion_boxes, affine, shape, subject,
                                 pose, site, params, size, rng)
    background = np.subtract(qsm_clean, rims_only, out=rims_only)  # the image without rims
    return SessionImages(affine, qsm, qsm_clean, background, magnitude, labels, rim_total,
                         brain_mask.astype(bool), vessel_fraction, noise_model, *flair_parts)


def _acquire_qsm(chi_ppm, rim_chi_ppm, mask, magnitude, wm_magnitude: float, anat, site: Site,
                 spacing, rng):
    """Field from the dipole kernel, field noise scaled by 1/magnitude, Tikhonov inversion.

    ``wm_magnitude`` is the median GRE magnitude of white matter (where the field noise is the
    site's). Returns the noisy and noise-free reconstructions, the reconstruction of the rims
    alone (the inversion is linear, so noise-free minus rims-only is the image without rims)
    and the noise model.
    """
    model = DipoleModel(chi_ppm.shape, spacing, site.tikhonov_lambda)
    field = model.field_ppm(chi_ppm)
    field += smooth_random_field(rng, chi_ppm.shape, 40.0 / spacing,
                                 site.residual_background_ppb / 1000.0)
    field_sigma = np.maximum(magnitude, np.float32(1e-6))
    np.divide(np.float32(wm_magnitude), field_sigma, out=field_sigma)
    np.clip(field_sigma, 1.0, 5.0, out=field_sigma)
    field_sigma *= np.float32(site.qsm_noise_ppb / 1000.0 / model.noise_gain())
    clean = model.invert(field, mask)
    del field
    noise = rng.standard_normal(chi_ppm.shape, dtype=np.float32)
    noise *= field_sigma
    noisy = model.invert(noise, mask)
    del noise
    noisy += clean
    csf = (anat.ventricles > 0.8) & (mask > 0)
    offset = np.float32(np.median(noisy[csf]) if csf.sum() > 20 else 0.0)
    rims_only = model.invert(model.field_ppm(rim_chi_ppm), mask)
    for image in (noisy, clean):
        image -= offset
        image *= mask
    return noisy, clean, rims_only, NoiseModel(field_sigma, mask, spacing, site.tikhonov_lambda,
                                               model.contrast_kept)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of SD ``sigma`` (float32)."""
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    return np.hypot(real, imag, out=real)


def _acquire_flair(flair_truth, lesion_frac, labels, lesion_boxes, qsm_affine, qsm_shape,
                   subject, pose, site, params: SynthParams, size, rng):
    """Resample the FLAIR signal through the head motion onto the FLAIR grid; bias and noise."""
    sp = params.sites
    qsm_centre = qsm_affine[:3, :3] @ ((np.array(qsm_shape) - 1) / 2) + qsm_affine[:3, 3]
    motion, angle, shift = random_rigid(rng, sp.head_offset_deg[1], sp.head_offset_mm[1],
                                        sp.head_offset_deg[0], sp.head_offset_mm[0],
                                        centre_mm=pose[:3, 3])
    if site.flair_protocol == "3D":
        spacing = np.array([1.0, 1.0, 1.0])
    else:
        spacing = np.array([0.9, 0.9, 3.0])
    if size == "small":
        spacing = spacing * np.array([1.2, 1.2, 1.0 if site.flair_protocol == "2D" else 1.2])
    tilt = rotation_matrix(rng.normal(size=3) * site.flair_oblique_deg / np.sqrt(3))
    extent = np.array(qsm_shape) * np.abs(np.diag(qsm_affine)[:3]) + (40.0 if size == "full" else 16.0)
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing))
    flair_affine = grid_affine(spacing, shape, motion[:3, :3] @ qsm_centre + motion[:3, 3]
                               + rng.uniform(-5, 5, size=3), tilt)
    to_qsm_world = np.linalg.inv(motion)
    normal = flair_affine[:3, 2] / np.linalg.norm(flair_affine[:3, 2])
    offsets = [-1.0, 0.0, 1.0] if site.flair_protocol == "2D" else [0.0]
    signal = None
    for off in offsets:  # thick 2D slices average the signal across the slice profile
        shifted = flair_affine.copy()
        shifted[:3, 3] += normal * off
        # NaN marks FLAIR voxels that reach outside the QSM field of view
        part = resample(flair_truth, qsm_affine, shifted, shape, to_qsm_world, cval=np.nan)
        if len(offsets) > 1:
            part /= np.float32(len(offsets))
        if signal is None:
            signal = part
        else:
            signal += part
    outside = np.isnan(signal)
    signal[outside] = _template_head(flair_affine, outside, subject, pose, to_qsm_world)
    del outside
    bias = smooth_random_field(rng, shape, 120.0 / spacing.min(), 1.0)
    np.tanh(bias, out=bias)  # a smooth gain of 1 +- the site's amplitude
    bias *= np.float32(sp.flair_bias_amplitude)
    bias += np.float32(1.0)
    signal *= bias
    del bias
    flair = _rician(signal, 1.0 / site.flair_snr, rng)
    flair *= np.float32(site.flair_intensity_scale)
    np.rint(flair, out=flair)
    frac, flair_labels = _resample_lesions(lesion_frac, labels, lesion_boxes, qsm_affine,
                                           flair_affine, shape, to_qsm_world)
    return (flair_affine, flair.astype(np.int16), frac, flair_labels.astype(np.int16),
            motion, angle, shift)


def _resample_lesions(lesion_frac, labels, lesion_boxes, qsm_affine, flair_affine, shape,
                      to_qsm_world) -> tuple[np.ndarray, np.ndarray]:
    """Lesion fraction (linear) and labels (nearest) on the FLAIR grid.

    Both are zero away from the lesions, so they are resampled only inside the FLAIR-grid box
    of each lesion's QSM box (``lesion_boxes``, where its partial volume was painted; two
    voxels of margin on each grid). Boxes that overlap get the same values twice, as every box
    samples the whole map: the same values as resampling the whole grid, at a fraction of the
    cost.
    """
    frac = np.zeros(shape, dtype=np.float32)
    flair_labels = np.zeros(shape, dtype=np.float32)
    labels_float = labels.astype(np.float32)
    to_flair_vox = np.linalg.inv(flair_affine) @ np.linalg.inv(to_qsm_world) @ qsm_affine
    for qsm_box in lesion_boxes:
        corners_ijk = np.array(np.meshgrid(*[(b.start - 2, b.stop + 1) for b in qsm_box],
                                           indexing="ij")).reshape(3, -1)
        corners = to_flair_vox[:3, :3] @ corners_ijk + to_flair_vox[:3, 3:4]
        lo = np.maximum(np.floor(corners.min(axis=1)).astype(int) - 2, 0)
        hi = np.minimum(np.ceil(corners.max(axis=1)).astype(int) + 3, np.array(shape))
        if np.any(hi <= lo):
            continue
        sub_affine = flair_affine.copy()
        sub_affine[:3, 3] = flair_affine[:3, :3] @ lo + flair_affine[:3, 3]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_shape = tuple(int(n) for n in hi - lo)
        frac[box] = resample(lesion_frac, qsm_affine, sub_affine, sub_shape, to_qsm_world)
        flair_labels[box] = resample(labels_float, qsm_affine, sub_affine, sub_shape,
                                     to_qsm_world, order=0)
    return frac, flair_labels


#: FLAIR planes handled at once when sampling the template head (bounds the coordinate arrays).
PLANES_PER_CHUNK = 16


def _template_head(flair_affine, where: np.ndarray, subject: SubjectAnatomy, pose, to_qsm_world
                   ) -> np.ndarray:
    """FLAIR-like signal of the head from the template (affine part only) at the FLAIR voxels
    ``where`` (those outside the QSM FOV), in the order of ``signal[where]``; sampled there
    only, a few planes at a time, with float32 template coordinates."""
    y_to_mni = np.eye(4)
    y_to_mni[:3, :3] = np.diag(1 / subject.scale)
    y_to_mni[:3, 3] = BRAIN_CENTRE_MNI
    template = load_mni_template()
    vox = np.linalg.inv(template.affine) @ y_to_mni @ np.linalg.inv(pose) @ to_qsm_world @ flair_affine
    matrix, offset = vox[:3, :3].astype(np.float32), vox[:3, 3:4].astype(np.float32)
    flair = _template_flair()
    parts = [np.zeros(0, dtype=np.float32)]
    for start in range(0, where.shape[0], PLANES_PER_CHUNK):
        ijk = np.stack(np.nonzero(where[start:start + PLANES_PER_CHUNK])).astype(np.float32)
        ijk[0] += start
        parts.append(sample_linear(flair, matrix @ ijk + offset))
    return np.concatenate(parts)


@lru_cache(maxsize=1)
def _template_flair() -> np.ndarray:
    """FLAIR-like contrast of the whole template (WM 1, GM 1.3, CSF 0.2, head from T1).

    Computed a slab of planes at a time, so that no full-size temporary is made (each costs
    more to map into memory than to fill).
    """
    t = load_mni_template()
    flair = np.empty_like(t.wm)
    for start in range(0, flair.shape[0], PLANES_PER_CHUNK):
        s = slice(start, start + PLANES_PER_CHUNK)
        brain, gm, wm = t.brain[s], t.gm[s], t.wm[s]
        csf = np.clip(brain - gm - wm, 0, 1)
        flair[s] = wm + 1.3 * gm + 0.2 * csf + (1 - brain) * 0.8 * np.clip(t.t1[s], 0, 2)
    return flair
