"""Subject anatomy: the MNI152 2009 template (shipped in nilearn) warped per subject.

Coordinates: MNI mm (``m``), subject head mm (``y``, brain centre at 0, head-fixed) and scanner
world mm (``x``, the QSM world; B0 along +z). A subject is ``m = c + y / scale + d(y)`` with a
smooth displacement ``d``; a session places the head in the scanner with a rigid pose ``x = P y``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage

from .geometry import random_rigid, upsample_to
from .params import AnatomyParams, TissueParams
from .threads import sample_linear

BRAIN_CENTRE_MNI = np.array([0.0, -18.0, 8.0])
# Crop of the small (test) size, MNI mm (min, max) per axis: lateral ventricles, deep grey
# nuclei, upper brainstem and the surrounding white matter and cortex. A tighter crop
# (x +-42, y -58..22, z -25..32) was twice as fast but left rigid FLAIR-to-GRE registration
# too little structure (tests/test_preproc_synth.py failed at 27 deg), so this one is kept.
SMALL_CROP_MNI = np.array([[-50.0, 50.0], [-70.0, 30.0], [-35.0, 40.0]])

# Deep grey nuclei as ellipsoids: name, right-hemisphere centre (MNI mm), semi-axes (mm),
# susceptibility range name in TissueParams. Mirrored to the left hemisphere.
DEEP_NUCLEI: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float], str], ...] = (
    ("caudate", (13.0, 12.0, 10.0), (4.5, 9.0, 8.0), "chi_caudate_ppm"),
    ("putamen", (25.0, 3.0, 1.0), (5.5, 14.0, 9.0), "chi_putamen_ppm"),
    ("globus_pallidus", (19.0, -3.0, -1.0), (3.5, 8.0, 4.5), "chi_globus_pallidus_ppm"),
    ("thalamus", (11.0, -18.0, 7.0), (7.0, 13.0, 8.0), "chi_thalamus_ppm"),
    ("red_nucleus", (5.0, -20.0, -9.0), (3.0, 3.5, 3.5), "chi_red_nucleus_ppm"),
    ("substantia_nigra", (11.0, -19.0, -13.0), (3.0, 8.0, 2.5), "chi_substantia_nigra_ppm"),
    ("dentate", (15.0, -57.0, -35.0), (7.0, 8.0, 6.0), "chi_dentate_ppm"),
)


@dataclass(frozen=True)
class MniTemplate:
    """ICBM152 2009a nonlinear symmetric 1 mm maps as float32 in [0, 1] (t1 normalised to WM = 1)."""

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray


TEMPLATE_CACHE_VERSION = 1


def template_cache_path(nilearn_version: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "bids_rim", f"synth_mni_v{TEMPLATE_CACHE_VERSION}_"
                                           f"nilearn{nilearn_version}.npz")


@lru_cache(maxsize=1)
def load_mni_template() -> MniTemplate:
    """The derived template, from an uncompressed cache when present (decompressing and
    deriving it takes seconds, which every test process would otherwise pay).

    Maps are held at 8 bits (as the template is shipped) whether they come from the cache or
    were just derived, so that a first and a later run give the same bytes.
    """
    import nilearn

    path = template_cache_path(nilearn.__version__)
    try:
        with np.load(path) as cached:
            return _from_8bit({k: cached[k] for k in cached.files})
    except (OSError, KeyError, ValueError):
        pass
    stored = _to_8bit(_derive_mni_template(os.path.join(os.path.dirname(nilearn.__file__),
                                                        "datasets", "data")))
    try:  # write atomically: parallel test workers may race
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(partial, **stored)
        os.replace(partial, path)
    except OSError:
        pass
    return _from_8bit(stored)


T1_STORED_MAX = 2.0  # t1 (WM = 1) is clipped to [0, 2] when held at 8 bits


def _to_8bit(template: MniTemplate) -> dict[str, np.ndarray]:
    maps = {k: getattr(template, k) for k in ("gm", "wm", "brain", "ventricles")}
    maps["t1"] = np.clip(template.t1, 0, T1_STORED_MAX) / T1_STORED_MAX
    return {"affine": template.affine,
            **{k: np.round(v * 255).clip(0, 255).astype(np.uint8) for k, v in maps.items()}}


def _from_8bit(stored: dict[str, np.ndarray]) -> MniTemplate:
    maps = {k: stored[k].astype(np.float32) / np.float32(255)
            for k in ("t1", "gm", "wm", "brain", "ventricles")}
    maps["t1"] *= np.float32(T1_STORED_MAX)
    return MniTemplate(np.asarray(stored["affine"], dtype=float), **maps)


def _derive_mni_template(folder: str) -> MniTemplate:
    """Load the template from nilearn's wheel and derive a brain mask and the lateral ventricles."""
    maps = {}
    for name in ("t1", "gm", "wm"):
        path = os.path.join(folder, f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: MNI152 template missing from the nilearn install")
        img = nib.load(path)
        maps[name] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = img.affine
    tissue = maps["gm"] + maps["wm"]
    brain = ndimage.binary_closing(tissue > 0.3, iterations=3)
    brain = ndimage.binary_fill_holes(brain)
    csf = np.clip(brain - tissue, 0.0, 1.0) * brain
    ijk = np.indices(brain.shape).reshape(3, -1)
    mni = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *brain.shape))
    central = ((np.abs(mni[0]) < 30) & (mni[1] > -50) & (mni[1] < 35) & (mni[2] > -10)
               & (mni[2] < 35))
    labels, n = ndimage.label((csf > 0.6) & central)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    ventricles = np.isin(labels, 1 + np.flatnonzero(sizes > 500)).astype(np.float32)
    t1 = maps["t1"] / np.median(maps["t1"][maps["wm"] > 0.9])
    return MniTemplate(affine, t1.astype(np.float32), maps["gm"], maps["wm"],
                       brain.astype(np.float32), ventricles)


@dataclass(frozen=True)
class SubjectAnatomy:
    """What makes one subject's brain: its size, warp and tissue susceptibilities."""

    scale: np.ndarray                  # per-axis head size factor
    deformation_mm: np.ndarray         # (3, n, n, n) displacement on a lattice in y mm
    lattice_origin_mm: float
    lattice_step_mm: float
    chi_ppm: dict[str, float]

    def y_to_mni(self, y_mm: np.ndarray) -> np.ndarray:
        """Map subject points (3, N) to MNI mm."""
        lattice = (y_mm - self.lattice_origin_mm) / self.lattice_step_mm
        disp = np.stack([ndimage.map_coordinates(d, lattice, order=1, mode="nearest")
                         for d in self.deformation_mm])
        return BRAIN_CENTRE_MNI[:, None] + y_mm / self.scale[:, None] + disp

    def mni_to_y(self, m_mm: np.ndarray) -> np.ndarray:
        """Approximate inverse of :meth:`y_to_mni` (two fixed-point steps; error < 0.1 mm)."""
        y = (m_mm - BRAIN_CENTRE_MNI[:, None]) * self.scale[:, None]
        for _ in range(2):
            residual = m_mm - self.y_to_mni(y)
            y = y + residual * self.scale[:, None]
        return y


def draw_subject_anatomy(rng: np.random.Generator, anatomy: AnatomyParams,
                         tissue: TissueParams) -> SubjectAnatomy:
    """Draw one subject: head size, smooth warp and tissue susceptibilities."""
    scale = rng.uniform(*anatomy.scale_range, size=3)
    step = 8.0
    n = 31  # lattice of 8 mm covering +-120 mm
    raw = rng.standard_normal((3, n, n, n))
    smooth = np.stack([ndimage.gaussian_filter(r, anatomy.deformation_scale_mm / step / 2.0)
                       for r in raw])
    smooth *= anatomy.deformation_mm_sd / (smooth.std() + 1e-12)
    chi = {name: float(rng.uniform(*getattr(tissue, name)))
           for name in tissue.__dataclass_fields__ if name.startswith("chi_")
           and isinstance(getattr(tissue, name), tuple)}
    return SubjectAnatomy(scale, smooth.astype(np.float32), -step * (n - 1) / 2, step, chi)


def draw_head_pose(rng: np.random.Generator, anatomy: AnatomyParams) -> np.ndarray:
    """Rigid 4x4 placing the head (y) in the scanner (x): the head is never perfectly straight."""
    pose, _, _ = random_rigid(rng, 2.0 * anatomy.rotation_deg_sd, 2.0 * anatomy.translation_mm_sd)
    return pose


@dataclass(frozen=True)
class NucleusFraction:
    """Partial volume of one deep grey nucleus (both hemispheres) inside its grid box."""

    box: tuple[slice, slice, slice]
    fraction: np.ndarray        # float 0..1, shape of the box


@dataclass
class AnatomyMaps:
    """Tissue maps of one session on the QSM grid (scanner world)."""

    brain: np.ndarray           # float 0..1
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    deep_nuclei: dict[str, NucleusFraction | None]  # order of DEEP_NUCLEI; None: off the grid
    t1_head: np.ndarray         # template T1 (WM = 1), used for tissue outside the brain


def render_anatomy(subject: SubjectAnatomy, pose: np.ndarray, affine: np.ndarray,
                   shape: tuple[int, int, int]) -> AnatomyMaps:
    """Sample the warped template on a grid (affine: voxel -> scanner mm).

    The warp is evaluated on every 4th voxel and interpolated linearly; the template-voxel
    coordinates are interpolated directly (the MNI-to-template-voxel map is affine, so this is
    the same as interpolating MNI mm and converting, without three more full-size arrays).
    Grey and white matter are sampled only inside the brain, the ventricles only inside the
    grid box that holds the template's ventricle box.
    """
    template = load_mni_template()
    coarse_idx = [np.linspace(0, n - 1, max(2, int(np.ceil(n / 4)) + 1)) for n in shape]
    ijk = np.stack(np.meshgrid(*coarse_idx, indexing="ij")).reshape(3, -1)
    x = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inv_pose = np.linalg.inv(pose)
    y = inv_pose[:3, :3] @ x + inv_pose[:3, 3:4]
    inv_t = np.linalg.inv(template.affine)
    vox_coarse = (inv_t[:3, :3] @ subject.y_to_mni(y) + inv_t[:3, 3:4]).reshape(
        (3, *[len(c) for c in coarse_idx])).astype(np.float32)
    vox = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        upsample_to(vox_coarse[axis], shape, out=vox[axis])

    brain = sample_linear(template.brain, vox)
    in_brain = brain > 0
    points = vox[:, in_brain]
    gm, wm = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
    gm[in_brain] = sample_linear(template.gm, points)
    wm[in_brain] = sample_linear(template.wm, points)
    del points
    csf = brain - gm
    csf -= wm
    np.clip(csf, 0.0, 1.0, out=csf)
    ventricles = np.zeros(shape, dtype=np.float32)
    # the template's ventricles are 0 outside this box (one voxel of margin each side)
    bounds = _ventricle_box_vox()
    found = _grid_box_inside(vox, _strided(vox), lambda v: v, bounds[:, 0] - 1, bounds[:, 1] + 1)
    if found is not None:
        box, box_vox = found
        near = in_brain[box]
        ventricles[box][near] = sample_linear(template.ventricles, box_vox[:, near])
    # t1 serves only outside the brain, but three quarters of a full-size grid lie there:
    # sampling every voxel is cheaper than gathering the points outside
    t1_head = sample_linear(template.t1, vox)
    nuclei = deep_nuclei_fractions(vox, template.affine, float(np.abs(affine[:3, :3]).max()))
    return AnatomyMaps(brain, wm, gm, csf, ventricles, nuclei, t1_head)


@lru_cache(maxsize=1)
def _ventricle_box_vox() -> np.ndarray:
    """(3, 2) template-voxel bounds (min, max) of the ventricle map, one voxel of margin."""
    found = ndimage.find_objects((load_mni_template().ventricles > 0).astype(np.int8))[0]
    return np.array([[b.start - 1, b.stop] for b in found], dtype=np.float32)


#: Voxel stride of the coarse search for each nucleus' bounding box (see :func:`_voxel_box_of`).
NUCLEUS_SEARCH_STRIDE = 4


def deep_nuclei_fractions(vox: np.ndarray, template_affine: np.ndarray, voxel_mm: float
                          ) -> dict[str, NucleusFraction | None]:
    """Soft (partial-volume) membership of each deep grey nucleus, both hemispheres merged.

    ``vox`` (3, *shape) holds the template-voxel coordinates of every grid voxel; MNI mm are
    derived from them (``template_affine``) only where a nucleus is searched or painted. Each
    hemisphere is painted inside the box of voxels within 2 mm of its ellipsoid's bounding box.
    """
    def to_mni(points: np.ndarray) -> np.ndarray:
        return (np.tensordot(template_affine[:3, :3], points, axes=1)
                + template_affine[:3, 3].reshape(3, 1, 1, 1))

    coarse = to_mni(_strided(vox))
    out: dict[str, NucleusFraction | None] = {}
    for name, centre, axes, _ in DEEP_NUCLEI:
        sides = []
        for side in (1.0, -1.0):
            c = np.array([side * centre[0], centre[1], centre[2]])
            found = _grid_box_inside(vox, coarse, to_mni, c - np.array(axes) - 2,
                                     c + np.array(axes) + 2)
            if found is not None:
                sides.append((c, *found))
        if not sides:
            out[name] = None
            continue
        union = tuple(slice(min(b[a].start for _, b, _ in sides), max(b[a].stop for _, b, _ in sides))
                      for a in range(3))
        frac = np.zeros(tuple(u.stop - u.start for u in union), dtype=np.float32)
        for c, box, mni in sides:
            local = tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union))
            rel = [(mni[a] - c[a]) / axes[a] for a in range(3)]
            radius = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
            frac[local] = np.maximum(frac[local],
                                     np.clip((1 - radius) * min(axes) / voxel_mm + 0.5, 0, 1))
        out[name] = NucleusFraction(union, frac)
    return out


def _strided(vox: np.ndarray) -> np.ndarray:
    """Every ``NUCLEUS_SEARCH_STRIDE``-th voxel of a (3, *shape) coordinate array."""
    return vox[(slice(None), *(slice(None, None, NUCLEUS_SEARCH_STRIDE),) * 3)]


def _grid_box_inside(vox: np.ndarray, coarse: np.ndarray, convert, lo: np.ndarray,
                     hi: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Smallest grid box holding every voxel whose point ``convert(vox)`` lies strictly inside
    (lo, hi), with the converted points of the voxels in that box.

    Searched first on every ``NUCLEUS_SEARCH_STRIDE``-th voxel (``coarse`` =
    ``convert(_strided(vox))``) with the box grown by the largest step between strided
    neighbours, then exactly inside the found region: the same box as a search of the whole
    grid, at a fraction of its cost. ``convert`` maps template-voxel coordinates (3, ...) to
    the space of ``lo`` and ``hi`` (an affine map).
    """
    s = NUCLEUS_SEARCH_STRIDE
    steps = [np.abs(np.diff(coarse, axis=a)).max(initial=0.0) for a in (1, 2, 3)]
    grow = float(sum(steps)) + 1e-3
    near = np.all((coarse > (lo - grow)[:, None, None, None])
                  & (coarse < (hi + grow)[:, None, None, None]), axis=0)
    if not near.any():
        return None
    idx = np.nonzero(near)
    region = tuple(slice(max(0, i.min() * s - s), min(n, i.max() * s + s + 1))
                   for i, n in zip(idx, vox.shape[1:]))
    sub = convert(vox[(slice(None), *region)])
    inside = np.all((sub > lo[:, None, None, None]) & (sub < hi[:, None, None, None]), axis=0)
    if not inside.any():
        return None
    found = np.nonzero(inside)
    local = tuple(slice(i.min(), i.max() + 1) for i in found)
    box = tuple(slice(r.start + k.start, r.start + k.stop) for k, r in zip(local, region))
    return box, sub[(slice(None), *local)]
