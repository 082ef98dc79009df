"""Quality check of a normalisation to a template: do the lesions land inside the template brain?

Lesions lie in the brain, so nearly all lesion voxels moved into template space should fall
inside the template's brain mask. A share below :data:`MIN_LESION_SHARE_INSIDE_BRAIN` says the
registration went astray (affine + SyN from a small field of view can). Pure numpy, so the
group level can read the threshold without importing antspyx.
"""

from __future__ import annotations

import numpy as np

#: Below this share of lesion voxels inside the template's brain mask a normalisation is flagged.
#: Periventricular and juxtacortical lesions can touch the mask's border at 2 mm, so a share a
#: little below 1 is no alarm; a registration that went astray moves far more voxels outside.
MIN_LESION_SHARE_INSIDE_BRAIN = 0.9


def lesion_share_inside_brain(lesions_in_template: np.ndarray, template_brain: np.ndarray) -> float | None:
    """Share (0-1) of the lesion voxels moved into template space that lie inside its brain mask.

    The quality check of a normalisation: ``None`` when no lesion voxel reached the template grid
    (nothing to judge). Both arrays are on the template grid.
    """
    lesions = np.asarray(lesions_in_template) > 0
    if lesions.shape != np.shape(template_brain):
        raise ValueError(f"lesion mask {lesions.shape} and template brain mask {np.shape(template_brain)} "
                         "differ in shape")
    total = int(lesions.sum())
    if total == 0:
        return None
    return float((np.asarray(template_brain) > 0)[lesions].sum() / total)


def normalisation_failed(share: float | None) -> bool:
    """Whether a lesion share inside the template brain fails the check (None, nothing to judge, passes)."""
    return share is not None and share < MIN_LESION_SHARE_INSIDE_BRAIN


def normalisation_warning(space: str, share: float | None) -> str | None:
    """The warning for a normalisation whose lesion share inside the brain is too low, else None."""
    if not normalisation_failed(share):
        return None
    return (f"normalisation to {space} looks wrong: only {share:.0%} of the lesion voxels fall inside the template "
            f"brain (expected >= {MIN_LESION_SHARE_INSIDE_BRAIN:.0%}); check the {space} masks before using them, "
            "the group-level frequency maps leave them out")
