"""``bids_rim`` entry point: parse, configure, validate, build, run, summarise.

Exit codes (:mod:`bids_rim.cli.exit_codes`): 0 success; 1 some participants failed at
participant level; 2 a malformed command line; 64 a bad option or input dataset; 65 the input
dataset is not valid BIDS; 70 an internal error (a bug); 73 the output directory cannot be
used; 130 and 143 stopped by SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from argparse import ArgumentParser, Namespace, _CountAction
from pathlib import Path
from typing import TYPE_CHECKING

from bids_rim.cli.exit_codes import (
    EXIT_BUSY,
    EXIT_CANT_CREATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID_BIDS,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from bids_rim.cli.parser import build_parser
from bids_rim.config import ExecutionSettings, LesionSettings, RunConfig, TrainingSettings, usable_cpus
from bids_rim.errors import BusyError, InputError, OutputError

if TYPE_CHECKING:  # imported when used: it brings pandas, which --help and --version need not wait for
    from bids_rim.bidsio.run_record import Invocation

LOGGER = logging.getLogger("bids_rim")


def parse_arguments(parser: ArgumentParser, argv: list[str] | None) -> Namespace:
    """Parse argv; values from ``--config-file`` (TOML) become defaults the command line overrides.

    The file's values pass through the parser as if typed (``nprocs = 4`` as ``--nprocs 4``), so
    they meet the same types, units, choices and checks as the command line.
    """
    args = parser.parse_args(argv)
    if args.config_file is None:
        return args
    try:
        values = tomllib.loads(args.config_file.read_text())
    except tomllib.TOMLDecodeError as error:
        parser.error(f"{args.config_file}: not valid TOML ({error})")
    tokens, dests = config_file_tokens(parser, values, args.config_file)
    positionals = [str(args.bids_dir), str(args.output_dir), args.analysis_level]
    report = parser.error
    parser.error = lambda message: report(f"{args.config_file}: {message}")  # name the file in the one line
    try:
        from_file = parser.parse_args([*positionals, *tokens])
    finally:
        parser.error = report
    parser.set_defaults(**{dest: getattr(from_file, dest) for dest in dests})
    return parser.parse_args(argv)


def config_file_tokens(parser: ArgumentParser, values: dict, path: Path) -> tuple[list[str], list[str]]:
    """The command-line tokens that a config file's values stand for, and the options they set.

    Keys are the long option names, with - or _ (``omp-nthreads``, ``verbose``); a flag takes
    ``true``/``false``, ``verbose`` a count, and a list option a list or one value.
    """
    actions = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list
        for option in action.option_strings:
            if option.startswith("--") and action.dest != "config_file" and action.dest != "help":
                actions[option[2:].replace("-", "_")] = action
    tokens: list[str] = []
    dests: list[str] = []
    for key, value in values.items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            parser.error(f"{path}: unknown option {key!r}")
        flag = action.option_strings[-1]
        if isinstance(action, _CountAction):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                parser.error(f"{path}: {key} takes a count (0, 1, 2), not {value!r}")
            tokens += [flag] * value
        elif action.nargs == 0:
            if not isinstance(value, bool):
                parser.error(f"{path}: {key} takes true or false, not {value!r}")
            tokens += [flag] if value else []
        elif action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            tokens += [flag, *map(str, items)]
        else:
            if isinstance(value, (list, dict)):
                parser.error(f"{path}: {key} takes one value, not {value!r}")
            tokens += [flag, str(value)]
        dests.append(action.dest)
    return tokens, dests


#: Options (their dests) that an analysis level never reads.
UNREAD_AT_LEVEL = {
    "group": ("session_label", "bids_filter_file", "derivatives", "skip_bids_validation",
              "output_spaces", "model", "no_inference", "lesion_source", "min_lesion_volume", "confluent_policy",
              "lesion_outline", "patch_size", "patch_spacing", "mem", "use_plugin", "work_dir", "clean_workdir",
              "boilerplate_only"),
    "participant": ("covariates", "count_model"),
}
#: Options that only ``group --train`` reads.
TRAINING_OPTIONS = ("rim_annotations", "arch", "folds", "pretrain_epochs", "finetune_epochs", "batch_size",
                    "init_from")
#: Options that the group level reads only with --train (the participant level reads them too);
#: --nprocs there only as the default of --omp-nthreads, the training threads.
GROUP_TRAINING_ONLY = ("omp_nthreads", "device", "seed", "nprocs")


def ignored_options(parser: ArgumentParser, args: Namespace) -> list[str]:
    """The options given a value (other than their default) that this run will not read, so that
    the user hears of it instead of believing, say, that ``group --session-label 01`` chose one."""
    unread = set(UNREAD_AT_LEVEL[args.analysis_level])
    if not args.train:
        unread |= set(TRAINING_OPTIONS)
        if args.analysis_level == "group":
            unread |= set(GROUP_TRAINING_ONLY)
    elif args.analysis_level == "group" and args.omp_nthreads is not None:
        unread.add("nprocs")  # the training threads are given outright
    if args.use_plugin is not None:
        unread |= {"nprocs", "mem"}  # the plugin file says how to run
    long_names = {action.dest: next(name for name in action.option_strings if name.startswith("--"))
                  for action in parser._actions if action.option_strings}  # noqa: SLF001
    return [long_names[dest] for dest in sorted(unread) if getattr(args, dest) != parser.get_default(dest)]


def configure_logging(verbosity: int) -> None:
    """INFO by default; -v adds bids_rim's DEBUG messages, -vv every library's (Nipype's included)."""
    level = logging.DEBUG if verbosity >= 2 else logging.INFO
    root = logging.getLogger()
    root.setLevel(level)
    LOGGER.setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)  # NOTSET: follow the root
    for handler in [h for h in root.handlers if h.get_name() == "bids_rim"]:
        root.removeHandler(handler)  # main() may run more than once in a process (tests, the demo)
    handler = logging.StreamHandler()
    handler.set_name("bids_rim")
    handler.setFormatter(logging.Formatter("%(asctime)s | %(name)s | %(levelname)s | %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    # nipype.workflow at INFO shows which node of which subject runs: the progress users follow.
    for name, quiet_level in (("nipype.workflow", logging.INFO), ("nipype.interface", logging.WARNING),
                              ("nipype.utils", logging.WARNING)):
        nipype_logger = logging.getLogger(name)
        nipype_logger.setLevel(logging.DEBUG if verbosity >= 2 else quiet_level)
        nipype_logger.propagate = False  # Nipype has its own handler: no double lines
    # pybids' schema loader announces its bundled schema at INFO on every run: not news to users.
    logging.getLogger("bidsschematools").setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)


def _load_plugin(path: Path | None, nprocs: int, mem_mb: int | None) -> tuple[str, dict]:
    """The Nipype plugin and its arguments, from ``--use-plugin`` or the defaults."""
    if path is None:
        if nprocs == 1:
            return "Linear", {}
        plugin_args: dict = {"n_procs": nprocs, "raise_insufficient": False}
        if mem_mb:
            plugin_args["memory_gb"] = mem_mb / 1000
        return "MultiProc", plugin_args
    import yaml

    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)  # YAML's own message spans several lines
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}: not a valid YAML/JSON plugin file ({problem}{at})") from error
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise InputError(f"{path}: a plugin file needs a 'plugin' key (e.g. plugin: MultiProc)")
    plugin = str(settings["plugin"])
    known = nipype_plugins()
    if plugin not in known:
        raise InputError(f"{path}: unknown Nipype plugin {plugin!r} (one of {', '.join(known)})")
    return plugin, dict(settings.get("plugin_args") or {})


def nipype_plugins() -> list[str]:
    """The names ``--use-plugin`` accepts: Nipype's execution plugins (``MultiProc``, ``SLURM``, ...)."""
    from nipype.pipeline import plugins

    return sorted(name.removesuffix("Plugin") for name in dir(plugins) if name.endswith("Plugin"))


def build_config(args: Namespace) -> RunConfig:
    """Turn parsed arguments into the frozen run configuration, checking what they mean."""
    nprocs = args.nprocs or usable_cpus()
    plugin, plugin_args = _load_plugin(args.use_plugin, nprocs, args.mem)
    work_dir = args.work_dir or Path.cwd() / "work"
    execution = ExecutionSettings(
        work_dir=work_dir,
        nprocs=nprocs,
        omp_nthreads=args.omp_nthreads or min(8, nprocs),
        mem_mb=args.mem,
        plugin=plugin,
        plugin_args=plugin_args,
        device=args.device,
        seed=args.seed,
        verbosity=args.verbose_count,
        clean_workdir=args.clean_workdir,
    )
    lesions = LesionSettings(
        source=args.lesion_source,
        min_volume_mm3=args.min_lesion_volume,
        confluent_policy=args.confluent_policy,
        outline=args.lesion_outline,
        patch_size=args.patch_size,
        patch_spacing_mm=args.patch_spacing,
    )
    training = TrainingSettings(
        enabled=args.train,
        rim_annotations=args.rim_annotations,
        arch=args.arch,
        folds=args.folds,
        pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        init_from=args.init_from,
    )
    if args.train and args.analysis_level != "group":
        raise InputError("--train works at the group level: bids_rim BIDS_DIR OUTPUT_DIR group --train")
    return RunConfig(
        bids_dir=args.bids_dir,
        output_dir=args.output_dir,
        analysis_level=args.analysis_level,
        participant_labels=tuple(args.participant_label or ()),
        session_labels=tuple(args.session_label or ()),
        bids_filters=args.bids_filter_file or {},
        derivatives=tuple(args.derivatives or ()),
        skip_bids_validation=args.skip_bids_validation,
        output_spaces=tuple(args.output_spaces or ()),
        model_path=args.model,
        run_inference=not args.no_inference,
        boilerplate_only=args.boilerplate_only,
        covariates=tuple(args.covariates or ()),
        count_model=args.count_model,
        lesions=lesions,
        execution=execution,
        training=training,
    )


def check_work_dir(config: RunConfig) -> None:
    """The participant level's working directory must lie outside the input dataset: Nipype's files
    there would make the dataset fail BIDS validation on the next run (as fMRIPrep refuses it too)."""
    bids_dir, work_dir = config.bids_dir.resolve(), config.execution.work_dir.resolve()
    if config.analysis_level == "participant" and (work_dir == bids_dir or work_dir.is_relative_to(bids_dir)):
        raise InputError(f"{config.execution.work_dir}: the working directory must not lie inside the input "
                         f"dataset {bids_dir} (the default is ./work: run from another folder or give -w)")


def check_output_dir(config: RunConfig) -> None:
    """The output directory must lie outside the input dataset, be no other dataset (not a ``-d``
    input, not another pipeline's derivatives) and be writable."""
    bids_dir = config.bids_dir.resolve()
    output_dir = config.output_dir.resolve()
    if output_dir == bids_dir or bids_dir in output_dir.parents:
        derivatives_ok = output_dir.is_relative_to(bids_dir / "derivatives") and output_dir != bids_dir / "derivatives"
        if not derivatives_ok:
            raise OutputError(
                f"{config.output_dir}: the output directory must not be the input dataset or lie inside it "
                f"(use {bids_dir / 'derivatives' / 'bids_rim'} or a folder outside {bids_dir})"
            )
    for derivative in (path.resolve() for path in config.derivatives):
        if output_dir == derivative or output_dir.is_relative_to(derivative) or derivative.is_relative_to(output_dir):
            raise OutputError(f"{config.output_dir}: the output directory must not be, lie in or hold the input "
                              f"derivative dataset {derivative} (-d); use a folder of its own")
    from bids_rim.bidsio.derivatives import dataset_owner  # here: it brings pandas, which --help need not load

    owner = dataset_owner(output_dir)
    if owner not in (None, "bids_rim"):
        raise OutputError(f"{config.output_dir}: holds another dataset (dataset_description.json: GeneratedBy "
                          f"{owner}); bids_rim writes only into an empty folder or its own earlier output")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".bids_rim_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"{config.output_dir}: the output directory is not writable ({error.strerror})") from error


def main(argv: list[str] | None = None) -> int:
    """Run bids_rim; returns the process exit code."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    configure_logging(args.verbose_count)
    for option in ignored_options(parser, args):
        LOGGER.warning("%s has no effect in this run (%s level%s): ignored", option, args.analysis_level,
                       " with --train" if args.train else "")
    try:
        config = build_config(args)
        check_work_dir(config)
        first_created = first_missing_folder(config.output_dir)
        check_output_dir(config)
    except InputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_CANT_CREATE
    from bids_rim.bidsio.run_record import Invocation

    command_line = (parser.prog, *map(str, sys.argv[1:] if argv is None else argv))  # what was parsed
    code = dispatch(config, Invocation(command_line, args.config_file))
    refused_or_stopped = (EXIT_USAGE, EXIT_INVALID_BIDS, EXIT_BUSY, EXIT_INTERRUPTED, EXIT_TERMINATED)
    if code in refused_or_stopped and first_created is not None:
        remove_empty_folders(config.output_dir, first_created)  # a refused run leaves no empty folders
    return code


def dispatch(config: RunConfig, invocation: Invocation | None = None) -> int:
    """Run the analysis level; every error ends as its exit code (the message already printed).

    ``invocation`` is how bids_rim was called, recorded by the participant level for each participant.
    """
    try:
        if config.analysis_level == "participant":
            from bids_rim.cli.participant import run_participant_level

            return run_participant_level(config, invocation)
        from bids_rim.cli.group import run_group_level

        return run_group_level(config)
    except InputError as error:  # bad input found late, outside any participant's workflow
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_CANT_CREATE
    except BusyError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt:  # Ctrl-C outside the workflow (during validation or the group level)
        print("bids_rim: stopped by SIGINT", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not bad input: never exit 1 (= some participants failed)
        LOGGER.exception("internal error; please report it with this log")
        return EXIT_INTERNAL


def first_missing_folder(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: ``folder`` exists)."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def remove_empty_folders(folder: Path, up_to: Path) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` (included) while nothing was written into them."""
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()
        except OSError:  # not empty (or already gone): keep it and what holds it
            return
        if candidate == up_to:
            return

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
