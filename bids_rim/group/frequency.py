"""Lesion- and PRL-frequency maps in template space, from the participant level's template masks.

With ``--output-spaces SPACE`` the participant level writes, per session,
``sub-X_[ses-Y_]space-SPACE_desc-lesions_mask.nii.gz`` and ``..._desc-rim_mask.nii.gz``. The
frequency map of a space is the voxel-wise share of patients whose mask covers the voxel
(one session per patient, as in the other patient-level statistics). Masks are read one at a
time into a running sum, so memory does not grow with the number of patients. A session whose
normalisation failed its quality check (``LesionShareInsideTemplateBrain`` in the lesion mask's
sidecar below :data:`~bids_rim.preproc.normalisation_qc.MIN_LESION_SHARE_INSIDE_BRAIN`) is left
out of both maps of that space, and named in their sidecars.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from bids_rim.bidsio.derivatives import atomic_write_json
from bids_rim.errors import InputError
from bids_rim.preproc.normalisation_qc import MIN_LESION_SHARE_INSIDE_BRAIN, normalisation_failed

LOGGER = logging.getLogger("bids_rim.group")
MASK_PATTERN = re.compile(r"_space-(?P<space>[A-Za-z0-9]+)_desc-(?P<desc>lesions|rim)_mask\.nii\.gz$")
MAP_DESCRIPTIONS = {"lesions": "lesion frequency: share of patients with a lesion in the voxel",
                    "rim": "PRL frequency: share of patients with a rim+ lesion (model label) in the voxel"}
MAP_NAMES = {"lesions": "lesionfreq", "rim": "prlfreq"}


@dataclass(frozen=True)
class FrequencyMap:
    """One frequency map written under ``OUTPUT_DIR/group/``."""

    space: str
    desc: str  # "lesions" or "rim"
    path: Path
    n_patients: int
    left_out: tuple[str, ...] = field(default=())  # lesion masks whose normalisation failed its check


def failed_normalisation(lesion_mask: Path) -> float | None:
    """The lesion share inside the template brain when it is below the threshold, else None.

    Read from the mask's sidecar; a mask without the check (older outputs) is not judged.
    """
    sidecar = lesion_mask.with_name(lesion_mask.name.replace(".nii.gz", ".json"))
    try:
        share = json.loads(sidecar.read_text()).get("LesionShareInsideTemplateBrain")
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, AttributeError) as error:
        raise InputError(f"{sidecar}: not a JSON object ({error})") from error
    return float(share) if normalisation_failed(share) else None


def find_template_masks(output_dir: Path, sessions: Iterable[tuple[str, str]]
                        ) -> tuple[dict[tuple[str, str], list[Path]], dict[str, list[tuple[Path, float]]]]:
    """The usable masks ``{(space, desc): [mask, ...]}`` of the given (participant_id, session_id
    or "n/a") pairs, and per space the lesion masks left out (with their lesion share inside the
    template brain) because their normalisation failed its check."""
    found: dict[tuple[str, str], list[Path]] = {}
    left_out: dict[str, list[tuple[Path, float]]] = {}
    for participant, session in sessions:
        folder = output_dir / participant / ("" if session in (None, "n/a") else session) / "anat"
        if not folder.is_dir():
            continue
        masks = [(path, match) for path in sorted(folder.glob(f"{participant}_*_mask.nii.gz"))
                 if (match := MASK_PATTERN.search(path.name)) is not None]
        failed: set[str] = set()  # spaces whose normalisation failed for this session
        for path, match in masks:
            if match["desc"] == "lesions" and (share := failed_normalisation(path)) is not None:
                failed.add(match["space"])
                left_out.setdefault(match["space"], []).append((path, share))
        for path, match in masks:
            if match["space"] not in failed:
                found.setdefault((match["space"], match["desc"]), []).append(path)
    return found, left_out


def frequency_image(masks: list[Path]) -> nib.Nifti1Image:
    """Voxel-wise share of ``masks`` that are non-zero; all masks must share one grid."""
    first = nib.load(masks[0])
    total = np.zeros(first.shape, dtype=np.float32)
    for path in masks:
        image = nib.load(path)
        if image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-3):
            raise InputError(f"{path}: template-space mask on another grid than {masks[0].name} "
                             f"(shape {image.shape} vs {first.shape}); rerun the participant level with one template")
        total += np.asarray(image.dataobj) > 0
    header = first.header.copy()
    header.set_data_dtype(np.float32)
    return nib.Nifti1Image(total / len(masks), first.affine, header)


def write_frequency_maps(output_dir: Path, sessions: Iterable[tuple[str, str]]) -> list[FrequencyMap]:
    """Write ``group/space-S_desc-{lesionfreq,prlfreq}_map.nii.gz`` (+ .json) for every space found."""
    written = []
    found, left_out = find_template_masks(output_dir, sessions)
    for space, masks in left_out.items():
        for mask, share in masks:
            LOGGER.warning("%s: left out of the %s frequency maps, its normalisation failed its quality check "
                           "(lesion share inside the template brain %.2f)", mask, space, share)
    for (space, desc), masks in sorted(found.items()):
        skipped = tuple(mask.relative_to(output_dir).as_posix() for mask, _ in left_out.get(space, []))
        path = output_dir / "group" / f"space-{space}_desc-{MAP_NAMES[desc]}_map.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp.nii.gz")
        nib.save(frequency_image(masks), temporary)
        os.replace(temporary, path)
        atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
            "Description": f"{MAP_DESCRIPTIONS[desc]} in {space} space",
            "Units": "fraction of patients",
            "NPatients": len(masks),
            "Sources": [f"bids::{mask.relative_to(output_dir).as_posix()}" for mask in masks],  # this dataset
            "LeftOut": list(skipped),
            "LeftOutDescription": ("sessions whose normalisation failed its quality check (lesion share inside "
                                   f"the template brain below {MIN_LESION_SHARE_INSIDE_BRAIN})"),
        })
        written.append(FrequencyMap(space, desc, path, len(masks), skipped))
    return written


def template_background(space: str) -> nib.Nifti1Image | None:
    """The template T1w from ``TEMPLATEFLOW_HOME`` (res-02) when it is on disk; never downloads."""
    home = Path(os.environ.get("TEMPLATEFLOW_HOME", Path.home() / ".cache" / "templateflow"))
    candidates = [path for path in sorted((home / f"tpl-{space}").glob(f"tpl-{space}_res-02_T1w.nii.gz"))
                  if path.stat().st_size > 0]  # not the empty placeholders TemplateFlow leaves offline
    return nib.load(candidates[0]) if candidates else None
