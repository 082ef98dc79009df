"""Gather the participant-level patches and tables into a training set, with rim labels.

Rim annotations (``*_desc-rim_annotations.tsv``: ``x_mm, y_mm, z_mm`` in QSM world RAS mm,
``rim`` 1/0) are matched to the pipeline's lesions: an annotation belongs to the lesion whose
label map contains its centroid, else to the lesion with the nearest centroid within
``max_distance_mm``. A lesion that receives several annotations (a confluent lesion the
pipeline kept whole) is rim+ when any of them is. Lesions without an annotation stay
unlabelled (NaN): self-supervised pretraining still uses them.

Annotations are counted per file, matched or not (:class:`AnnotationMatch`): a file with rows
that match no lesion is warned about, and a folder none of whose rows match is refused
(:func:`check_annotation_matches`), so that annotations in the wrong space or of the wrong
dataset never train a model on silently fewer labels.
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
class AnnotationMatch:
    """How many rows of one annotation file found a lesion (``rows - matched`` did not)."""

    file: Path
    rows: int
    matched: int

    @property
    def unmatched(self) -> int:
        return self.rows - self.matched


@dataclass(frozen=True)
class TrainingSet:
    """Patches (N, 3, P, P, P) and one metadata row per patch."""

    patches: np.ndarray
    # participant_id, session_id, site, lesion_id, label (1, 0 or NaN), spacing_mm (of the patch)
    meta: pd.DataFrame
    spacing_mm: np.ndarray  # (N,) isotropic voxel size of each patch
    lesion_outline: str = "given"  # the participant level's --lesion-outline (one for all sessions)
    annotation_matches: tuple[AnnotationMatch, ...] = ()  # one per annotation file that was read
    annotations_left_out: tuple[Path, ...] = ()  # annotation files of sessions whose outputs failed
    max_distance_mm: float = 4.0  # the matching tolerance the annotations were matched with

    def annotation_summary(self, annotations_dir: Path | None = None) -> dict:
        """Matched and unmatched annotation counts, JSON-friendly, for the model card and model file."""
        return annotation_summary(self.annotation_matches, self.annotations_left_out, self.max_distance_mm,
                                  annotations_dir)

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
    return match_annotations_counted(lesions, labels, annotations, max_distance_mm=max_distance_mm)[0]


def match_annotations_counted(
    lesions: pd.DataFrame, labels: nib.Nifti1Image, annotations: pd.DataFrame, *, max_distance_mm: float = 4.0
) -> tuple[pd.Series, int]:
    """:func:`match_annotations` and how many annotation rows found a lesion (the rest are lost)."""
    label_data = np.asarray(labels.dataobj)
    to_voxel = np.linalg.inv(labels.affine)
    centroids = lesions[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(dtype=float)
    result = pd.Series(np.nan, index=lesions.index, dtype=float)
    row_of_id = {int(lesion_id): row for row, lesion_id in zip(lesions.index, lesions["lesion_id"])}
    matched = 0
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
        matched += 1
        rim = float(annotation["rim"])
        result[row] = rim if np.isnan(result[row]) else max(result[row], rim)
    return result, matched


def annotation_summary(matches: tuple[AnnotationMatch, ...], left_out: tuple[Path, ...], max_distance_mm: float,
                       annotations_dir: Path | None = None) -> dict:
    """Counts of matched and unmatched annotation rows, in total and per file that lost some."""
    return {
        "folder": str(annotations_dir) if annotations_dir is not None else None,
        "max_distance_mm": float(max_distance_mm),
        "files": len(matches),
        "rows": sum(match.rows for match in matches),
        "matched": sum(match.matched for match in matches),
        "unmatched": sum(match.unmatched for match in matches),
        "files_with_unmatched_rows": {match.file.name: [match.unmatched, match.rows]
                                      for match in matches if match.unmatched},
        "files_left_out": [path.name for path in left_out],
    }


def check_annotation_matches(annotations_dir: Path, matches: tuple[AnnotationMatch, ...],
                             meta: pd.DataFrame, max_distance_mm: float) -> None:
    """Warn about each annotation file with rows that found no lesion; refuse a folder in which no
    row found one, or whose matched rows hold only one class.

    Unmatched rows are a warning, not a refusal: a rater may mark a lesion the participant level
    dropped (below ``--min-lesion-volume``, or outside the brain mask), and refusing would make the
    user delete annotations to train. A folder in which *nothing* matched is a refusal: it is the
    wrong folder, or its coordinates are not QSM world RAS mm (voxel indices, another space), and
    no model can be trained on it. The warning names the tolerance, since a centroid further than
    it from every lesion (and outside every lesion) is what "unmatched" means.
    """
    for match in matches:
        if match.unmatched:
            LOGGER.warning("%s: %d of %d rim annotation(s) matched no lesion (none inside a lesion or within "
                           "%.3g mm of a lesion centroid, in QSM world RAS mm): they are not used",
                           match.file, match.unmatched, match.rows, max_distance_mm)
    rows, matched = sum(m.rows for m in matches), sum(m.matched for m in matches)
    if matched == 0:
        raise InputError(f"{annotations_dir}: none of the {rows} rim annotation(s) in {len(matches)} file(s) matched "
                         f"a lesion (inside it or within {max_distance_mm:.3g} mm of its centroid); training needs "
                         "both rim+ and rim- annotated lesions (are x_mm, y_mm, z_mm in QSM world RAS mm?)")
    labels = meta["label"].dropna()
    if labels.nunique() < 2:
        present = "rim+" if (labels == 1).any() else "rim-"
        raise InputError(f"{annotations_dir}: training needs both rim+ and rim- annotated lesions; the {matched} "
                         f"matched annotation(s) give only {present} ({len(labels)} lesion(s))")


def _session_key(path: Path) -> tuple[str, str | None, str | None]:
    """(subject, session, run) of a BIDS file name; None where the entity is absent."""
    entities = parse_file_entities(str(path))
    run = entities.get("run")
    return entities["subject"], entities.get("session"), None if run is None else str(run)


def find_annotation_files(annotations_dir: Path) -> dict[tuple[str, str | None, str | None], Path]:
    """Every ``sub-*_desc-rim_annotations.tsv`` under ``annotations_dir`` by (subject, session, run);
    two files for the same key (a copy in another folder) are refused: one would silently win."""
    found: dict[tuple[str, str | None, str | None], Path] = {}
    for path in sorted(annotations_dir.rglob("sub-*_desc-rim_annotations.tsv")):
        key = _session_key(path)
        if key in found:
            raise InputError(f"{annotations_dir}: two annotation files for the same session: "
                             f"{found[key].relative_to(annotations_dir)} and {path.relative_to(annotations_dir)}")
        found[key] = path
    if not found:
        raise InputError(f"{annotations_dir}: no *_desc-rim_annotations.tsv files found")
    return found


def load_training_set(
    output_dir: Path,
    participants: pd.DataFrame,
    annotations_dir: Path | None,
    *,
    max_distance_mm: float = 4.0,
) -> TrainingSet:
    """Every participant-level patch under ``output_dir``, labelled where annotations exist; the
    sessions the group level calls stale (written before a failed rerun) are left out, with a warning.

    With ``annotations_dir``, refuses (:class:`InputError`) an annotation file of a session without
    participant-level outputs that never failed (a participant not processed, or a wrong label:
    training on fewer labels than annotated would go unnoticed); one whose run failed is left
    out with a warning, as the group level leaves failed participants out. Refuses too when no
    annotation matches a lesion or only one class does (:func:`check_annotation_matches`).
    """
    annotation_files = find_annotation_files(annotations_dir) if annotations_dir is not None else {}
    sites = participants.set_index("participant_id")["site"] if "site" in participants else pd.Series(dtype=str)

    from bids_rim.group.aggregate import find_crash_files, find_lesion_tables, stale_tables_of

    crashes = find_crash_files(output_dir)
    stale = {table.path for table in stale_tables_of(  # left over from before a failed rerun
        output_dir, find_lesion_tables(output_dir), crashes)}
    all_patches, metas, spacings, outlines = [], [], [], {}
    matches: list[AnnotationMatch] = []
    used: set[tuple[str, str | None, str | None]] = set()
    for patch_file in sorted(output_dir.glob("sub-*/**/anat/sub-*_desc-lesions_patches.npz")):
        subject, session, run = key = _session_key(patch_file)
        table_file = patch_file.with_name(patch_file.name.replace("_patches.npz", "_table.tsv"))
        if table_file in stale:
            continue
        # A run's own annotations, else (annotated without the run entity) its session's.
        annotation_key = key if key in annotation_files or run is None else (subject, session, None)
        used |= {key, annotation_key}
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
        annotation_file = annotation_files.get(annotation_key)
        if annotation_file is not None:
            annotations = read_annotations(annotation_file)
            matched = 0
            if len(table):
                labels, matched = match_annotations_counted(table, nib.load(labels_file), annotations,
                                                            max_distance_mm=max_distance_mm)
                meta["label"] = labels.to_numpy()
            matches.append(AnnotationMatch(annotation_file, len(annotations), matched))
        all_patches.append(patches)
        spacing = load_patch_spacing_mm(patch_file)
        metas.append(meta.assign(spacing_mm=np.broadcast_to(spacing, len(meta)).astype(float)))
        spacings.append(spacing)
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
    left_out: tuple[Path, ...] = ()
    if annotations_dir is not None:
        left_out = annotations_without_outputs(annotations_dir, annotation_files, used,
                                               {crash.participant_id for crash in crashes})
        check_annotation_matches(annotations_dir, tuple(matches), meta, max_distance_mm)
    return TrainingSet(np.concatenate(all_patches, axis=0), meta, np.concatenate(spacings), next(iter(outlines)),
                       tuple(matches), left_out, float(max_distance_mm))


def annotations_without_outputs(annotations_dir: Path,
                                annotation_files: dict[tuple[str, str | None, str | None], Path],
                                used: set[tuple[str, str | None, str | None]],
                                failed_participants: set[str]) -> tuple[Path, ...]:
    """The annotation files of sessions that contribute no patches: those of a participant whose
    participant level failed (it has a crash file) are returned and warned about, as the group level
    leaves failed participants out; any other is refused, since a participant never processed (or a
    label the dataset does not have) means the training set silently lacks annotations the user made."""
    missing = {key: path for key, path in annotation_files.items() if key not in used}
    failed = tuple(path for (subject, *_), path in sorted(missing.items(), key=lambda item: str(item[1]))
                   if f"sub-{subject}" in failed_participants)
    unprocessed = sorted(path.name for path in missing.values() if path not in failed)
    if unprocessed:
        shown = ", ".join(unprocessed[:5]) + (f" and {len(unprocessed) - 5} more" if len(unprocessed) > 5 else "")
        raise InputError(f"{annotations_dir}: {len(unprocessed)} annotation file(s) belong to sessions without "
                         f"participant-level outputs: {shown}; run the participant level for them (or move the "
                         "files out of the folder)")
    for path in failed:
        LOGGER.warning("%s: its participant's participant-level run failed, so its session has no usable outputs: "
                       "these annotations are not used", path)
    return failed


def _lesion_outline(table_file: Path) -> str:
    """The --lesion-outline a lesion table was made with (tables from before the option: given)."""
    sidecar = table_file.with_suffix(".json")
    if not sidecar.is_file():
        return "given"
    return json.loads(sidecar.read_text()).get("ProcessingParameters", {}).get("LesionOutline", "given")
