"""Normal-appearing white matter (NAWM): the intensity reference for FLAIR and QSM.

FLAIR has no absolute scale and QSM's zero level depends on the reconstruction's referencing,
so both are expressed relative to NAWM. On FLAIR, brain tissue falls into three intensity
classes — CSF (dark), white matter, grey matter (brightest of the three; lesions are brighter
still but few). NAWM is the middle class of a 3-cluster k-means on brain FLAIR intensities,
restricted to voxels away from the brain edge and away from lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans

#: Voxels closer than this to the brain edge are not NAWM (cortex, partial volume, QSM edge artefacts).
EDGE_MARGIN_MM = 4.0
#: Voxels closer than this to a lesion are not NAWM ("dirty-appearing" perilesional tissue).
LESION_MARGIN_MM = 2.0
#: At most this many brain voxels feed the k-means (a fixed-seed subsample keeps it fast).
MAX_CLUSTER_SAMPLES = 50_000


@dataclass(frozen=True)
class TissueClasses:
    """FLAIR intensity classes inside the brain: the grey-matter level and the class boundaries."""

    csf_wm_boundary: float
    wm_gm_boundary: float
    gm_level: float


def _zooms(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.header.get_zooms()[:3], dtype=float)


def flair_tissue_classes(flair: nib.Nifti1Image, brain_mask: nib.Nifti1Image, *, seed: int = 0) -> TissueClasses:
    """Fit three FLAIR intensity classes (CSF < WM < GM) in the brain; return boundaries and GM level."""
    data = np.asarray(flair.dataobj, dtype=np.float32)
    values = data[np.asarray(brain_mask.dataobj) > 0]
    rng = np.random.default_rng(seed)
    if values.size > MAX_CLUSTER_SAMPLES:
        values = rng.choice(values, MAX_CLUSTER_SAMPLES, replace=False)
    # Clip the bright tail (lesions, vessels) so it cannot claim a class of its own.
    values = np.clip(values, None, np.percentile(values, 99))
    kmeans = KMeans(n_clusters=3, n_init=4, random_state=seed).fit(values.reshape(-1, 1))
    centres = np.sort(kmeans.cluster_centers_.ravel())
    return TissueClasses(float(centres[:2].mean()), float(centres[1:].mean()), float(centres[2]))


def brain_depth_mm(brain_mask: nib.Nifti1Image) -> np.ndarray:
    """Distance (mm) of every voxel from the nearest voxel outside the brain mask (0 outside).

    The array is padded by one voxel so that a brain touching the field of view still has an
    outside. Computed once per session and shared (:func:`nawm_mask`, the ventricle estimate):
    a Euclidean distance transform of a whole 0.7 mm brain costs about a second.
    """
    brain = np.asarray(brain_mask.dataobj) > 0
    return ndimage.distance_transform_edt(np.pad(brain, 1), sampling=_zooms(brain_mask))[1:-1, 1:-1, 1:-1]


def within_distance(mask: np.ndarray, zooms: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies at most ``radius_mm`` from the centre of a ``mask`` voxel.

    A binary dilation by the ellipsoid of voxel offsets within ``radius_mm`` (anisotropic voxels
    allowed): the same set as thresholding a distance transform, at a fraction of its cost.
    """
    half = np.floor(radius_mm / np.asarray(zooms)).astype(int)
    offsets = np.indices(2 * half + 1).reshape(3, -1).T - half
    inside = np.linalg.norm(offsets * np.asarray(zooms), axis=1) <= radius_mm
    structure = np.zeros(2 * half + 1, dtype=bool)
    structure[tuple((offsets[inside] + half).T)] = True
    return ndimage.binary_dilation(mask, structure)


def nawm_mask(
    flair: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    lesion_mask: nib.Nifti1Image | None = None,
    *,
    seed: int = 0,
    classes: TissueClasses | None = None,
    depth_mm: np.ndarray | None = None,
) -> nib.Nifti1Image:
    """Normal-appearing white matter on the FLAIR/QSM grid (uint8 0/1).

    WM-class FLAIR voxels (between the CSF/WM and WM/GM boundaries of
    :func:`flair_tissue_classes`) that are at least ``EDGE_MARGIN_MM`` inside the brain and
    more than ``LESION_MARGIN_MM`` away from any lesion. ``classes`` and ``depth_mm``
    (:func:`brain_depth_mm`) may be passed when the caller has them already.
    """
    zooms = _zooms(flair)
    if depth_mm is None:
        depth_mm = brain_depth_mm(brain_mask)
    candidate = depth_mm >= EDGE_MARGIN_MM
    if lesion_mask is not None:
        lesions = np.asarray(lesion_mask.dataobj) > 0
        if lesions.any():
            candidate &= ~within_distance(lesions, zooms, LESION_MARGIN_MM)
    if classes is None:
        classes = flair_tissue_classes(flair, brain_mask, seed=seed)
    data = np.asarray(flair.dataobj, dtype=np.float32)
    nawm = candidate & (data > classes.csf_wm_boundary) & (data < classes.wm_gm_boundary)
    return nib.Nifti1Image(nawm.astype(np.uint8), flair.affine)


def nawm_median(image: nib.Nifti1Image, nawm: nib.Nifti1Image) -> float:
    """Median of an image (FLAIR or QSM in ppm) over the NAWM mask; raises if the mask is empty."""
    mask = np.asarray(nawm.dataobj) > 0
    if not mask.any():
        raise ValueError("the normal-appearing white matter mask is empty; cannot normalise intensities")
    return float(np.median(np.asarray(image.dataobj, dtype=np.float64)[mask]))
