"""The per-subject HTML report: ``OUTPUT_DIR/sub-X.html`` with reportlets in ``sub-X/figures/``.

Like fMRIPrep's subject report, it is one page assembled from small PNG reportlets: per
session a registration check (FLAIR contours over QSM) and one mosaic per lesion beside its
table row, rim+ lesions first; a summary (lesion count, rim+ count, expected rim+ count and
the four-PRL clinical threshold); the processing parameters; and the errors and warnings
handed in. The same inputs give byte-identical files (no timestamps, no PNG metadata).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import nibabel as nib
import numpy as np
import pandas as pd

from bids_rim.errors import InputError
from bids_rim.preproc import checks
from bids_rim.reports import figures
from bids_rim.reports.boilerplate import Boilerplate

#: Per-patient rim+ count at or above which the common clinical threshold is met.
PRL_COUNT_THRESHOLD = 4
#: Half the field of view of a lesion mosaic (mm): 24 mm shows a lesion and its surroundings.
MOSAIC_HALF_WIDTH_MM = 12.0
RIM_COLUMNS = ("rim_probability", "rim_uncertainty", "rim_label")
REQUIRED_COLUMNS = ("lesion_id", "centroid_i", "centroid_j", "centroid_k")

#: Display header (with unit) and number format of the lesion-table columns we know.
COLUMN_DISPLAY: dict[str, tuple[str, str]] = {
    "lesion_id": ("Lesion id", "{:03.0f}"),
    "rim_label": ("Rim label (model threshold)", "label"),
    "rim_probability": ("P(rim+)", "{:.2f}"),
    "rim_uncertainty": ("Uncertainty of P(rim+)", "{:.2f}"),
    "volume_mm3": ("Volume (mm³)", "{:.0f}"),
    "qsm_shell_minus_core_ppb": ("QSM edge shell − core (ppb)", "{:+.1f}"),
    "qsm_shell_ppb": ("QSM edge shell (ppb)", "{:+.1f}"),
    "qsm_core_ppb": ("QSM core (ppb)", "{:+.1f}"),
    "qsm_lesion_minus_nawm_ppb": ("QSM lesion − NAWM (ppb)", "{:+.1f}"),
    "flair_contrast": ("FLAIR contrast (lesion / NAWM)", "{:.2f}"),
    "distance_to_ventricles_mm": ("Distance to ventricles (mm)", "{:.1f}"),
    "centroid_x_mm": ("Centroid x (mm, RAS)", "{:+.1f}"),
    "centroid_y_mm": ("Centroid y (mm, RAS)", "{:+.1f}"),
    "centroid_z_mm": ("Centroid z (mm, RAS)", "{:+.1f}"),
    "centroid_i": ("Centroid i (QSM voxel)", "{:.0f}"),
    "centroid_j": ("Centroid j (QSM voxel)", "{:.0f}"),
    "centroid_k": ("Centroid k (QSM voxel)", "{:.0f}"),
    "patch_spacing_mm": ("Patch spacing (mm)", "{:.2f}"),
    "flag_confluent": ("Confluent", "flag"),
    "flag_touches_brain_edge": ("Touches brain edge", "flag"),
    "flag_patch_rescaled": ("Patch rescaled to fit", "flag"),
}
#: Columns of the all-lesions overview table (those present are shown, in this order).
OVERVIEW_COLUMNS = ("lesion_id", "rim_label", "rim_probability", "rim_uncertainty", "volume_mm3",
                    "qsm_shell_minus_core_ppb", "qsm_lesion_minus_nawm_ppb", "flair_contrast")

_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("bids_rim.reports", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

ImageLike = nib.Nifti1Image | Path | str


@dataclass(frozen=True)
class SessionReportInputs:
    """What the report shows of one session; images on the QSM grid, as images or paths."""

    session_label: str | None
    qsm: ImageLike
    flair_on_qsm: ImageLike
    brain_mask: ImageLike
    lesion_labels: ImageLike
    lesion_table: pd.DataFrame | Path | str
    errors: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _clean_label(label: str | None, prefix: str, what: str) -> str | None:
    """``01`` from ``sub-01`` or ``01``; a label that could escape a folder is an error."""
    if label is None:
        return None
    label = str(label)
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1:]
    if not _LABEL_PATTERN.match(label):
        raise InputError(f"{what} label {label!r}: only letters and digits are allowed in BIDS labels")
    return label


def _load_image(image: ImageLike, what: str) -> tuple[nib.Nifti1Image, str]:
    """The image and a name for messages (its path, or what it is); a trailing singleton 4th axis
    (a 3D map saved as X×Y×Z×1, which the pre-flight checks accept) is dropped."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            loaded = nib.load(path)
            loaded.get_fdata(dtype=np.float32)  # reads now, so a truncated file fails here with its name
        except FileNotFoundError:
            raise InputError(f"{path}: {what} file not found") from None
        except Exception as error:  # nibabel raises many types for unreadable files
            raise InputError(f"{path}: cannot read {what} ({type(error).__name__}: {error})") from None
        image, name = loaded, str(path)
    else:
        name = what
    if image.ndim > 3 and all(n == 1 for n in image.shape[3:]):
        image = checks.ensure_3d(image, name)
    return image, name


def _load_table(table: pd.DataFrame | Path | str) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table.copy(), "lesion table"
    path = Path(table)
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"]), str(path)
    except FileNotFoundError:
        raise InputError(f"{path}: lesion table not found") from None
    except Exception as error:
        raise InputError(f"{path}: cannot read lesion table ({type(error).__name__}: {error})") from None


def _check_same_grid(reference: nib.Nifti1Image, reference_name: str, image: nib.Nifti1Image, name: str) -> None:
    if image.ndim != 3:
        raise InputError(f"{name}: expected a 3D image, got shape {image.shape}")
    if image.shape != reference.shape or not np.allclose(image.affine, reference.affine, atol=1e-3):
        raise InputError(f"{name}: not on the QSM grid of {reference_name} "
                         f"(shape {image.shape} vs {reference.shape}, or a different affine)")


def order_lesions(table: pd.DataFrame) -> pd.DataFrame:
    """Rim+ first: by rim label, then rim probability (both descending), then lesion id.

    Without rim columns (no model ran) lesions keep lesion-id order.
    """
    keys, ascending = [], []
    for column, up in (("rim_label", False), ("rim_probability", False)):
        if column in table.columns:
            keys.append(column)
            ascending.append(up)
    keys.append("lesion_id")
    ascending.append(True)
    return table.sort_values(keys, ascending=ascending, na_position="last", kind="mergesort").reset_index(drop=True)


def format_value(column: str, value: Any) -> str:
    """A table cell as the report shows it (``n/a`` for missing values)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    style = COLUMN_DISPLAY.get(column, (column, "{}"))[1]
    if style == "flag":
        return "yes" if bool(value) else "no"
    if style == "label":
        return "rim+" if int(value) == 1 else "rim−"
    if isinstance(value, (int, float, np.integer, np.floating)) and "{" in style:
        return style.format(float(value))
    return str(value)


def column_header(column: str) -> str:
    return COLUMN_DISPLAY.get(column, (column, ""))[0]


def lesion_fields(row: Mapping[str, Any], columns: Sequence[str]) -> list[tuple[str, str]]:
    """(header, value) rows of one lesion; each centroid's three coordinates share one row."""
    fields = []
    for column in columns:
        if column.startswith("centroid_"):
            if column in ("centroid_x_mm", "centroid_i"):
                axes = ("x_mm", "y_mm", "z_mm") if column == "centroid_x_mm" else ("i", "j", "k")
                header = "Centroid x, y, z (mm, RAS)" if column == "centroid_x_mm" else "Centroid i, j, k (QSM voxel)"
                fields.append((header, ", ".join(format_value(f"centroid_{a}", row.get(f"centroid_{a}"))
                                                 for a in axes)))
            continue
        fields.append((column_header(column), format_value(column, row[column])))
    return fields


def session_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts a reader wants first: lesions, rim+ lesions, expected rim+ (sum of P), volume."""
    has_model = all(column in table.columns for column in RIM_COLUMNS)
    summary: dict[str, Any] = {
        "n_lesions": int(len(table)),
        "total_volume_mm3": float(table["volume_mm3"].sum()) if "volume_mm3" in table.columns else None,
        "has_model": has_model,
        "n_rim_positive": None,
        "expected_rim_positive": None,
        "meets_prl_threshold": None,
    }
    if has_model:
        n_rim_positive = int((table["rim_label"].fillna(0) == 1).sum())
        summary["n_rim_positive"] = n_rim_positive
        summary["expected_rim_positive"] = float(table["rim_probability"].fillna(0).sum())
        summary["meets_prl_threshold"] = n_rim_positive >= PRL_COUNT_THRESHOLD
    return summary


def _flatten_parameters(parameters: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested parameters as sorted ``(dotted.key, value)`` rows."""
    rows: list[tuple[str, str]] = []
    for key in sorted(parameters, key=str):
        value = parameters[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten_parameters(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple, Mapping)):
            rows.append((name, json.dumps(value, sort_keys=True, default=str)))
        else:
            rows.append((name, str(value)))
    return rows


def _figure_name(subject: str, session: str | None, desc: str, suffix: str) -> str:
    entities = [f"sub-{subject}"] + ([f"ses-{session}"] if session else []) + [f"desc-{desc}", suffix]
    return "_".join(entities) + ".png"


def _render_session(output_dir: Path, subject: str, inputs: SessionReportInputs,
                    figures_dir: Path) -> tuple[dict[str, Any], set[Path]]:
    """Write one session's reportlets; return its template context and the files written."""
    session = _clean_label(inputs.session_label, "ses", "session")
    qsm, qsm_name = _load_image(inputs.qsm, "QSM")
    if qsm.ndim != 3:
        raise InputError(f"{qsm_name}: expected a 3D QSM image, got shape {qsm.shape}")
    images = {"qsm": qsm}
    for key, what in (("flair_on_qsm", "FLAIR on the QSM grid"), ("brain_mask", "brain mask"),
                      ("lesion_labels", "lesion label map")):
        image, name = _load_image(getattr(inputs, key), what)
        _check_same_grid(qsm, qsm_name, image, name)
        images[key] = image
    table, table_name = _load_table(inputs.lesion_table)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{table_name}: missing column(s) {', '.join(missing)}")
    table = order_lesions(table)
    warnings = list(inputs.warnings)
    label_values = set(np.unique(np.asarray(images["lesion_labels"].dataobj)).astype(int).tolist())
    absent = [int(i) for i in table["lesion_id"] if int(i) not in label_values]
    if absent:
        warnings.append(f"lesion id(s) {', '.join(f'{i:03d}' for i in absent)} of the table are not in the "
                        f"lesion label map: their mosaics show no outline")

    written: set[Path] = set()
    registration_png = figures_dir / _figure_name(subject, session, "reg", "flair")
    figures.registration_overlay(images["qsm"], images["flair_on_qsm"], images["brain_mask"], registration_png)
    written.add(registration_png)

    present_columns = [c for c in COLUMN_DISPLAY if c in table.columns]
    present_columns += [c for c in table.columns if c not in COLUMN_DISPLAY]
    overview_columns = [c for c in OVERVIEW_COLUMNS if c in table.columns]
    lesions = []
    with figures.LesionMosaicRenderer(images["qsm"], images["flair_on_qsm"], images["lesion_labels"],
                                      brain_mask=images["brain_mask"],
                                      half_width_mm=MOSAIC_HALF_WIDTH_MM) as renderer:
        mosaic_width_px, mosaic_height_px = renderer.size_px
        for _, row in table.iterrows():
            lesion_id = int(row["lesion_id"])
            mosaic_png = figures_dir / _figure_name(subject, session, f"lesion{lesion_id:03d}", "mosaic")
            renderer.render(row, mosaic_png)
            written.add(mosaic_png)
            rim_label = row.get("rim_label")
            lesions.append({
                "anchor": f"{'ses-' + session + '-' if session else ''}lesion-{lesion_id:03d}",
                "lesion_id": f"{lesion_id:03d}",
                "rim_positive": rim_label is not None and not pd.isna(rim_label) and int(rim_label) == 1,
                "mosaic": mosaic_png.relative_to(output_dir).as_posix(),
                "fields": lesion_fields(row, present_columns),
                "overview": [format_value(c, row[c]) for c in overview_columns],
            })
    context = {
        "label": session,
        "registration": registration_png.relative_to(output_dir).as_posix(),
        "summary": session_summary(table),
        "overview_headers": [column_header(c) for c in overview_columns],
        "lesions": lesions,
        "errors": list(inputs.errors),
        "warnings": warnings,
        "mosaic_half_width_mm": int(MOSAIC_HALF_WIDTH_MM),
        "mosaic_size_px": (mosaic_width_px, mosaic_height_px),
    }
    return context, written


def _remove_stale_reportlets(figures_dir: Path, subject: str, written: set[Path]) -> None:
    """Delete reportlets of ours that this run did not write (e.g. lesions no longer found)."""
    for path in figures_dir.glob(f"sub-{subject}_*desc-*.png"):
        if path not in written and (path.name.endswith("_mosaic.png") or path.name.endswith("_flair.png")):
            path.unlink()


def write_participant_report(output_dir: Path | str, subject_label: str, sessions: Sequence[SessionReportInputs],
                             parameters: Mapping[str, Any], *, errors: Sequence[str] = (),
                             warnings: Sequence[str] = (), methods: Boilerplate | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-X.html`` and its reportlets; return the HTML path.

    ``parameters`` (run configuration, software versions) is shown as given, sorted by key;
    ``errors``/``warnings`` are subject-wide messages (sessions carry their own); ``methods``, the
    run's methods text (:mod:`bids_rim.reports.boilerplate`), gets its own section.
    """
    output_dir = Path(output_dir)
    subject = _clean_label(str(subject_label), "sub", "participant")
    figures_dir = output_dir / f"sub-{subject}" / "figures"
    session_contexts, written = [], set()
    for inputs in sessions:
        context, files = _render_session(output_dir, subject, inputs, figures_dir)
        session_contexts.append(context)
        written |= files
    if figures_dir.is_dir():
        _remove_stale_reportlets(figures_dir, subject, written)
    html = _TEMPLATES.get_template("participant.html.j2").render(
        subject=subject,
        sessions=session_contexts,
        parameters=_flatten_parameters(parameters),
        methods=methods,
        errors=list(errors),
        warnings=list(warnings),
        prl_threshold=PRL_COUNT_THRESHOLD,
        qsm_window_ppb=tuple(int(round(1000 * v)) for v in figures.QSM_WINDOW_PPM),
    )
    return figures.atomic_write_bytes(output_dir / f"sub-{subject}.html", html.encode("utf-8"))
