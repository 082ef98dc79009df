"""Pre-flight checks of one session's input files, before any work is started.

They run in the CLI so that a bad file stops only its own participant, with one line
naming the file, instead of a traceback deep inside a workflow node.
"""

from __future__ import annotations

from pathlib import Path

from bids_rim.bidsio.inputs import SessionInputs
from bids_rim.preproc import checks


def check_session_inputs(unit: SessionInputs, *, lesion_source: str = "auto") -> list[str]:
    """Raise ``InputError`` for an unusable input of ``unit``; return warnings for usable ones.

    Checks: readable 3D NIfTI (not zero-byte, not truncated, not 4D), finite voxels, FLAIR,
    QSM and GRE magnitude not constant (all zero or one value), QSM in ppm, FLAIR and QSM
    overlapping in world space, a binary lesion mask on the FLAIR or the QSM grid; warnings for
    thick-slice (2D) FLAIR, for an empty lesion mask (the session has 0 lesions), for a
    session without a GRE magnitude (registration to QSM alone is less reliable) and for a
    lesion mask left out by a forgotten ``-d`` (:func:`unlisted_mask_warning`; ``lesion_source``
    is ``--lesion-source``).
    """
    flair = checks.ensure_3d(checks.load_nifti(unit.flair), unit.flair)
    qsm = checks.ensure_3d(checks.load_nifti(unit.qsm), unit.qsm)
    for image, path in ((flair, unit.flair), (qsm, unit.qsm)):
        checks.check_finite(image, path)
    checks.check_not_constant(flair, unit.flair, "FLAIR")
    checks.check_qsm_units(qsm, unit.qsm)  # an all-zero QSM is named as such here
    checks.check_not_constant(qsm, unit.qsm, "QSM")
    checks.check_overlap(qsm, flair, unit.qsm, unit.flair)
    if unit.magnitude is not None:
        magnitude = checks.ensure_3d(checks.load_nifti(unit.magnitude), unit.magnitude)
        checks.check_finite(magnitude, unit.magnitude)
        checks.check_not_constant(magnitude, unit.magnitude, "GRE magnitude")
    warnings = list(unit.choices)  # an image chosen among several: said in the log, the sidecar and the report
    unlisted = unlisted_mask_warning(unit, lesion_source)
    if unlisted:
        warnings.append(unlisted)
    if unit.lesion_mask is not None:
        mask = checks.ensure_3d(checks.load_nifti(unit.lesion_mask), unit.lesion_mask)
        # The workflow's rule (workflows.participant._mask_transform, the same checks.same_grid): the QSM
        # grid when shape and affine match it, else the FLAIR's. Shape alone would take a FLAIR-grid mask
        # for a QSM-grid one whenever the two images have the same matrix size.
        empty = checks.check_lesion_mask(mask, qsm if checks.same_grid(mask, qsm) else flair, unit.lesion_mask)
        if empty:
            warnings.append(empty)
    if unit.magnitude is None:
        warnings.append(f"{unit.qsm}: no GRE magnitude image in this session; FLAIR is registered to the QSM "
                        "map itself, which is less reliable — check the registration figure of the report")
    thick = checks.thick_slice_warning(flair, unit.flair)
    if thick:
        warnings.append(thick)
    return warnings


def unlisted_mask_warning(unit: SessionInputs, lesion_source: str = "auto") -> str | None:
    """A warning when ``--lesion-source auto`` falls back to the built-in FLAIR segmentation although
    a dataset under ``BIDS_DIR/derivatives/`` not given with ``-d`` holds a lesion mask of the session.

    Masks are read only from the ``-d`` datasets (as fMRIPrep reads only the derivatives it is given),
    so a forgotten ``-d`` would otherwise silently replace the rater's lesions by other ones. None when
    a mask was found, when none lies there, or when another ``--lesion-source`` was chosen.
    """
    hint = unlisted_mask_hint(unit)
    if lesion_source != "auto" or hint is None:
        return None
    where = " ".join(f"{key}-{value}" for key, value in
                     (("sub", unit.subject), ("ses", unit.session), ("run", unit.run)) if value is not None)
    return f"{where}: no lesion mask among the -d datasets, but {hint} (the built-in FLAIR segmentation is used)"


def unlisted_mask_hint(unit: SessionInputs) -> str | None:
    """``<dataset> holds one (<file>); add -d <dataset> to use it`` for a session without a mask from the
    ``-d`` datasets whose ``BIDS_DIR/derivatives/`` holds one; None otherwise."""
    mask = unit.unlisted_lesion_mask
    if unit.lesion_mask is not None or mask is None:
        return None
    dataset = _dataset_of(mask, unit.subject)
    needs = ("" if (dataset / "dataset_description.json").is_file()
             else " (it first needs a dataset_description.json with \"DatasetType\": \"derivative\")")
    shown = mask.relative_to(dataset) if mask.is_relative_to(dataset) else mask
    return f"{dataset} holds one ({shown}); add -d {dataset}{needs} to use the rater's mask"


def _dataset_of(path: Path, subject: str) -> Path:
    """The dataset folder of a file: the parent of its ``sub-<subject>`` folder."""
    for parent in path.parents:
        if parent.name == f"sub-{subject}":
            return parent.parent
    return path.parent
