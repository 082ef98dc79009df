"""Spatial normalisation to a TemplateFlow template, for lesion and rim maps in template space.

FLAIR on the QSM grid (skull-stripped with the brain mask) is registered to the template's
T1w brain with antspyx, affine then SyN (mutual information, so the FLAIR/T1w contrast
difference is no obstacle); lesion and rim masks follow with nearest-neighbour interpolation.
Templates come from TemplateFlow, which fetches a missing one where it can reach the internet;
where it cannot (a cluster node, a container without network), a template that is not in
``TEMPLATEFLOW_HOME`` is an error that says how to pre-fetch it.
Each normalisation is checked afterwards (:mod:`bids_rim.preproc.normalisation_qc`).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_rim.errors import InputError
from bids_rim.preproc.antsio import from_ants, to_ants
from bids_rim.preproc.registration import ants_random_seed

#: Template resolution used for normalisation (TemplateFlow ``res-02``: 2 mm).
TEMPLATE_RESOLUTION = 2


def template_on_disk(path: Path | None) -> bool:
    """Whether a template file is really there: TemplateFlow without internet leaves an empty
    placeholder of every file in its home folder (its skeleton), which is no image."""
    return path is not None and path.is_file() and path.stat().st_size > 0


def _template_file(space: str, **query: object) -> Path | None:
    from templateflow import api

    found = api.get(space, resolution=TEMPLATE_RESOLUTION, **query)
    if isinstance(found, list):
        return Path(found[0]) if len(found) == 1 else None
    return Path(found)


def resolve_template(space: str) -> tuple[Path, Path | None]:
    """The template's T1w image and brain mask (None when the mask is absent) on disk."""
    try:
        t1w = _template_file(space, suffix="T1w", desc=None)
    except Exception as error:  # templateflow raises assorted errors when it would need the network
        t1w = None
        reason = f" ({type(error).__name__})"
    else:
        reason = ""
    if not template_on_disk(t1w):
        home = os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")
        name = f"tpl-{space}/tpl-{space}_res-0{TEMPLATE_RESOLUTION}_T1w.nii.gz"
        raise InputError(
            f"{home}/{name}: template not found{reason}, and TemplateFlow could not fetch it here — pre-fetch it "
            f"on a machine with internet with: python -c \"from templateflow import api; "
            f"api.get('{space}', resolution={TEMPLATE_RESOLUTION}, desc=None, suffix='T1w'); "
            f"api.get('{space}', resolution={TEMPLATE_RESOLUTION}, desc='brain', suffix='mask')\" "
            "and point TEMPLATEFLOW_HOME at it (the Docker image has it built in)"
        )
    try:
        mask = _template_file(space, desc="brain", suffix="mask")
    except Exception:  # noqa: BLE001 - the mask is optional: without it the T1w is used whole
        mask = None
    return t1w, mask if template_on_disk(mask) else None


def register_to_template(
    flair_on_qsm: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    template: nib.Nifti1Image,
    template_mask: nib.Nifti1Image | None = None,
    *,
    seed: int = 0,
    work_dir: Path | None = None,
) -> list[str]:
    """Affine + SyN transforms (antspyx file list, template ← subject) for ``apply_to_template``.

    The transform files (``to_template_*``) go to ``work_dir`` when given (made if needed),
    else to a temporary folder that antspyx makes and never removes. ITK's thread count is
    process-wide (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, see :mod:`bids_rim.preproc.antsio`),
    so it is not an argument here.

    Reproducible: antspyx (0.6) ignores a ``random_seed`` argument of ``ants.registration`` and
    reads the seed of its random metric sampling only from its global configuration, so until
    2026-12-03 every run sampled differently (affine entries differed by a few per cent between
    two runs on the same inputs, and a test subject landed outside the template brain now and
    then). The seed (``seed + 1``, as ANTs takes 0 for "from the clock") is set there for this call
    and restored afterwards; ``ants.set_ants_deterministic`` would also reseed numpy's global
    generator.
    """
    import ants
    import ants.config

    outprefix = {}
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        outprefix = {"outprefix": str(Path(work_dir) / "to_template_")}

    brain = np.asarray(brain_mask.dataobj) > 0
    moving = nib.Nifti1Image(np.asarray(flair_on_qsm.dataobj, dtype=np.float32) * brain, flair_on_qsm.affine)
    fixed_data = np.asarray(template.dataobj, dtype=np.float32)
    if template_mask is not None:
        fixed_data = fixed_data * (np.asarray(template_mask.dataobj) > 0)
    fixed = nib.Nifti1Image(fixed_data, template.affine)
    previous_seed = ants.config._random_seed
    ants.config._random_seed = ants_random_seed(seed)
    try:
        result = ants.registration(
            fixed=to_ants(fixed), moving=to_ants(moving), type_of_transform="SyN",
            aff_metric="mattes", syn_metric="mattes", reg_iterations=(40, 20, 0), **outprefix,
        )
    finally:
        ants.config._random_seed = previous_seed
    return list(result["fwdtransforms"])


def apply_to_template(mask: nib.Nifti1Image, template: nib.Nifti1Image, transforms: list[str]) -> nib.Nifti1Image:
    """A binary mask on the subject grid, moved into template space (nearest neighbour)."""
    import ants

    as_float = nib.Nifti1Image(np.asarray(mask.dataobj, dtype=np.float32), mask.affine)
    moved = ants.apply_transforms(fixed=to_ants(template), moving=to_ants(as_float), transformlist=transforms,
                                  interpolator="nearestNeighbor")
    image = from_ants(moved)
    return nib.Nifti1Image((np.asarray(image.dataobj) > 0.5).astype(np.uint8), image.affine)
