"""Find each session's inputs with pybids: FLAIR, QSM, GRE magnitude, lesion mask.

One :class:`SessionInputs` is one unit of work (a session, or a run of a session when QSM
was acquired more than once). QSM maps are looked up in the raw dataset first, then in the
derivative datasets given with ``-d`` (QSMxT writes ``*_Chimap.nii`` there). Lesion masks are
looked up in the derivative datasets only; a session that gets none from them but has one in a
dataset under ``BIDS_DIR/derivatives/`` not given with ``-d`` keeps that file's path in
:attr:`SessionInputs.unlisted_lesion_mask` (never read: the pre-flight check warns of it).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
from bids import BIDSLayout
from bids.layout import BIDSFile, parse_file_entities

from bids_rim.bidsio.derivatives import dataset_owner
from bids_rim.errors import InputError
from bids_rim.preproc.checks import same_grid

NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
#: ``label-``/``desc-`` values that name a lesion mask (``*_mask.nii[.gz]``).
LESION_MASK_NAMES = ("lesion", "lesions", "WMH")
#: Suffixes of a GRE magnitude image, in order of preference.
MAGNITUDE_SUFFIXES = ("T2starw", "MEGRE")
FILTER_KEYS = ("flair", "qsm", "magnitude")


@dataclass(frozen=True)
class SessionInputs:
    """The files of one unit of work, as absolute paths."""

    subject: str
    session: str | None
    run: int | None
    flair: Path
    qsm: Path
    magnitude: Path | None = None
    lesion_mask: Path | None = None
    #: How an image was chosen among several candidates: warnings for the log, the sidecar and the report.
    choices: tuple[str, ...] = ()
    #: When no ``-d`` dataset gave a lesion mask: one with a recognised name for this session in a dataset
    #: under ``BIDS_DIR/derivatives/`` that was not given with ``-d`` (a forgotten ``-d``); never read.
    unlisted_lesion_mask: Path | None = None

    @property
    def entities(self) -> dict[str, Any]:
        """BIDS entities that name this unit's outputs."""
        entities: dict[str, Any] = {"subject": self.subject}
        if self.session is not None:
            entities["session"] = self.session
        if self.run is not None:
            entities["run"] = self.run
        return entities

    @property
    def name(self) -> str:
        """``sub-X[_ses-Y][_run-Z]``, for logs and node names."""
        parts = [f"sub-{self.subject}"]
        if self.session is not None:
            parts.append(f"ses-{self.session}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)


def index_dataset(bids_dir: Path, derivatives: tuple[Path, ...] = ()) -> BIDSLayout:
    """Index the raw dataset and the derivative datasets with pybids."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    for derivative in derivatives:
        if not (derivative / "dataset_description.json").is_file():
            raise InputError(f"{derivative}: not a BIDS derivative dataset (no dataset_description.json)")
    try:
        return BIDSLayout(
            str(bids_dir),
            validate=False,
            derivatives=[str(path) for path in derivatives] or False,
        )
    except (ValueError, OSError) as error:
        raise InputError(f"{bids_dir}: pybids cannot index the dataset ({error})") from error


#: Query entities bids_rim sets itself, never from --bids-filter-file.
CHOSEN_BY_BIDS_RIM = ("subject", "session", "suffix", "scope")


def collect_sessions(
    layout: BIDSLayout,
    *,
    participant_labels: tuple[str, ...] = (),
    session_labels: tuple[str, ...] = (),
    bids_filters: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[SessionInputs], dict[str, str]]:
    """Every unit of work of the selected participants and sessions, in a stable order.

    Returns the units and, per participant that cannot be processed (a session without
    FLAIR or QSM), the one-line reason: such a participant is reported as failed, never
    skipped silently, and does not stop the others. Raises :class:`InputError` for an
    unknown participant label, a bad filter key, or when nothing is left to process.
    """
    filters = dict(bids_filters or {})
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise InputError(f"--bids-filter-file: unknown key(s) {unknown}; allowed: {list(FILTER_KEYS)}")

    entities = set(layout.get_entities()) - set(CHOSEN_BY_BIDS_RIM)
    for role, wanted in filters.items():
        if not isinstance(wanted, dict):
            raise InputError(f"--bids-filter-file: {role}: {wanted!r} is not an object of entities, "
                             'e.g. {"acquisition": "3D"}')
        chosen = sorted(set(wanted) & set(CHOSEN_BY_BIDS_RIM))
        if chosen:
            raise InputError(f"--bids-filter-file: {role}: {chosen} are chosen by bids_rim (the role's suffix, "
                             "--participant-label, --session-label); filter on other entities")
        unknown_entities = sorted(set(wanted) - entities)
        if unknown_entities:
            hints = {name: difflib.get_close_matches(name, entities, n=1) for name in unknown_entities}
            hint = "; ".join(f"{name}: did you mean {close[0]}?" for name, close in hints.items() if close)
            raise InputError(f"--bids-filter-file: {role}: {unknown_entities} are not BIDS entities pybids knows "
                             f"(write them as pybids names, e.g. acquisition, not acq){'; ' + hint if hint else ''}")

    all_subjects = sorted(layout.get_subjects())
    subjects = list(dict.fromkeys(participant_labels)) or all_subjects  # a label given twice runs once
    missing = [label for label in subjects if label not in all_subjects]
    if missing:
        raise InputError(
            f"{layout.root}: no participant(s) {', '.join('sub-' + m for m in missing)} in the dataset"
        )

    unlisted = _unlisted_derivatives(layout)
    units: list[SessionInputs] = []
    failures: dict[str, str] = {}
    for subject in subjects:
        sessions: list[str | None] = sorted(layout.get_sessions(subject=subject)) or [None]
        if session_labels:
            sessions = [session for session in sessions if session in session_labels]
        subject_units, errors, usable = [], [], []
        for session in sessions:
            try:
                subject_units += _units_of_session(layout, subject, session, filters, unlisted)
                usable.append(session)
            except InputError as error:
                errors.append(str(error))
        if errors:  # one unusable session stops its participant: a partial patient would skew its counts
            hint = (f"; its other session(s) can run alone with --session-label {' '.join(map(str, usable))}"
                    if usable and usable[0] is not None else "")
            failures[subject] = errors[0] + hint
            continue
        units.extend(subject_units)
    if not units and not failures:
        raise InputError(f"{layout.root}: nothing to process with the given participant/session labels")
    if not units and filters and _usable_without_filters(layout, subjects, session_labels):
        raise InputError(f"{layout.root}: nothing to process: with --bids-filter-file {json.dumps(filters)} no "
                         f"selected session has both a FLAIR and a QSM map (e.g. {next(iter(failures.values()))})")
    return units, failures


def _usable_without_filters(layout: BIDSLayout, subjects: list[str], session_labels: tuple[str, ...]) -> bool:
    """Whether some selected session has a FLAIR and a QSM map when no filter applies: then a filter
    that leaves none is the user's mistake, not the dataset's."""
    _units, failures = collect_sessions(layout, participant_labels=tuple(subjects), session_labels=session_labels)
    return len(failures) < len(subjects)


def _query(layout: BIDSLayout, subject: str, session: str | None, **entities: Any) -> list[BIDSFile]:
    query: dict[str, Any] = {"subject": subject, "extension": NIFTI_EXTENSIONS, **entities}
    if session is not None:
        query["session"] = session
    return sorted(layout.get(**query), key=lambda bids_file: bids_file.path)


def _units_of_session(
    layout: BIDSLayout, subject: str, session: str | None, filters: dict[str, dict[str, Any]],
    unlisted: tuple[Path, ...] = (),
) -> list[SessionInputs]:
    where = f"sub-{subject}" + (f" ses-{session}" if session else "")
    flairs = _query(layout, subject, session, suffix="FLAIR", scope="raw", **filters.get("flair", {}))
    if not flairs:
        raise InputError(f"{layout.root}: {where} has no FLAIR image (*_FLAIR.nii[.gz])")
    qsms = _query(layout, subject, session, suffix="Chimap", scope="raw", **filters.get("qsm", {}))
    if not qsms:
        qsms = _query(layout, subject, session, suffix="Chimap", scope="derivatives", **filters.get("qsm", {}))
    if not qsms:
        raise InputError(
            f"{layout.root}: {where} has no QSM map (*_Chimap.nii[.gz]) in the raw dataset "
            "or in the derivative datasets given with -d"
        )
    magnitudes = _magnitudes(layout, subject, session, filters.get("magnitude", {}))
    masks = _lesion_masks(layout, subject, session)
    unlisted_masks = [] if masks else _unlisted_lesion_masks(unlisted, subject, session)

    multiple_runs = len(qsms) > 1
    units = []
    for qsm in qsms:
        run = qsm.entities.get("run") if multiple_runs else None
        choices: list[str] = []
        mask = _matching_run(masks, run, where, "lesion mask", choices) if masks else None
        same_run = run is not None and any(candidate.entities.get("run") == run for candidate in flairs)
        flair = _matching_run(flairs if same_run else _on_grid_of(flairs, mask), run, where, "FLAIR", choices)
        magnitude = _matching_run(magnitudes, run, where, "GRE magnitude", choices) if magnitudes else None
        same_run_masks = [path for path in unlisted_masks if run is not None and _entities(path).get("run") == run]
        unlisted_mask = (same_run_masks or unlisted_masks or [None])[0]
        units.append(
            SessionInputs(
                subject=subject,
                session=session,
                run=int(run) if run is not None else None,
                flair=Path(flair.path),
                qsm=Path(qsm.path),
                magnitude=Path(magnitude.path) if magnitude else None,
                lesion_mask=Path(mask.path) if mask else None,
                choices=tuple(choices),
                unlisted_lesion_mask=unlisted_mask,
            )
        )
    return units


def _matching_run(candidates: list[BIDSFile], run: Any, where: str, what: str, choices: list[str]) -> BIDSFile:
    """The candidate of the same run, else the only one, else the first (a warning added to ``choices``)."""
    if run is not None:
        same_run = [c for c in candidates if c.entities.get("run") == run]
        if same_run:
            return same_run[0]
    if len(candidates) > 1:
        choices.append(f"{where}: {len(candidates)} {what} images and no matching run; using "
                       f"{Path(candidates[0].path).name} (choose another with --bids-filter-file)")
    return candidates[0]


def _on_grid_of(flairs: list[BIDSFile], mask: BIDSFile | None) -> list[BIDSFile]:
    """Of several FLAIRs, those on the lesion mask's grid (raters draw on one FLAIR), if any is; else all.

    Only headers are read. A mask on the QSM grid matches no FLAIR and leaves the choice as it was.
    """
    if mask is None or len(flairs) < 2:
        return flairs
    mask_image = nib.load(mask.path)
    same = [flair for flair in flairs if same_grid(nib.load(flair.path), mask_image)]
    return same or flairs


def _magnitudes(layout: BIDSLayout, subject: str, session: str | None, extra: dict[str, Any]) -> list[BIDSFile]:
    """The session's GRE magnitude images, one per run: its first echo, which has the best SNR for
    registration (multi-echo GRE)."""
    for suffix in MAGNITUDE_SUFFIXES:
        found = [
            f for f in _query(layout, subject, session, suffix=suffix, scope="raw", **extra)
            if f.entities.get("part", "mag") == "mag"
        ]
        first_echo: dict[Any, BIDSFile] = {}
        for image in sorted(found, key=lambda f: (f.entities.get("echo", 0), f.path)):
            first_echo.setdefault(image.entities.get("run"), image)
        if first_echo:
            return list(first_echo.values())
    return []


def _lesion_masks(layout: BIDSLayout, subject: str, session: str | None) -> list[BIDSFile]:
    masks = _query(layout, subject, session, suffix="mask", scope="derivatives")
    return [
        mask for mask in masks
        if mask.entities.get("label") in LESION_MASK_NAMES or mask.entities.get("desc") in LESION_MASK_NAMES
    ]


def _unlisted_derivatives(layout: BIDSLayout) -> tuple[Path, ...]:
    """Dataset folders under ``BIDS_DIR/derivatives/`` that a forgotten ``-d`` may have left out.

    ``derivatives/<name>/`` and, for datasets nested one level deeper, ``derivatives/<name>/<other>/``
    (not ``sub-*`` folders), except the ``-d`` datasets and what lies in them, and bids_rim's own
    outputs (whose template-space ``desc-lesions_mask`` files are no rater's masks). Two directory
    listings per dataset, no pybids indexing: this only feeds a warning.
    """
    derivatives = Path(layout.root) / "derivatives"
    if not derivatives.is_dir():
        return ()
    given = [Path(child.root).resolve() for child in layout.derivatives.values()]
    found: list[Path] = []
    for dataset in _subfolders(derivatives):
        found.append(dataset)
        found.extend(nested for nested in _subfolders(dataset) if not nested.name.startswith("sub-"))
    return tuple(
        dataset for dataset in found
        if not any(dataset.resolve().is_relative_to(root) for root in given) and dataset_owner(dataset) != "bids_rim"
    )


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted; none when it cannot be listed."""
    try:
        return sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    except OSError:
        return []


def _unlisted_lesion_masks(datasets: tuple[Path, ...], subject: str, session: str | None) -> list[Path]:
    """Files with a recognised lesion-mask name (as :func:`_lesion_masks` takes them) of this subject and
    session in ``datasets``, sorted: only the subject's (or session's) folder of each is searched."""
    found: list[Path] = []
    for dataset in datasets:
        folder = dataset / f"sub-{subject}" / (f"ses-{session}" if session is not None else "")
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"**/sub-{subject}_*_mask.nii*")):
            entities = _entities(path)
            if (path.is_file() and entities.get("suffix") == "mask" and entities.get("subject") == subject
                    and (session is None or entities.get("session") == session)
                    and (entities.get("label") in LESION_MASK_NAMES or entities.get("desc") in LESION_MASK_NAMES)):
                found.append(path)
    return found


def _entities(path: Path) -> dict[str, Any]:
    """The BIDS entities of a file name, as pybids reads them (``subject``, ``session``, ``run``, ``label``,
    ``desc``, ``suffix``...), derivative entities included."""
    return parse_file_entities(str(path), config=["bids", "derivatives"])
