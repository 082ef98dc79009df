"""Write ``boutiques.json``, the Boutiques descriptor of bids_rim, from the argparse parser.

    python scripts/make_boutiques.py            # rewrite boutiques.json
    python scripts/make_boutiques.py --check    # exit 1 if boutiques.json is out of date

``bids_rim.cli.parser.build_parser()`` is the single source of truth of the command line: every
option becomes one descriptor input with its flag (the ``-`` spelling), Boutiques type, list-ness,
choices, default and help text; the parser's option groups become descriptor groups and the exit
codes of ``bids_rim.cli.exit_codes`` become error codes. A converter (``type=``) the parser gains that
is not in ``BOUTIQUES_TYPES`` stops the script, so that it is mapped on purpose.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bids_rim import __version__
from bids_rim.cli import exit_codes
from bids_rim.cli.parser import build_parser

DESCRIPTOR_PATH = Path(__file__).resolve().parent.parent / "boutiques.json"
DOCKER_IMAGE = f"bids_rim:{__version__}"

#: Boutiques type (and numeric bounds) for each argparse converter, by the converter's name.
BOUTIQUES_TYPES: dict[str | None, dict[str, object]] = {
    None: {"type": "String"},
    "str": {"type": "String"},
    "_bids_label": {"type": "String"},
    "_device": {"type": "String"},
    "_memory_mb": {"type": "String"},  # "16000", "16000MB" or "16GB": text, not a number
    "_output_dir": {"type": "String"},  # created by the app, so not a File Boutiques must find
    "_existing_dir": {"type": "File"},
    "_existing_file": {"type": "File"},
    "_json_file": {"type": "File"},
    "int": {"type": "Number", "integer": True},
    "positive_int": {"type": "Number", "integer": True, "minimum": 1},
    "_non_negative_int": {"type": "Number", "integer": True, "minimum": 0},
    "_fold_count": {"type": "Number", "integer": True, "minimum": 2},
    "float": {"type": "Number"},
    "_positive_float": {"type": "Number", "minimum": 0, "exclusive-minimum": True},
}

#: How many ``-v`` a count option may be given as (-v, -vv; more adds nothing).
MAX_COUNT = 2


SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)  # noqa: SLF001 - not processing inputs


def dash_flag(action: argparse.Action) -> str:
    """The option's first long name in its ``-`` spelling (``--work-dir``, not ``-w``/``--work_dir``)."""
    long_names = [name for name in action.option_strings if name.startswith("--") and "_" not in name]
    return long_names[0] if long_names else action.option_strings[0]


#: Words of argparse destinations spelled out in the descriptor's human-readable input names.
READABLE_WORDS = {"bids": "BIDS", "dir": "directory", "omp": "OMP", "mem": "memory", "nprocs": "processes"}


def readable_name(dest: str) -> str:
    """``bids_dir`` -> ``BIDS directory``: the input's name as a form would show it."""
    words = [READABLE_WORDS.get(word, word) for word in dest.split("_")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


def converter_name(action: argparse.Action) -> str | None:
    return None if action.type is None else getattr(action.type, "__name__", repr(action.type))


def is_count(action: argparse.Action) -> bool:
    return isinstance(action, argparse._CountAction)  # noqa: SLF001 - argparse names its actions privately


def is_flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction)  # noqa: SLF001


def input_from_action(action: argparse.Action) -> dict[str, object]:
    """One Boutiques input for one argparse argument."""
    entry: dict[str, object] = {
        "id": action.dest,
        "name": readable_name(action.dest),
        "description": action.help or "",
        "value-key": f"[{action.dest.upper()}]",
        "optional": bool(action.option_strings) and not action.required,
    }
    if is_count(action):
        entry["type"] = "String"
        entry["value-choices"] = ["-" + "v" * times for times in range(1, MAX_COUNT + 1)]
        return entry
    if is_flag(action):
        entry.update({"type": "Flag", "command-line-flag": dash_flag(action), "default-value": False})
        return entry
    name = converter_name(action)
    if name not in BOUTIQUES_TYPES:
        raise ValueError(f"option {action.dest}: converter {name!r} has no Boutiques type; add it to BOUTIQUES_TYPES")
    entry.update(BOUTIQUES_TYPES[name])
    if action.option_strings:
        entry["command-line-flag"] = dash_flag(action)
    if action.nargs in ("+", "*"):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    if action.choices is not None:
        entry["value-choices"] = list(action.choices)
    if action.default not in (None, [], argparse.SUPPRESS):
        entry["default-value"] = action.default
    return entry


def group_id(title: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", title.lower()).strip("_")


def build_descriptor(parser: argparse.ArgumentParser) -> dict[str, object]:
    """The Boutiques descriptor (schema 0.5) of ``parser``."""
    actions = [action for action in parser._actions if not isinstance(action, SKIPPED_ACTIONS)]  # noqa: SLF001
    inputs = [input_from_action(action) for action in actions]
    groups = []
    for group in parser._action_groups:  # noqa: SLF001 - argparse keeps its groups privately
        members = [action.dest for action in group._group_actions if action in actions]  # noqa: SLF001
        if not members:
            continue
        title = "BIDS App arguments" if group.title == "positional arguments" else group.title
        groups.append({"id": group_id(title), "name": title, "members": members})
    return {
        "name": "bids_rim",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": (
            f"{parser.description} Options that carry a default-value here are always passed by "
            "Boutiques, so they override values of the same option in --config-file."
        ),
        "author": "bids_rim developers",
        "url": "https://github.com/bids-rim/bids_rim",
        "command-line": " ".join(["bids_rim", *(str(entry["value-key"]) for entry in inputs)]),
        "container-image": {"type": "docker", "image": DOCKER_IMAGE},
        "inputs": inputs,
        "groups": groups,
        "output-files": [
            {
                "id": "output_dataset",
                "name": "BIDS derivatives",
                "description": "the output directory, a BIDS derivative dataset",
                "path-template": "[OUTPUT_DIR]",
            }
        ],
        "error-codes": [{"code": code, "description": text}
                        for code, text in exit_codes.all_descriptions().items()],
        "tags": {"domain": ["neuroinformatics", "mri", "bids", "multiple-sclerosis", "qsm"]},
        "custom": {
            "apptainer": (
                f"build a SIF from the Docker image {DOCKER_IMAGE} with singularity/bids_rim.def, then "
                f"bosh exec launch --imagepath bids_rim-{__version__}.sif boutiques.json invocation.json"
            )
        },
    }


def render(descriptor: dict[str, object]) -> str:
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    options.add_argument("--output", type=Path, default=DESCRIPTOR_PATH)
    args = options.parse_args(argv)
    text = render(build_descriptor(build_parser()))
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output}: out of date; run python scripts/make_boutiques.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
