"""The command-line parser alone: spellings, labels, types and the run configuration."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bids_rim.cli.parser import build_parser
from bids_rim.cli.run import build_config, check_output_dir, parse_arguments
from bids_rim.errors import OutputError


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    return root


def test_both_spellings_and_label_prefixes(dataset: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args([
        str(dataset), str(tmp_path / "out"), "participant",
        "--participant_label", "sub-01", "02", "--session-label", "ses-A",
        "--omp_nthreads", "3", "--mem", "8GB", "--skip_bids_validation",
    ])
    assert args.participant_label == ["01", "02"]
    assert args.session_label == ["A"]
    assert args.omp_nthreads == 3
    assert args.mem == 8000
    assert args.skip_bids_validation is True


@pytest.mark.parametrize("label", ["../x", "sub-01/..", "a b", "sub-"])
def test_labels_that_escape_or_are_not_bids_are_refused(dataset: Path, tmp_path: Path, label: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args([str(dataset), str(tmp_path / "o"), "participant", "--participant-label", label])
    assert raised.value.code == 2
    assert "is not a BIDS label" in capsys.readouterr().err


def test_memory_units(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    base = [str(dataset), str(tmp_path / "o"), "participant", "--mem"]
    assert parser.parse_args(base + ["16000MB"]).mem == 16000
    assert parser.parse_args(base + ["16000"]).mem == 16000  # a bare number is MB, as in fMRIPrep
    assert parser.parse_args(base + ["1.5G"]).mem == 1500
    assert parser.parse_args(["--mem-mb", "8GB", *base[:-1]]).mem == 8000
    assert parser.parse_args(base + ["2T"]).mem == parser.parse_args(base + ["2TB"]).mem == 2_000_000
    for bad in ("lots", "16"):  # "16" was surely meant in GB: refused, not read as 16 MB
        with pytest.raises(SystemExit) as raised:
            parser.parse_args(base + [bad])
        assert raised.value.code == 2
    assert "write 16GB for gigabytes" in capsys.readouterr().err


def test_a_file_where_a_folder_belongs_is_named_so(dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    for arguments in ([str(a_file), str(tmp_path / "o"), "participant"], [str(dataset), str(a_file), "participant"]):
        with pytest.raises(SystemExit) as raised:
            build_parser().parse_args(arguments)
        assert raised.value.code == 2
        assert f"{a_file}: a file, not a directory" in capsys.readouterr().err


def test_config_file_gives_defaults_and_command_line_wins(dataset: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "bids_rim.toml"
    config_file.write_text('nprocs = 3\nseed = 7\nconfluent-policy = "merge"\n')
    argv = [str(dataset), str(tmp_path / "o"), "participant", "--config-file", str(config_file), "--seed", "11"]
    args = parse_arguments(build_parser(), argv)
    assert (args.nprocs, args.seed, args.confluent_policy) == (3, 11, "merge")


def test_config_file_with_unknown_key_is_refused(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_file = tmp_path / "bids_rim.toml"
    config_file.write_text("colour = 'blue'\n")
    with pytest.raises(SystemExit) as raised:
        parse_arguments(build_parser(), [str(dataset), str(tmp_path / "o"), "participant",
                                         "--config-file", str(config_file)])
    assert raised.value.code == 2
    assert f"{config_file}: unknown option 'colour'" in capsys.readouterr().err


def test_config_file_values_mean_what_they_mean_on_the_command_line(dataset: Path, tmp_path: Path) -> None:
    """Each value passes the parser as if typed: units, label prefixes, lists, flags and counts."""
    config_file = tmp_path / "bids_rim.toml"
    config_file.write_text('mem = "16GB"\nparticipant_label = "sub-01"\nsession-label = ["A", "ses-B"]\n'
                           'skip-bids-validation = true\nverbose = 2\nomp_nthreads = 3\n')
    args = parse_arguments(build_parser(), [str(dataset), str(tmp_path / "o"), "participant",
                                            "--config-file", str(config_file)])
    assert (args.mem, args.participant_label, args.session_label) == (16000, ["01"], ["A", "B"])
    assert (args.skip_bids_validation, args.verbose_count, args.omp_nthreads) == (True, 2, 3)


@pytest.mark.parametrize(("line", "message"), [
    ("mem = 16", "write 16GB for gigabytes"),
    ('lesion_source = "bogus"', "invalid choice: 'bogus'"),
    ('derivatives = ["/nonexistent/bids_rim_test"]', "/nonexistent/bids_rim_test"),
    ('participant_label = ["../x"]', "is not a BIDS label"),
    ('skip-bids-validation = "yes"', "takes true or false"),
    ("verbose = true", "takes a count"),
    ("nprocs = [2, 3]", "takes one value"),
])
def test_config_file_values_are_checked_as_the_command_line_is(
        dataset: Path, tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture) -> None:
    config_file = tmp_path / "bids_rim.toml"
    config_file.write_text(line + "\n")
    with pytest.raises(SystemExit) as raised:
        parse_arguments(build_parser(), [str(dataset), str(tmp_path / "o"), "participant",
                                         "--config-file", str(config_file)])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert message in error and str(config_file) in error


def test_run_config_is_frozen_and_complete(dataset: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args([str(dataset), str(tmp_path / "o"), "participant", "--nprocs", "1",
                                      "--device", "cpu", "--patch-size", "16"])
    config = build_config(args)
    assert config.execution.plugin == "Linear"
    assert config.execution.device == "cpu"
    assert config.lesions.patch_size == 16
    with pytest.raises(AttributeError):
        config.analysis_level = "group"  # type: ignore[misc]


def test_plugin_file(dataset: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n")
    args = build_parser().parse_args([str(dataset), str(tmp_path / "o"), "participant", "--use-plugin", str(plugin)])
    config = build_config(args)
    assert config.execution.plugin == "SLURM"
    assert config.execution.plugin_args == {"sbatch_args": "--time=1:00:00"}


@pytest.mark.parametrize("inside", [".", "sub-01", "out"])
def test_output_inside_input_is_refused(dataset: Path, inside: str) -> None:
    args = build_parser().parse_args([str(dataset), str(dataset / inside), "participant"])
    with pytest.raises(OutputError, match="must not be the input dataset or lie inside it"):
        check_output_dir(build_config(args))


def test_output_in_derivatives_folder_is_allowed(dataset: Path) -> None:
    args = build_parser().parse_args([str(dataset), str(dataset / "derivatives" / "bids_rim"), "participant"])
    check_output_dir(build_config(args))
    assert (dataset / "derivatives" / "bids_rim").is_dir()


def test_unwritable_output_is_refused(dataset: Path, tmp_path: Path) -> None:
    # A path below a regular file cannot be created by anyone, root included.
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = build_parser().parse_args([str(dataset), str(blocker / "out"), "participant"])
    with pytest.raises(OutputError, match="not writable"):
        check_output_dir(build_config(args))


@pytest.mark.parametrize("outline", ["given", "refined"])
def test_each_lesion_outline_runs_the_bundled_model_trained_on_it(dataset: Path, tmp_path: Path, outline: str) -> None:
    """Without --model, --lesion-outline picks the bundled model trained on outlines drawn that way:
    no mismatch warning, and the sidecars name that model."""
    from bids_rim.cli.participant import model_outline_warning
    from bids_rim.training.checkpoint import load_checkpoint
    from bids_rim.workflows.participant import BUNDLED_MODELS, _parameters, bundled_model_path

    choices = next(action.choices for action in build_parser()._actions if action.dest == "lesion_outline")
    assert set(choices) == set(BUNDLED_MODELS)
    config = build_config(parse_arguments(build_parser(), [str(dataset), str(tmp_path / "o"), "participant",
                                                           "--lesion-outline", outline]))
    path = bundled_model_path(outline)
    assert load_checkpoint(path)["training"].get("data", {}).get("lesion_outline", "given") == outline
    assert model_outline_warning(config) is None
    parameters = _parameters(config)
    assert parameters["Model"] == BUNDLED_MODELS[outline]
    assert parameters["ModelSHA256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert parameters["DecisionThreshold"] == pytest.approx(float(load_checkpoint(path)["threshold"]), abs=1e-6)
    assert 0 < parameters["DecisionThreshold"] < 1
    assert path.with_name(path.name.replace("_model.pt", "_modelcard.md")).is_file()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--arch", "resnet", "invalid choice: 'resnet'"),
    ("--folds", "1", "at least 2 folds"),
    ("--pretrain-epochs", "-1", "must be 0 or a positive integer"),
    ("--device", "mps", "device must be auto, cpu, cuda or cuda:N"),
])
def test_training_options_that_could_not_train_are_refused_when_parsed(
        dataset: Path, tmp_path: Path, option: str, value: str, message: str, capsys: pytest.CaptureFixture) -> None:
    """A value TrainConfig or the device check would refuse later is a usage error now (exit 2, one line)."""
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args([str(dataset), str(tmp_path / "o"), "group", "--train", option, value])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_every_registered_model_can_be_chosen_for_training() -> None:
    from bids_rim.cli.parser import TRAINABLE_ARCHITECTURES
    from bids_rim.models.registry import available_models

    assert sorted(TRAINABLE_ARCHITECTURES) == sorted(available_models())


def test_an_unexpected_error_at_group_level_exits_70_with_its_traceback(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug at group level must not exit 1, which means 'one participant failed'."""
    import bids_rim.group.run
    from bids_rim.cli.exit_codes import EXIT_INTERNAL
    from bids_rim.cli.run import main

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(bids_rim.group.run, "run_group_level", broken)
    assert main([str(dataset), str(tmp_path / "out"), "group"]) == EXIT_INTERNAL == 70
    assert "internal error at group level" in caplog.text and "RuntimeError: simulated bug" in caplog.text


def test_an_unexpected_error_at_participant_level_exits_70_with_its_traceback(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug outside the participants' workflows must not exit 1, which means 'one participant failed'."""
    import bids_rim.cli.participant
    from bids_rim.cli.exit_codes import EXIT_INTERNAL
    from bids_rim.cli.run import main

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(bids_rim.cli.participant, "run_participant_level", broken)
    assert main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == EXIT_INTERNAL
    assert "internal error" in caplog.text and "RuntimeError: simulated bug" in caplog.text


@pytest.mark.parametrize(("options", "message"), [
    (["--patch-size", "16"], "the model expects 32³ patches, not --patch-size 16; rerun with --patch-size 32"),
    (["--device", "cuda:7"], "--device 'cuda:7': "),
])
def test_inference_options_that_cannot_work_stop_the_run_before_any_work(
        dataset: Path, tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    """A --patch-size the model cannot read or a device this machine lacks is a bad option (64),
    found before any participant is processed, not once per participant after registration."""
    from bids_rim.cli.exit_codes import EXIT_USAGE
    from bids_rim.cli.run import main

    out = tmp_path / "out"
    assert main([str(dataset), str(out), "participant", "--skip-bids-validation", *options]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not any(out.glob("sub-*"))


def test_one_v_shows_bids_rims_debug_messages_and_two_every_librarys() -> None:
    import logging

    from bids_rim.cli.run import configure_logging

    try:
        configure_logging(0)
        assert not logging.getLogger("bids_rim.participant").isEnabledFor(logging.DEBUG)
        configure_logging(1)
        assert logging.getLogger("bids_rim.participant").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("nipype.workflow").isEnabledFor(logging.DEBUG)
        configure_logging(2)
        assert logging.getLogger("nipype.workflow").isEnabledFor(logging.DEBUG)
    finally:
        configure_logging(0)


@pytest.mark.parametrize(("extra", "ignored"), [
    (["participant"], []),
    (["participant", "--no-inference", "--patch-size", "16", "--seed", "4"], []),
    (["participant", "--count-model", "poisson", "--folds", "3"], ["--count-model", "--folds"]),
    (["group", "--session-label", "01", "--no-inference", "--arch", "rimnet"],
     ["--arch", "--no-inference", "--session-label"]),
    (["group", "--participant-label", "01", "--no-inference"], ["--no-inference"]),  # the group level selects
    (["group", "--train", "--participant-label", "01", "--arch", "rimnet"], []),
    (["group", "--nprocs", "4", "--omp-nthreads", "2", "--lesion-outline", "refined", "--seed", "5"],
     ["--lesion-outline", "--nprocs", "--omp-nthreads", "--seed"]),
    (["group", "--train", "--nprocs", "4", "--omp-nthreads", "2", "--seed", "5", "--work-dir", "w"],
     ["--nprocs", "--work-dir"]),
    (["group", "--train", "--nprocs", "4", "--mem", "8GB"], ["--mem"]),  # --nprocs: the default training threads
])
def test_options_this_run_never_reads_are_named(dataset: Path, tmp_path: Path, extra: list[str],
                                                ignored: list[str]) -> None:
    """A user who gives an option the run will not read hears of it (e.g. a label filter at group level)."""
    from bids_rim.cli.run import ignored_options

    parser = build_parser()
    args = parse_arguments(parser, [str(dataset), str(tmp_path / "o"), *extra])
    assert ignored_options(parser, args) == ignored


def test_bad_input_found_late_is_still_a_usage_error_not_a_bug(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bids_rim.cli.participant
    from bids_rim.cli.exit_codes import EXIT_USAGE
    from bids_rim.cli.run import main
    from bids_rim.errors import InputError

    def refuses(*_args, **_kwargs):
        raise InputError("model.pt: not a bids_rim model file")

    monkeypatch.setattr(bids_rim.cli.participant, "run_participant_level", refuses)
    assert main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "bids_rim: error: model.pt: not a bids_rim model file"
