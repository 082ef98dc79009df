"""The participant level: validate the input, find the sessions, run one workflow, summarise.

Each participant's nodes write crash files to ``OUTPUT_DIR/sub-X/log/<run id>/``; a failed
participant is named with the one-line reason of its crash, the others go on, and the exit
code says whether any failed. Each participant the run processes gets ``bids_rim.json`` there
too: how the run was invoked (:mod:`bids_rim.bidsio.run_record`). Ctrl-C or SIGTERM stops the
whole run (:mod:`bids_rim.cli.interruption`).
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path

from bids_rim.bidsio.derivatives import atomic_write_text, dataset_roots, write_dataset_description
from bids_rim.bidsio.inputs import SessionInputs, collect_sessions, index_dataset
from bids_rim.bidsio.preflight import check_session_inputs, unlisted_mask_hint
from bids_rim.bidsio.run_ids import new_run_id
from bids_rim.bidsio.run_record import Invocation, run_record, write_run_record
from bids_rim.bidsio.validator import validate_dataset
from bids_rim.cli.exit_codes import EXIT_INVALID_BIDS, EXIT_PARTICIPANTS_FAILED, EXIT_USAGE
from bids_rim.cli.interruption import Interruption, plugin_args_with_callback, stop_on_signals
from bids_rim.cli.work_dir import participant_locks, remove_folders
from bids_rim.config import RunConfig
from bids_rim.errors import InputError, OutputError
from bids_rim.preproc.template_space import resolve_template

LOGGER = logging.getLogger("bids_rim.participant")


def _validate_input(config: RunConfig) -> bool:
    if config.skip_bids_validation:
        LOGGER.info("Skipping BIDS validation of %s (--skip-bids-validation)", config.bids_dir)
        return True
    LOGGER.info("Validating %s with the BIDS validator", config.bids_dir)
    try:
        result = validate_dataset(config.bids_dir)
    except RuntimeError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return False
    for warning in result.warnings:
        LOGGER.debug("BIDS validator: %s", warning)
    if result.errors:
        shown = "; ".join(str(issue) for issue in result.errors[:5])
        more = f" (and {len(result.errors) - 5} more)" if len(result.errors) > 5 else ""
        print(f"bids_rim: error: {config.bids_dir} is not valid BIDS: {shown}{more}; "
              "fix it or pass --skip-bids-validation", file=sys.stderr)
        return False
    return True


def first_error_line(crash_file: Path) -> str:
    """The last exception line of a Nipype text crash file: the one-line reason."""
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        for prefix in ("bids_rim.errors.InputError: ", "InputError: "):
            if line.startswith(prefix):
                return line[len(prefix):]
    for line in reversed(lines):
        if "Error: " in line and not line.startswith("File "):
            return line
    return lines[-1] if lines else "unknown error"


def preflight(unit: SessionInputs, config: RunConfig) -> list[str]:
    """Check a session's files before work starts; returns warnings, raises InputError."""
    if config.lesions.source == "mask" and unit.lesion_mask is None:
        hint = unlisted_mask_hint(unit)
        raise InputError(f"{unit.name}: --lesion-source mask, but no lesion mask was found in the "
                         "derivative datasets given with -d" + (f"; {hint}" if hint else ""))
    return check_session_inputs(unit, lesion_source=config.lesions.source)


def model_outline_warning(config: RunConfig) -> str | None:
    """A warning when the model was trained on lesions outlined otherwise than this run outlines them.

    Reads the model file once before any work, so that an unreadable one stops the run with its
    one-line reason instead of failing every participant. Model files from before
    ``--lesion-outline`` were trained on given outlines.
    """
    from bids_rim.training.checkpoint import load_checkpoint
    from bids_rim.workflows.participant import bundled_model_path

    if not config.run_inference:
        return None
    path = config.model_path or bundled_model_path(config.lesions.outline)
    trained = load_checkpoint(path)["training"].get("data", {}).get("lesion_outline", "given")
    if trained == config.lesions.outline:
        return None
    return (f"{path.name} was trained on lesions with --lesion-outline {trained}, but this run uses "
            f"{config.lesions.outline}: its probabilities may be off (use {trained}, or retrain the model)")


def check_inference_options(config: RunConfig) -> None:
    """Stop before any work when inference could not run: a ``--device`` this machine lacks, or a
    ``--patch-size`` other than the model's (each participant would otherwise fail after its
    registration, and the exit code would count participants instead of naming a bad option)."""
    from bids_rim.training.checkpoint import load_checkpoint
    from bids_rim.training.inference import resolve_device
    from bids_rim.workflows.participant import bundled_model_path

    if not config.run_inference:
        return
    resolve_device(config.execution.device)
    path = config.model_path or bundled_model_path(config.lesions.outline)
    model_patch_size = int(load_checkpoint(path)["patch_size"])
    if model_patch_size != config.lesions.patch_size:
        raise InputError(f"{path}: the model expects {model_patch_size}³ patches, not --patch-size "
                         f"{config.lesions.patch_size}; rerun with --patch-size {model_patch_size}")


def record_failure(output_dir: Path, subject: str, run_id: str, message: str) -> Path:
    """A text crash file for a participant that failed before its workflow started."""
    crash_dir = output_dir / f"sub-{subject}" / "log" / run_id
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"crash-{run_id}-preflight.txt"
    path.write_text(f"bids_rim pre-flight check failed\nInputError: {message}\n")
    return path


def _stopped(interruption: Interruption, config: RunConfig) -> int:
    """After a stop signal: remove the crash files the stop caused, say what is left, return 130/143."""
    name = interruption.signal.name if interruption.signal else "SIGINT"
    interruption.remove_crash_files_of_the_stop()
    if next(config.output_dir.glob("sub-*/**/*_desc-lesions_table.tsv"), None) is not None:  # some finished
        write_dataset_description(config.output_dir, dataset_roots(config.bids_dir, config.derivatives,
                                                                    config.output_dir))
    print(f"bids_rim: stopped by {name}; the outputs in {config.output_dir} written so far are complete (every "
          f"write is atomic); rerun with the same -w {config.execution.work_dir} to resume", file=sys.stderr)
    return interruption.exit_code


def run_participant_level(config: RunConfig, invocation: Invocation | None = None) -> int:
    """Process every selected participant; returns the exit code.

    ``invocation`` (the command line :func:`bids_rim.cli.run.main` parsed) goes into each processed
    participant's run record; None when called from Python, and then the record's ``CommandLine`` is null.
    """
    if config.boilerplate_only:
        return write_boilerplate_only(config)
    if not _validate_input(config):
        return EXIT_INVALID_BIDS
    try:
        for space in config.output_spaces:  # fail before any work when a template is missing
            resolve_template(space)
        check_inference_options(config)
        outline_warning = model_outline_warning(config)
        layout = index_dataset(config.bids_dir, config.derivatives)
        units, unusable = collect_sessions(
            layout,
            participant_labels=config.participant_labels,
            session_labels=config.session_labels,
            bids_filters=config.bids_filters,
        )
    except InputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    run_id = new_run_id()
    subjects = sorted({unit.subject for unit in units} | set(unusable))
    with participant_locks(config.execution.work_dir, subjects, run_id):
        if config.execution.clean_workdir:
            from bids_rim.workflows.participant import participant_work_dir

            remove_folders([participant_work_dir(config.execution.work_dir, subject) for subject in subjects])
        return _process_participants(config, units, unusable, run_id, outline_warning, invocation)


def write_boilerplate_only(config: RunConfig) -> int:
    """``--boilerplate-only``: the methods text of these options and model (``logs/CITATION.md``), nothing else."""
    from bids_rim.workflows.participant import run_methods

    try:
        check_inference_options(config)  # the model file the text describes must be one this run could apply
    except InputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    citation = atomic_write_text(config.output_dir / "logs" / "CITATION.md", run_methods(config).markdown())
    LOGGER.info("Methods text for your manuscript: %s (--boilerplate-only: no participant processed)", citation)
    return 0


def record_invocation(config: RunConfig, run_id: str, by_subject: dict[str, list[SessionInputs]],
                      invocation: Invocation | None) -> list[Path]:
    """Write ``sub-X/log/<run id>/bids_rim.json`` for each participant about to be processed (and only
    those: a participant refused before its workflow keeps nothing but its crash file).

    A record that cannot be written stops the run as an output problem (exit 73), not as a bug.
    """
    from bids_rim.workflows.participant import model_provenance

    model = model_provenance(config)  # cached: the workflow's report nodes read the same
    try:
        return [write_run_record(config.output_dir, run_record(config, run_id, subject=subject,
                                                               sessions=[unit.name for unit in units],
                                                               invocation=invocation, model=model))
                for subject, units in by_subject.items()]
    except OSError as error:
        raise OutputError(f"{error.filename or config.output_dir}: cannot write the run record "
                          f"({error.strerror or error})") from error


def _process_participants(config: RunConfig, units: list[SessionInputs], unusable: dict[str, str], run_id: str,
                          outline_warning: str | None, invocation: Invocation | None = None) -> int:
    """Check, run and report every selected session (the run's working-directory locks held); returns the exit code."""
    from bids_rim.workflows.participant import init_bids_rim_wf, run_methods

    failed: dict[str, str] = {}
    for subject, reason in unusable.items():
        failed[subject] = reason
        record_failure(config.output_dir, subject, run_id, reason)
    if outline_warning:
        LOGGER.warning("%s", outline_warning)
    warnings: dict[str, list[str]] = {}
    by_subject: dict[str, list[SessionInputs]] = defaultdict(list)
    for unit in units:
        try:
            warnings[unit.name] = preflight(unit, config) + ([outline_warning] if outline_warning else [])
        except InputError as error:
            failed.setdefault(unit.subject, str(error))
            record_failure(config.output_dir, unit.subject, run_id, f"{unit.name}: {error}")
            continue
        for warning in warnings[unit.name]:
            LOGGER.warning("%s", warning)
        by_subject[unit.subject].append(unit)
    for subject in failed:  # a participant with one bad session is not processed at all
        by_subject.pop(subject, None)
    LOGGER.info("Processing %d session(s) of %d participant(s): %s", sum(map(len, by_subject.values())),
                len(by_subject), ", ".join(f"sub-{s}" for s in by_subject))

    if by_subject:
        workflow = init_bids_rim_wf(config, dict(by_subject), run_id=run_id, warnings=warnings)
        log_dirs = [config.output_dir / f"sub-{subject}" / "log" / run_id for subject in by_subject]
        record_invocation(config, run_id, dict(by_subject), invocation)  # the workflow is about to start
        with stop_on_signals(log_dirs) as interruption:
            try:
                workflow.run(plugin=config.execution.plugin, plugin_args=plugin_args_with_callback(
                    config.execution.plugin, config.execution.plugin_args, interruption))
            except RuntimeError as error:  # Nipype raises once at the end when any node failed
                LOGGER.debug("Workflow finished with failures: %s", error)
            except KeyboardInterrupt:
                if interruption.signal is None:  # not a signal of ours: let it end the run as it would
                    raise
                # cleaned up below, once the handlers are restored (a second Ctrl-C then stops at once)
        if interruption.signal is not None:
            return _stopped(interruption, config)

    for subject in by_subject:
        crash_dir = config.output_dir / f"sub-{subject}" / "log" / run_id
        crashes = sorted(crash_dir.glob("crash-*")) if crash_dir.is_dir() else []
        if crashes:
            failed[subject] = first_error_line(crashes[0])
    succeeded = [s for s in by_subject if s not in failed]
    subjects = sorted(set(by_subject) | set(failed))
    if succeeded:
        write_dataset_description(config.output_dir, dataset_roots(config.bids_dir, config.derivatives,
                                                                    config.output_dir))
        citation = atomic_write_text(config.output_dir / "logs" / "CITATION.md", run_methods(config).markdown())
        LOGGER.info("Methods text for your manuscript: %s", citation)
    for subject, reason in failed.items():
        print(f"bids_rim: sub-{subject} failed: {reason} "
              f"(crash files in {config.output_dir / f'sub-{subject}' / 'log' / run_id})", file=sys.stderr)
    LOGGER.info("Done: %d of %d participant(s) succeeded, %d failed; outputs in %s",
                len(succeeded), len(subjects), len(failed), config.output_dir)
    return EXIT_PARTICIPANTS_FAILED if failed else 0
