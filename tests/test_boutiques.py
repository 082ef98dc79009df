"""boutiques.json against the argparse parser (both ways), the Boutiques schema and ``bosh exec simulate``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bids_rim import __version__
from bids_rim.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "boutiques.json"
BOSH = str(Path(sys.executable).with_name("bosh"))
NOT_INPUTS = (argparse._HelpAction, argparse._VersionAction)  # noqa: SLF001 - argparse names them privately


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _accepts(converter, value: str) -> bool:
    try:
        converter(value)
    except (argparse.ArgumentTypeError, ValueError):
        return False
    return True


def _type_differences(action: argparse.Action, entry: dict, tmp_path: Path) -> list[str]:
    """What the parser's converter does against what the descriptor's type promises."""
    name, kind, convert = action.dest, entry.get("type"), action.type or str
    problems = []
    if kind == "Number":
        sample = entry.get("default-value", entry.get("minimum", 0) + 1)
        converted = convert(str(sample))
        if entry.get("integer", False) != isinstance(converted, int):
            problems.append(f"{name}: integer={entry.get('integer', False)} but the parser gives {converted!r}")
        if "minimum" in entry:
            minimum = entry["minimum"]
            below = minimum if entry.get("exclusive-minimum") else minimum - 1
            if _accepts(convert, str(below)):
                problems.append(f"{name}: the parser accepts {below}, below the descriptor's minimum {minimum}")
        elif not _accepts(convert, "-1"):
            problems.append(f"{name}: the parser rejects -1 but the descriptor has no minimum")
    elif kind == "File":
        existing_file = tmp_path / "existing.json"
        existing_file.write_text("{}")
        if _accepts(convert, str(tmp_path / "missing")):
            problems.append(f"{name}: a File input, but the parser accepts a path that does not exist")
        if not (_accepts(convert, str(existing_file)) or _accepts(convert, str(tmp_path))):
            problems.append(f"{name}: a File input, but the parser accepts neither an existing file nor a folder")
    elif kind == "String" and not isinstance(action, argparse._CountAction):  # noqa: SLF001
        try:
            convert(str(tmp_path / "missing"))
        except argparse.ArgumentTypeError as error:
            if "no such" in str(error):
                problems.append(f"{name}: a String input, but the parser requires the path to exist (a File)")
    return problems


def differences(parser: argparse.ArgumentParser, descriptor: dict, tmp_path: Path) -> list[str]:
    """Every disagreement between the parser and the descriptor, checked from both sides."""
    actions = {action.dest: action for action in parser._actions if not isinstance(action, NOT_INPUTS)}  # noqa: SLF001
    inputs = {entry["id"]: entry for entry in descriptor["inputs"]}
    problems = [f"{dest}: in the parser, not in the descriptor" for dest in actions if dest not in inputs]
    problems += [f"{name}: in the descriptor, not in the parser" for name in inputs if name not in actions]
    for dest in actions.keys() & inputs.keys():
        action, entry = actions[dest], inputs[dest]
        flag = entry.get("command-line-flag")
        if isinstance(action, argparse._CountAction):  # noqa: SLF001 - e.g. -v, -vv
            short = [name for name in action.option_strings if len(name) == 2][0]
            if flag is not None or entry.get("value-choices") != [short + short[1] * extra for extra in range(2)]:
                problems.append(f"{dest}: a count option must be the choices {short}, {short}{short[1]} "
                                "(the levels that differ)")
            continue
        if not action.option_strings:
            if flag is not None or entry.get("optional"):
                problems.append(f"{dest}: positional in the parser, not in the descriptor")
        elif flag not in action.option_strings or "_" in flag:
            problems.append(f"{dest}: descriptor flag {flag!r}, parser spellings {action.option_strings}")
        if (entry["type"] == "Flag") != isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            problems.append(f"{dest}: type {entry['type']} but the parser action is {type(action).__name__}")
        if entry.get("list", False) != (action.nargs in ("+", "*")):
            problems.append(f"{dest}: list={entry.get('list', False)} but nargs={action.nargs!r}")
        if entry.get("value-choices") != (list(action.choices) if action.choices is not None else None):
            problems.append(f"{dest}: choices {entry.get('value-choices')} vs {action.choices}")
        parser_default = None if action.default in (None, [], argparse.SUPPRESS) else action.default
        if entry.get("default-value") != parser_default:
            problems.append(f"{dest}: default {entry.get('default-value')!r} vs the parser's {action.default!r}")
        if entry["type"] != "Flag":
            problems += _type_differences(action, entry, tmp_path)
    return problems


def test_parser_and_descriptor_agree_both_ways(descriptor: dict, tmp_path: Path) -> None:
    assert differences(build_parser(), descriptor, tmp_path) == []


def test_the_comparison_catches_drift(descriptor: dict, tmp_path: Path) -> None:
    parser = build_parser()
    parser.add_argument("--new-option", type=int, default=3)
    assert differences(parser, descriptor, tmp_path) == ["new_option: in the parser, not in the descriptor"]

    drifted = json.loads(json.dumps(descriptor))
    seed = next(entry for entry in drifted["inputs"] if entry["id"] == "seed")
    seed.update({"default-value": 7, "command-line-flag": "--random_seed"})
    drifted["inputs"].append({"id": "ghost", "name": "Ghost", "type": "String", "value-key": "[GHOST]"})
    found = differences(build_parser(), drifted, tmp_path)
    assert "ghost: in the descriptor, not in the parser" in found
    assert any(line.startswith("seed: default 7") for line in found)
    assert any(line.startswith("seed: descriptor flag '--random_seed'") for line in found)


def test_file_matches_the_generator(descriptor: dict) -> None:
    make_boutiques = _load_script("make_boutiques")
    expected = json.loads(make_boutiques.render(make_boutiques.build_descriptor(build_parser())))
    assert descriptor == expected, "boutiques.json is out of date: run python scripts/make_boutiques.py"


def test_version_image_and_command_line(descriptor: dict) -> None:
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"] == {"type": "docker", "image": f"bids_rim:{__version__}"}
    value_keys = [entry["value-key"] for entry in descriptor["inputs"]]
    assert descriptor["command-line"].split() == ["bids_rim", *value_keys]
    assert value_keys[:3] == ["[BIDS_DIR]", "[OUTPUT_DIR]", "[ANALYSIS_LEVEL]"]


def test_error_codes_name_every_code_the_command_returns(descriptor: dict) -> None:
    from bids_rim.cli import exit_codes

    described = {entry["code"]: entry["description"] for entry in descriptor["error-codes"]}
    named = {value for name, value in vars(exit_codes).items() if name.startswith("EXIT_")}
    assert named <= set(described), f"codes without a description: {sorted(named - set(described))}"
    assert described[1].startswith("one or more participants failed") and "malformed" in described[2]
    assert 0 not in described


def test_bosh_validate() -> None:
    completed = subprocess.run([BOSH, "validate", str(DESCRIPTOR)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.strip() == "OK"


def test_bosh_simulate_prints_a_command_line_the_parser_reads_back(tmp_path: Path) -> None:
    bids_dir, masks = tmp_path / "bids", tmp_path / "masks"
    bids_dir.mkdir()
    masks.mkdir()
    invocation = {
        "bids_dir": str(bids_dir),
        "output_dir": str(tmp_path / "out"),
        "analysis_level": "participant",
        "participant_label": ["001", "sub-002"],
        "derivatives": [str(masks)],
        "skip_bids_validation": True,
        "patch_spacing": 1.5,
        "nprocs": 4,
        "mem": "16GB",
        "verbose_count": "-vv",
    }
    invocation_path = tmp_path / "invocation.json"
    invocation_path.write_text(json.dumps(invocation))
    completed = subprocess.run([BOSH, "exec", "simulate", str(DESCRIPTOR), "-i", str(invocation_path)],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    command = completed.stdout.split("Generated Command:", 1)[1].strip()
    assert command.startswith(f"bids_rim {bids_dir} {tmp_path / 'out'} participant --participant-label 001 sub-002 ")
    assert f"--derivatives {masks} --skip-bids-validation " in command
    assert " --nprocs 4 --mem 16GB " in command and command.endswith(" -vv")

    parsed = build_parser().parse_args(shlex.split(command)[1:])
    defaults = build_parser().parse_args([str(bids_dir), str(tmp_path / "out"), "participant"])
    assert parsed.participant_label == ["001", "002"]
    assert parsed.derivatives == [masks]
    assert (parsed.skip_bids_validation, parsed.nprocs, parsed.mem, parsed.verbose_count) == (True, 4, 16000, 2)
    assert parsed.patch_spacing == 1.5
    unchanged = set(vars(defaults)) - {"participant_label", "derivatives", "skip_bids_validation", "patch_spacing",
                                       "nprocs", "mem", "verbose_count"}
    assert {key: getattr(parsed, key) for key in unchanged} == {key: getattr(defaults, key) for key in unchanged}
