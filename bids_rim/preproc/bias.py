"""N4 bias-field correction of FLAIR (antspyx, in-process)."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np

from .antsio import to_ants
from .brainmask import otsu_threshold

#: N4 fits the field on the image shrunk to about this voxel size: the field is smooth, and on a
#: 1 mm head shrinking to 6 mm with a head mask took 8 s instead of 25 s (4 mm) or 82 s (4 mm,
#: no mask) and left the same residual white-matter variation.
FIT_VOXEL_MM = 6.0


def n4_bias_correct(flair: nib.Nifti1Image, mask: nib.Nifti1Image | None = None, *,
                    shrink_factor: int | None = None) -> nib.Nifti1Image:
    """Return FLAIR with its smooth multiplicative bias field removed (N4, four fitting levels).

    ``mask`` (same grid as ``flair``) limits the field estimate; without it the head foreground
    (Otsu's threshold) is used. ``shrink_factor`` defaults to the factor that brings the finest
    voxel size to :data:`FIT_VOXEL_MM`. Negative values (some reconstructions produce them) are
    clipped to 0 first because N4 works on log intensities.
    """
    data = np.clip(np.asarray(flair.dataobj, dtype=np.float32), 0, None)
    if mask is None:
        fit_region = data > otsu_threshold(data.ravel())
    else:
        fit_region = np.asarray(mask.dataobj) > 0
    if shrink_factor is None:
        zooms = nib.affines.voxel_sizes(flair.affine)
        shrink_factor = max(1, int(round(FIT_VOXEL_MM / zooms.min())))
    image = to_ants(nib.Nifti1Image(data, flair.affine))
    ants_mask = to_ants(nib.Nifti1Image(fit_region.astype(np.float32), flair.affine))
    corrected = ants.n4_bias_field_correction(
        image, mask=ants_mask, shrink_factor=shrink_factor, convergence={"iters": [50, 50, 50, 50], "tol": 1e-7}
    )
    # Same grid as the input: keep the input's affine exactly rather than the float32 round trip.
    return nib.Nifti1Image(corrected.numpy().astype(np.float32), flair.affine)
