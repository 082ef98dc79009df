"""The ``bids_rim`` command-line parser (BIDS App conventions, as fMRIPrep and MRIQC users expect).

Only argument *syntax* is checked here (types, existing files); what the arguments mean is
checked when the run configuration is built (:mod:`bids_rim.cli.run`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bids_rim import __version__
from bids_rim.cli.exit_codes import all_descriptions

#: Names of lesion masks that are recognised in derivative datasets (``-d``).
LESION_MASK_PATTERNS = (
    "*_label-lesion_mask.nii[.gz]",
    "*_label-lesions_mask.nii[.gz]",
    "*_desc-lesion_mask.nii[.gz]",
    "*_desc-lesions_mask.nii[.gz]",
    "*_label-WMH_mask.nii[.gz]",
)

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")

#: Architectures ``--train`` can fit (``bids_rim.models.registry``; kept here so that ``--help``
#: does not import torch, and a test keeps the two in step).
TRAINABLE_ARCHITECTURES = ("asym", "rimnet", "qsmrimnet", "qsm_only", "early_fusion", "radiomics")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False, []) that say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class _SpellingAwareParser(argparse.ArgumentParser):
    """An ArgumentParser that accepts ``--some-option`` and ``--some_option`` alike."""

    def add_argument_group(self, *args, **kwargs):  # type: ignore[override]
        group = super().add_argument_group(*args, **kwargs)
        original = group.add_argument

        def add_argument(*names: str, **kw):
            return original(*_with_underscore_spellings(names), **kw)

        group.add_argument = add_argument  # type: ignore[method-assign]
        return group


def _with_underscore_spellings(names: tuple[str, ...]) -> tuple[str, ...]:
    spelled = list(names)
    for name in names:
        if name.startswith("--") and "-" in name[2:]:
            alternative = "--" + name[2:].replace("-", "_")
            if alternative not in spelled:
                spelled.append(alternative)
    return tuple(spelled)


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: a file, not a directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    return path.absolute()


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a directory, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return path.absolute()


def _output_dir(value: str) -> Path:
    """A folder to write into, made absolute (``..`` kept: through a symbolic link it means what the system says)."""
    path = Path(value).expanduser().absolute()
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: a file, not a directory")
    return path


def _bids_label(value: str) -> str:
    """A participant or session label, with or without its ``sub-``/``ses-`` prefix."""
    label = value.removeprefix("sub-").removeprefix("ses-")
    if not _LABEL_RE.match(label):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a BIDS label (letters and digits only, e.g. '01' or 'sub-01')"
        )
    return label


def _json_file(value: str) -> dict:
    path = _existing_file(value)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{value}: not valid JSON ({error.msg}, line {error.lineno})")
    if not isinstance(content, dict):
        raise argparse.ArgumentTypeError(f"{value}: a BIDS filter file must hold a JSON object")
    return content


#: A bare number below this is refused: it was almost surely meant in GB (``--mem 16``).
SMALLEST_BARE_MEMORY_MB = 1000


def _memory_mb(value: str) -> int:
    """Parse ``16000``, ``16000MB``, ``16GB``, ``16G`` or ``1TB`` into megabytes.

    A bare number is MB, as in fMRIPrep's ``--mem``/``--mem_mb``; one under
    :data:`SMALLEST_BARE_MEMORY_MB` is refused rather than read as a few MB.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([GgMmTt]?)[Bb]?\s*", value)
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r}: memory must look like 16000, 16000MB, 16GB or 1TB")
    amount, unit = float(match.group(1)), match.group(2).upper()
    if not unit and amount < SMALLEST_BARE_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"{value!r}: a bare number is MB; write {value.strip()}GB for gigabytes")
    return int(amount * {"T": 1_000_000, "G": 1000}.get(unit, 1))


def positive_int(value: str) -> int:
    """An integer of at least 1 (the demo's counts use it too)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 or a positive integer")
    return number


def _fold_count(value: str) -> int:
    number = int(value)
    if number < 2:
        raise argparse.ArgumentTypeError(f"{value}: cross-validation needs at least 2 folds")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive number")
    return number


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r}: device must be auto, cpu, cuda or cuda:N")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``bids_rim BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""
    parser = _SpellingAwareParser(
        prog="bids_rim",
        description=(
            "bids_rim finds paramagnetic rim lesions (PRL) of multiple sclerosis in QSM and "
            "FLAIR. The participant level registers FLAIR to QSM, labels lesions, cuts one 3D "
            "patch per lesion and gives each a rim probability; the group level gathers the "
            "tables into statistics across subjects and sites, or trains a model (--train)."
        ),
        formatter_class=_HelpFormatter,
        epilog="exit codes: 0 success; " + "; ".join(f"{code} {text}" for code, text in all_descriptions().items()),
    )
    parser.add_argument("bids_dir", type=_existing_dir, help="the root of the raw BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=_output_dir,
        help="where the derivatives are written (a BIDS derivative dataset; inside bids_dir only under "
        "bids_dir/derivatives/, e.g. bids_dir/derivatives/bids_rim)",
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="'participant' processes each subject; 'group' aggregates participant outputs or trains (--train)",
    )
    parser.add_argument("--version", action="version", version=f"bids_rim {__version__}")

    selection = parser.add_argument_group("Selecting the data to process")
    selection.add_argument(
        "--participant-label",
        nargs="+",
        type=_bids_label,
        metavar="LABEL",
        help=(
            "participants to analyse, with or without 'sub-' (default: all). Participant level: the participants "
            "to process. Group level: the only participants whose participant-level outputs and participants.tsv "
            "rows enter the statistics, maps, tables and report (which say so) or --train, e.g. to leave QC-failed "
            "participants out; a named participant without participant-level outputs is refused"
        ),
    )
    selection.add_argument(
        "--session-label",
        nargs="+",
        type=_bids_label,
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    selection.add_argument(
        "--bids-filter-file",
        type=_json_file,
        metavar="FILE",
        help=(
            "a JSON file of pybids filters per input, e.g. "
            '{"flair": {"acquisition": "3D"}, "qsm": {"run": 1}}; keys: flair, qsm, magnitude; inside them '
            "pybids' entity names (acquisition, not acq)"
        ),
    )
    selection.add_argument(
        "-d",
        "--derivatives",
        nargs="+",
        type=_existing_dir,
        metavar="DIR",
        help=(
            "derivative datasets that hold QSM maps (e.g. QSMxT's *_Chimap.nii[.gz]) or lesion "
            "masks; recognised lesion mask names: " + ", ".join(LESION_MASK_PATTERNS)
        ),
    )
    selection.add_argument(
        "--skip-bids-validation",
        action="store_true",
        help="do not validate the input dataset with the official BIDS validator first",
    )

    lesions = parser.add_argument_group("Lesions and patches")
    lesions.add_argument(
        "--lesion-source",
        choices=["auto", "mask", "builtin"],
        default="auto",
        help=(
            "where lesions come from: 'mask' requires a lesion mask in a derivative dataset, "
            "'builtin' segments FLAIR hyperintensities, 'auto' uses a mask when one is found"
        ),
    )
    lesions.add_argument(
        "--min-lesion-volume",
        type=_positive_float,
        default=14.1,
        metavar="MM3",
        help="smallest lesion kept, in mm³ (a sphere 3 mm across, after the NAIMS consensus)",
    )
    lesions.add_argument(
        "--confluent-policy",
        choices=["split", "merge"],
        default="split",
        help="confluent lesions: 'split' at distance-transform watersheds, or 'merge' into one lesion",
    )
    lesions.add_argument(
        "--lesion-outline",
        choices=["given", "refined"],
        default="given",
        help=(
            "'given' keeps each lesion's border as the mask (or the built-in segmentation) draws it; "
            "'refined' redraws it where FLAIR crosses half-way between the surrounding white matter "
            "and the lesion (moving it by at most 2.5 mm), so that outlines do not depend on how "
            "generously each rater drew"
        ),
    )
    lesions.add_argument(
        "--patch-size",
        type=positive_int,
        default=32,
        metavar="VOXELS",
        help="edge of the cubic patch cut around each lesion, in voxels; must equal the model's (32 for the "
        "bundled models; checked before any work)",
    )
    lesions.add_argument(
        "--patch-spacing",
        type=_positive_float,
        default=1.0,
        metavar="MM",
        help="finest isotropic voxel size of the patches in mm; a QSM with coarser voxels is sampled at its "
        "own voxel size (read, not interpolated), and lesions too large to fit are sampled coarser and flagged",
    )
    lesions.add_argument(
        "--output-spaces",
        nargs="*",
        default=[],
        metavar="SPACE",
        help="template spaces (TemplateFlow names, e.g. MNI152NLin2009cAsym) to write lesion and rim maps in "
        "(default, or the flag with no name: none, only the QSM space)",
    )

    model = parser.add_argument_group("Rim classification model")
    model.add_argument(
        "--model",
        type=_existing_file,
        metavar="FILE",
        help=("a bids_rim model file (default: the bundled model trained on the outlines that "
              "--lesion-outline names; both bundled models were trained on synthetic data only)"),
    )
    model.add_argument(
        "--no-inference",
        action="store_true",
        help="stop after the lesion table and patches (no rim probabilities)",
    )

    group = parser.add_argument_group("Group level")
    group.add_argument(
        "--covariates",
        nargs="+",
        metavar="COLUMN",
        help="participants.tsv columns for the PRL count regression (default: EDSS, age, sex, disease_duration "
        "when present)",
    )
    group.add_argument(
        "--count-model",
        choices=["negbin", "poisson"],
        default="negbin",
        help="distribution of the PRL count regression",
    )
    group.add_argument("--train", action="store_true", help="train a rim model on the participant outputs")
    group.add_argument(
        "--rim-annotations",
        type=_existing_dir,
        metavar="DIR",
        help="a derivative dataset of rim annotations (*_desc-rim_annotations.tsv) for --train",
    )
    group.add_argument(
        "--arch",
        default="asym",
        choices=TRAINABLE_ARCHITECTURES,
        help="architecture to train: asym (ours: QSM primary, FLAIR conditions it), qsm_only (its QSM path "
        "alone), the rimnet- and qsmrimnet-style baselines, early_fusion (ResNet-18 on stacked channels) "
        "or radiomics (hand-crafted features, random forest; cross-validated only: no model file, its card and "
        "metrics go to OUTPUT_DIR/models/arch-radiomics/)",
    )
    group.add_argument("--folds", type=_fold_count, default=5, help="patient-level cross-validation folds (at least 2)")
    group.add_argument(
        "--pretrain-epochs",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="self-supervised pretraining epochs (0 skips it)",
    )
    group.add_argument(
        "--finetune-epochs",
        type=positive_int,
        default=30,
        metavar="N",
        help="most fine-tuning epochs; early stopping on the inner validation may end sooner, but not before "
        "epoch 10 (with N under 10, all N epochs run)",
    )
    group.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="training batch size")
    group.add_argument(
        "--init-from",
        metavar="FILE|bundled",
        help="fine-tune a model instead of training from scratch: every fold model and the final model start from "
        "the final member of this bids_rim model file, or of the bundled model for the --lesion-outline of the "
        "participant-level outputs with 'bundled' (the --arch, its configuration and the patch size must match; "
        "add --pretrain-epochs 0 to skip pretraining); the model card names the file and its sha256",
    )

    performance = parser.add_argument_group("Performance and execution")
    performance.add_argument(
        "--nprocs",
        "--nthreads",
        "--n-cpus",
        type=positive_int,
        metavar="N",
        help="processes Nipype may run at once (default: the CPUs this process may use, e.g. a SLURM allocation)",
    )
    performance.add_argument(
        "--omp-nthreads",
        type=positive_int,
        metavar="N",
        help="threads per process for N4 bias correction and rim inference at participant level, and for training "
        "with group --train (default: min(8, nprocs)); registration stays single-threaded so that the same inputs "
        "give identical transforms",
    )
    performance.add_argument(
        "--mem",
        "--mem-mb",
        type=_memory_mb,
        metavar="MEMORY",
        help="memory Nipype's MultiProc plugin may plan with (16000, 16000MB, 16GB or 1TB; a bare number is MB, as "
        "in fMRIPrep); a scheduling limit, not enforced, and unused with --nprocs 1 or --use-plugin",
    )
    performance.add_argument(
        "--use-plugin",
        type=_existing_file,
        metavar="FILE",
        help="a Nipype plugin file (YAML or JSON: {plugin: MultiProc|Linear|SLURM|SGE, plugin_args: {...}})",
    )
    performance.add_argument(
        "--device", type=_device, default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N"
    )

    workflow = parser.add_argument_group("Workflow configuration")
    workflow.add_argument(
        "-w",
        "--work-dir",
        type=_output_dir,
        metavar="DIR",
        help="Nipype working directory, outside the input dataset; reusing it skips steps whose inputs did not "
        "change (default: ./work)",
    )
    workflow.add_argument(
        "--clean-workdir",
        action="store_true",
        help="remove the selected participants' folders from the working directory first, so that every step is "
        "computed anew (the folders of other participants, which other runs may be using, stay)",
    )
    workflow.add_argument(
        "--boilerplate-only",
        action="store_true",
        help="write the methods text of this run's options and model (OUTPUT_DIR/logs/CITATION.md) and exit "
        "without processing any participant",
    )
    workflow.add_argument("--seed", type=int, default=0, help="random seed for registration sampling and training")
    workflow.add_argument(
        "--config-file",
        type=_existing_file,
        metavar="FILE",
        help="a TOML file of option values (keys as the long option names, e.g. nprocs = 4); the command line wins",
    )
    workflow.add_argument(
        "-v", "--verbose", dest="verbose_count", action="count", default=0,
        help="more log output: -v adds bids_rim's debug messages, -vv those of every library (Nipype included)"
    )
    return parser
