"""N4 bias-field correction of FLAIR (antspyx, in-process)."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np

from .antsio import to_ants


def n4_bias_correct(flair: nib.Nifti1Image, mask: nib.Nifti1Image | None = None, *, shrink_factor: int = 4) -> nib.Nifti1Image:
    """Return FLAIR with its smooth multiplicative bias field removed (N4, ANTs defaults otherwise).

    ``mask`` (same grid as ``flair``) limits the field estimate to the head/brain; without it N4
    uses the whole image. Negative values (rare in FLAIR, but some reconstructions produce them)
    are clipped to 0 first because N4 works on log intensities.
    """
    data = np.clip(np.asarray(flair.dataobj, dtype=np.float32), 0, None)
    image = to_ants(nib.Nifti1Image(data, flair.affine))
    ants_mask = None
    if mask is not None:
        ants_mask = to_ants(nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.float32), mask.affine))
    corrected = ants.n4_bias_field_correction(image, mask=ants_mask, shrink_factor=shrink_factor)
    # Same grid as the input: keep the input's affine exactly rather than the float32 round trip.
    return nib.Nifti1Image(corrected.numpy().astype(np.float32), flair.affine)
