"""Brain masks on the QSM grid: QSM's own support, the GRE magnitude, or a registered template.

Order of preference in the workflow: QSM support (QSM maps are almost always masked by the
reconstruction), then the GRE magnitude, then a template mask (the TemplateFlow template
:data:`BRAIN_MASK_TEMPLATE`, registered to FLAIR).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from .registration import register_affine
from .resample import resample_mask_to_reference

#: A QSM map whose exactly-zero voxels cover less than this fraction of the FOV is not masked.
#: Unmasked reconstructions have almost no exact zeros (float noise), while a masked map cropped
#: tightly around the brain can leave under 1 % outside it (seen on the synthetic small size).
MIN_ZERO_FRACTION_FOR_MASKED_QSM = 0.002
#: TemplateFlow template whose brain mask is used when neither QSM support nor magnitude exist.
BRAIN_MASK_TEMPLATE = "MNI152NLin2009cAsym"


def _mask_image(mask: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    img = nib.Nifti1Image(mask.astype(np.uint8), like.affine)
    img.set_qform(like.affine, code=1)
    img.set_sform(like.affine, code=1)
    return img


def largest_component_filled(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a boolean mask and fill its internal holes."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(largest)


def qsm_support_mask(qsm: nib.Nifti1Image) -> nib.Nifti1Image | None:
    """Brain mask from the non-zero support of a masked QSM map, or None if the map is not masked.

    Isolated zero voxels inside the brain (rare exact zeros) are filled as holes; stray non-zero
    specks outside are dropped by keeping the largest component.
    """
    data = np.asarray(qsm.dataobj)
    nonzero = data != 0
    if 1.0 - nonzero.mean() < MIN_ZERO_FRACTION_FOR_MASKED_QSM or not nonzero.any():
        return None
    return _mask_image(largest_component_filled(nonzero), qsm)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a 1D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def mask_from_magnitude(magnitude: nib.Nifti1Image, *, opening_mm: float = 4.0) -> nib.Nifti1Image:
    """Brain mask from a GRE magnitude image.

    Otsu's threshold separates tissue from background and from the dark skull; an erosion by
    ``opening_mm`` cuts the thin bridges that join brain and scalp, the largest component is
    the brain, and a dilation by the same amount (kept inside the thresholded tissue) gives back
    its border. Holes (dark veins, sinuses) are filled. Adequate for QSM maps that come
    unmasked; not a substitute for a dedicated brain extraction.
    """
    data = np.asarray(magnitude.dataobj, dtype=np.float32)
    tissue = data > otsu_threshold(data[np.isfinite(data)])
    zooms = nib.affines.voxel_sizes(magnitude.affine)
    ball = _ellipsoid(np.maximum(np.round(opening_mm / zooms).astype(int), 1))
    core = largest_component_filled(ndimage.binary_erosion(tissue, structure=ball))
    brain = ndimage.binary_dilation(core, structure=ball) & ndimage.binary_fill_holes(tissue)
    return _mask_image(largest_component_filled(brain), magnitude)


def _ellipsoid(radius_vox: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius_vox)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius_vox)) <= 1.0


def mask_from_template(
    image: nib.Nifti1Image,
    template: nib.Nifti1Image,
    template_mask: nib.Nifti1Image,
    *,
    reference: nib.Nifti1Image | None = None,
    reference_to_image: np.ndarray | None = None,
    seed: int = 0,
) -> nib.Nifti1Image:
    """Brain mask from a template: the template is registered to ``image`` (affine, mutual
    information) and its brain mask resampled onto the image grid (covered fraction ≥ 0.5).

    With ``reference`` and ``reference_to_image`` (4×4, reference world → image world, RAS mm)
    the mask goes onto the reference grid instead, through the composed transform; the
    workflow registers the template to FLAIR and puts the mask on the QSM grid this way,
    because an unmasked QSM map has too little anatomy to register a template to.
    """
    image_to_template = register_affine(template, image, seed=seed)
    if reference is None:
        return resample_mask_to_reference(template_mask, image, image_to_template)
    if reference_to_image is None:
        raise ValueError("reference_to_image is needed with reference")
    return resample_mask_to_reference(template_mask, reference, image_to_template @ np.asarray(reference_to_image))
