"""Gather the participant-level patches and tables into a training set, with rim labels.

Rim annotations (``*_desc-rim_annotations.tsv``: ``x_mm, y_mm, z_mm`` in QSM world RAS mm,
``rim`` 1/0) are matched to the pipeline's lesions: an annotation belongs to the lesion whose
label map contains its centroid, else to the lesion with the nearest centroid within
``max_distance_mm``. A lesion that receives several annotations (a confluent lesion the
pipeline kept whole) is rim+ when any of them is. Lesions without an annotation stay
unlabelled (NaN): self-supervised pretraining still uses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from bids.layout import parse_file_entities

from bids_rim.errors import InputError
from bids_rim.preproc.patches import load_patch_spacing_mm, load_patches

LOGGER = logging.getLogger("bids_rim.training_data")
ANNOTATION_COLUMNS = ("x_mm", "y_mm", "z_mm", "rim")


@dataclass(frozen=True)
class TrainingSet:
    """Patches (N, 3, P, P, P) and one metadata row per patch."""

    patches: np.ndarray
    meta: pd.DataFrame  # participant_id, session_id, site, lesion_id, label (1, 0 or NaN)
    spacing_mm: np.ndarray  # (N,) isotropic voxel size of each patch
    lesion_outline: str = "given"  # the participant level's --lesion-outline (one for all sessions)

    @property
    def nominal_spacing_mm(self) -> float:
        """The spacing most patches have (larger ones belong to rescaled big lesions)."""
        values, counts = np.unique(np.round(self.spacing_mm, 3), return_counts=True)
        return float(values[np.argmax(counts)])


def read_annotations(path: Path) -> pd.DataFrame:
    """Read a rim annotation table, refusing one that lacks a needed column."""
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    missing = [column for column in ANNOTATION_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{path}: rim annotation table lacks column(s) {missing}")
    if not table["rim"].dropna().isin([0, 1]).all():
        raise InputError(f"{path}: the 'rim' column must hold 0 (rim-) or 1 (rim+)")
    return table


def match_annotations(
    lesions: pd.DataFrame, labels: nib.Nifti1Image, annotations: pd.DataFrame, *, max_distance_mm: float = 4.0
) -> pd.Series:
    """The rim label of each lesion of ``lesions`` (indexed like it; NaN when unannotated)."""
    label_data = np.asarray(labels.dataobj)
    to_voxel = np.linalg.inv(labels.affine)
    centroids = lesions[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(dtype=float)
    result = pd.Series(np.nan, index=lesions.index, dtype=float)
    row_of_id = {int(lesion_id): row for row, lesion_id in zip(lesions.index, lesions["lesion_id"])}
    for _, annotation in annotations.iterrows():
        point = annotation[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
        voxel = np.rint(nib.affines.apply_affine(to_voxel, point)).astype(int)
        inside = all(0 <= v < n for v, n in zip(voxel, label_data.shape[:3]))
        lesion_id = int(label_data[tuple(voxel)]) if inside else 0
        row = row_of_id.get(lesion_id)
        if row is None and len(centroids):
            distances = np.linalg.norm(centroids - point, axis=1)
            nearest = int(np.argmin(distances))
            if distances[nearest] <= max_distance_mm:
                row = lesions.index[nearest]
        if row is None:
            continue
        rim = float(annotation["rim"])
        result[row] = rim if np.isnan(result[row]) else max(result[row], rim)
    return result


def _session_key(path: Path) -> tuple[str, str | None]:
    entities = parse_file_entities(str(path))
    return entities["subject"], entities.get("session")


def load_training_set(
    output_dir: Path,
    participants: pd.DataFrame,
    annotations_dir: Path | None,
    *,
    max_distance_mm: float = 4.0,
) -> TrainingSet:
    """Every participant-level patch under ``output_dir``, labelled where annotations exist; the
    sessions the group level calls stale (written before a failed rerun) are left out, with a warning."""
    annotation_files: dict[tuple[str, str | None], Path] = {}
    if annotations_dir is not None:
        for path in sorted(annotations_dir.rglob("sub-*_desc-rim_annotations.tsv")):
            annotation_files[_session_key(path)] = path
        if not annotation_files:
            raise InputError(f"{annotations_dir}: no *_desc-rim_annotations.tsv files found")
    sites = participants.set_index("participant_id")["site"] if "site" in participants else pd.Series(dtype=str)

    from bids_rim.group.aggregate import find_crash_files, find_lesion_tables, stale_tables_of

    stale = {table.path for table in stale_tables_of(  # left over from before a failed rerun
        output_dir, find_lesion_tables(output_dir), find_crash_files(output_dir))}
    all_patches, metas, spacings, outlines = [], [], [], {}
    for patch_file in sorted(output_dir.glob("sub-*/**/anat/sub-*_desc-lesions_patches.npz")):
        subject, session = _session_key(patch_file)
        table_file = patch_file.with_name(patch_file.name.replace("_patches.npz", "_table.tsv"))
        if table_file in stale:
            continue
        labels_file = patch_file.with_name(
            patch_file.name.replace("_desc-lesions_patches.npz", "_space-QSM_desc-lesions_dseg.nii.gz"))
        patches, lesion_ids = load_patches(patch_file)
        table = pd.read_csv(table_file, sep="\t", na_values="n/a")
        if list(table["lesion_id"]) != list(lesion_ids):
            raise InputError(f"{patch_file}: patches and {table_file.name} disagree on lesion ids")
        meta = pd.DataFrame({
            "participant_id": f"sub-{subject}",
            "session_id": f"ses-{session}" if session else "n/a",
            "site": str(sites.get(f"sub-{subject}", "unknown")),
            "lesion_id": table["lesion_id"].to_numpy(),
            "label": np.nan,
        })
        annotation_file = annotation_files.get((subject, session))
        if annotation_file is not None and len(table):
            meta["label"] = match_annotations(
                table, nib.load(labels_file), read_annotations(annotation_file), max_distance_mm=max_distance_mm
            ).to_numpy()
        all_patches.append(patches)
        metas.append(meta)
        spacings.append(load_patch_spacing_mm(patch_file))
        outlines.setdefault(_lesion_outline(table_file), patch_file.name)
    if not metas:
        raise InputError(f"{output_dir}: no participant-level patches found (run the participant level first)")
    if len(outlines) > 1:
        raise InputError(f"{output_dir}: sessions were processed with different --lesion-outline settings ("
                         + ", ".join(f"{outline}: {name}" for outline, name in sorted(outlines.items()))
                         + "); rerun the participant level with one setting")
    meta = pd.concat(metas, ignore_index=True)
    LOGGER.info("Training set: %d lesions of %d participants, %d labelled (%d rim+)", len(meta),
                meta["participant_id"].nunique(), int(meta["label"].notna().sum()), int((meta["label"] == 1).sum()))
    return TrainingSet(np.concatenate(all_patches, axis=0), meta, np.concatenate(spacings), next(iter(outlines)))


def _lesion_outline(table_file: Path) -> str:
    """The --lesion-outline a lesion table was made with (tables from before the option: given)."""
    sidecar = table_file.with_suffix(".json")
    if not sidecar.is_file():
        return "given"
    return json.loads(sidecar.read_text()).get("ProcessingParameters", {}).get("LesionOutline", "given")
