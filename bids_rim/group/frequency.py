"""Lesion- and PRL-frequency maps in template space, from the participant level's template masks.

With ``--output-spaces SPACE`` the participant level writes, per session,
``sub-X_[ses-Y_]space-SPACE_desc-lesions_mask.nii.gz`` and ``..._desc-rim_mask.nii.gz``. The
frequency map of a space is the voxel-wise share of patients whose mask covers the voxel
(one session per patient, as in the other patient-level statistics). Masks are read one at a
time into a running sum, so memory does not grow with the number of patients.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from bids_rim.bidsio.derivatives import atomic_write_json
from bids_rim.errors import InputError

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


def find_template_masks(output_dir: Path, sessions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[Path]]:
    """``{(space, desc): [mask, ...]}`` for the given (participant_id, session_id or "n/a") pairs."""
    found: dict[tuple[str, str], list[Path]] = {}
    for participant, session in sessions:
        folder = output_dir / participant / ("" if session in (None, "n/a") else session) / "anat"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"{participant}_*_mask.nii.gz")):
            match = MASK_PATTERN.search(path.name)
            if match is not None:
                found.setdefault((match["space"], match["desc"]), []).append(path)
    return found


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
    for (space, desc), masks in sorted(find_template_masks(output_dir, sessions).items()):
        path = output_dir / "group" / f"space-{space}_desc-{MAP_NAMES[desc]}_map.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp.nii.gz")
        nib.save(frequency_image(masks), temporary)
        os.replace(temporary, path)
        atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
            "Description": f"{MAP_DESCRIPTIONS[desc]} in {space} space",
            "Units": "fraction of patients",
            "NPatients": len(masks),
            "Sources": [mask.relative_to(output_dir).as_posix() for mask in masks],
        })
        written.append(FrequencyMap(space, desc, path, len(masks)))
    return written


def template_background(space: str) -> nib.Nifti1Image | None:
    """The template T1w from ``TEMPLATEFLOW_HOME`` (res-02) when it is on disk; never downloads."""
    home = Path(os.environ.get("TEMPLATEFLOW_HOME", Path.home() / ".cache" / "templateflow"))
    candidates = sorted((home / f"tpl-{space}").glob(f"tpl-{space}_res-02_T1w.nii.gz"))
    return nib.load(candidates[0]) if candidates else None
