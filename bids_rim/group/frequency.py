"""Lesion- and PRL-frequency maps in template space, from the participant level's template masks.

With ``--output-spaces SPACE`` the participant level writes, per session,
``sub-X_[ses-Y_]space-SPACE_desc-lesions_mask.nii.gz`` and ``..._desc-rim_mask.nii.gz``. The
frequency map of a space is the voxel-wise share of patients whose mask covers the voxel
(one session per patient, as in the other patient-level statistics). Masks are read one at a
time into a running sum, so memory does not grow with the number of patients. A session whose
normalisation failed its quality check (``LesionShareInsideTemplateBrain`` in the lesion mask's
sidecar below :data:`~bids_rim.preproc.normalisation_qc.MIN_LESION_SHARE_INSIDE_BRAIN`) is left
out of both maps of that space, and named in their sidecars. Only the masks of the run that wrote the
session's lesion table are pooled (the run manifests, :func:`~bids_rim.group.aggregate.current_template_masks`):
masks an earlier run left behind are named in the sidecars too, never mixed with the current lesions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np

from bids_rim.bidsio.derivatives import atomic_write_json
from bids_rim.errors import InputError
from bids_rim.group.aggregate import SessionTable, current_template_masks, written_by_runs
from bids_rim.preproc.normalisation_qc import MIN_LESION_SHARE_INSIDE_BRAIN, normalisation_failed

LOGGER = logging.getLogger("bids_rim.group")
TABLE_SUFFIX = "desc-lesions_table.tsv"
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
    earlier_run: tuple[str, ...] = field(default=())  # masks not written by the run of their session's lesion table


@dataclass(frozen=True)
class TemplateMasks:
    """The template-space masks of the analysed sessions: pooled, and left out (with why)."""

    usable: dict[tuple[str, str], list[Path]]  # {(space, desc): [mask, ...]}
    bad_normalisation: dict[str, list[tuple[Path, float]]]  # {space: [(lesion mask, share inside brain)]}
    earlier_run: dict[tuple[str, str], list[tuple[Path, Path]]]  # {(space, desc): [(mask, its session's table)]}


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


def find_template_masks(output_dir: Path, tables: Iterable[SessionTable]) -> TemplateMasks:
    """The template-space masks beside each of the lesion ``tables`` the group level uses (one per
    session): usable, or left out because the run that wrote the table did not write them (see
    :func:`~bids_rim.group.aggregate.current_template_masks`) or because their normalisation failed
    its check (that space of that session goes; judged on the current masks only)."""
    found = TemplateMasks({}, {}, {})
    manifests: dict[str, dict[Path, float]] = {}
    for table in tables:
        # The table's own entities (run included): another run's masks belong to a table left out
        # (one run per session), and would count that session's lesions twice.
        prefix = table.path.name.removesuffix(f"_{TABLE_SUFFIX}")
        masks = [path for path in sorted(table.path.parent.glob(f"{prefix}_space-*_mask.nii.gz"))
                 if MASK_PATTERN.search(path.name) is not None]
        if not masks:
            continue
        if table.participant_id not in manifests:
            manifests[table.participant_id] = written_by_runs(output_dir, table.participant_id)
        current, earlier = current_template_masks(table.path, masks, manifests[table.participant_id])
        for path in earlier:
            match = MASK_PATTERN.search(path.name)
            found.earlier_run.setdefault((match["space"], match["desc"]), []).append((path, table.path))
        matched = [(path, MASK_PATTERN.search(path.name)) for path in current]
        failed: set[str] = set()  # spaces whose normalisation failed for this session
        for path, match in matched:
            if match["desc"] == "lesions" and (share := failed_normalisation(path)) is not None:
                failed.add(match["space"])
                found.bad_normalisation.setdefault(match["space"], []).append((path, share))
        for path, match in matched:
            if match["space"] not in failed:
                found.usable.setdefault((match["space"], match["desc"]), []).append(path)
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


def write_frequency_maps(output_dir: Path, tables: Sequence[SessionTable]) -> list[FrequencyMap]:
    """Write ``group/space-S_desc-{lesionfreq,prlfreq}_map.nii.gz`` (+ .json) for every space found, from
    the template-space masks of the sessions of ``tables`` (the lesion tables the patient-level
    statistics use, one per patient)."""
    written = []
    masks_found = find_template_masks(output_dir, tables)
    for space, masks in masks_found.bad_normalisation.items():
        for mask, share in masks:
            LOGGER.warning("%s: left out of the %s frequency maps, its normalisation failed its quality check "
                           "(lesion share inside the template brain %.2f)", mask, space, share)
    for (space, _), masks in sorted(masks_found.earlier_run.items()):
        for mask, table in masks:
            LOGGER.warning("%s: left out of the %s frequency maps, written by an earlier run than its session's "
                           "lesion table %s (the run manifests in %s/log/ do not list it for the run that wrote "
                           "the table)", mask, space, table.relative_to(output_dir).as_posix(),
                           table.relative_to(output_dir).parts[0])
    for (space, desc), masks in sorted(masks_found.usable.items()):
        skipped = tuple(mask.relative_to(output_dir).as_posix()
                        for mask, _ in masks_found.bad_normalisation.get(space, []))
        earlier = tuple(mask.relative_to(output_dir).as_posix()
                        for mask, _ in masks_found.earlier_run.get((space, desc), []))
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
            "LeftOutEarlierRun": list(earlier),
            "LeftOutEarlierRunDescription": ("template-space masks written by an earlier participant-level run than "
                                             "their session's lesion table (per the run manifests in sub-X/log/): "
                                             "the latest run of that session did not write them"),
        })
        written.append(FrequencyMap(space, desc, path, len(masks), skipped, earlier))
    return written


def template_background(space: str) -> nib.Nifti1Image | None:
    """The template T1w from ``TEMPLATEFLOW_HOME`` (res-02) when it is on disk; never downloads."""
    home = Path(os.environ.get("TEMPLATEFLOW_HOME", Path.home() / ".cache" / "templateflow"))
    candidates = [path for path in sorted((home / f"tpl-{space}").glob(f"tpl-{space}_res-02_T1w.nii.gz"))
                  if path.stat().st_size > 0]  # not the empty placeholders TemplateFlow leaves offline
    return nib.load(candidates[0]) if candidates else None
