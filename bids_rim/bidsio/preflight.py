"""Pre-flight checks of one session's input files, before any work is started.

They run in the CLI so that a bad file stops only its own participant, with one line
naming the file, instead of a traceback deep inside a workflow node.
"""

from __future__ import annotations

from bids_rim.bidsio.inputs import SessionInputs
from bids_rim.preproc import checks


def check_session_inputs(unit: SessionInputs) -> list[str]:
    """Raise ``InputError`` for an unusable input of ``unit``; return warnings for usable ones.

    Checks: readable 3D NIfTI (not zero-byte, not truncated, not 4D), finite voxels, FLAIR,
    QSM and GRE magnitude not constant (all zero or one value), QSM in ppm, FLAIR and QSM
    overlapping in world space, a binary lesion mask on the FLAIR or the QSM grid; warnings for
    thick-slice (2D) FLAIR, for an empty lesion mask (the session has 0 lesions) and for a
    session without a GRE magnitude (registration to QSM alone is less reliable).
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
