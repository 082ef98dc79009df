"""The container recipes, checked statically (no Docker engine or Apptainer runs here).

The Dockerfile is linted with hadolint and read instruction by instruction: it must install the
package as the README does, put the templates and the bundled model inside, and run as a
non-root user with ``bids_rim`` as entrypoint. The Apptainer definition is parsed with spython.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_rim import __version__

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEFINITION = ROOT / "singularity" / "bids_rim.def"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM
    keyword: str
    arguments: str


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped."""
    instructions, stage, pending = [], -1, ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        keyword = keyword.upper()
        stage += keyword == "FROM"
        instructions.append(Instruction(stage, keyword, " ".join(arguments.split())))
        pending = ""
    return instructions


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return read_dockerfile()


def _final(instructions: list[Instruction]) -> list[Instruction]:
    last = instructions[-1].stage
    return [item for item in instructions if item.stage == last]


def _index(instructions: list[Instruction], keyword: str, pattern: str) -> int:
    """Position of the one instruction of ``keyword`` whose arguments match ``pattern``."""
    found = [i for i, item in enumerate(instructions) if item.keyword == keyword and re.search(pattern, item.arguments)]
    assert len(found) == 1, f"expected one {keyword} matching {pattern!r}, found {len(found)}"
    return found[0]


# -- lint ---------------------------------------------------------------------------------------

def test_hadolint_passes_with_no_configured_ignores(tmp_path: Path) -> None:
    empty_config = tmp_path / "hadolint.yaml"
    empty_config.write_text("{}\n")
    hadolint = str(Path(sys.executable).with_name("hadolint"))
    completed = subprocess.run([hadolint, "--config", str(empty_config), "--failure-threshold", "style",
                                "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert not (ROOT / ".hadolint.yaml").exists() and not (ROOT / ".hadolint.yml").exists()


def test_every_inline_ignore_is_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if "hadolint ignore" in line]
    for i in pragmas:
        reason = lines[i - 1].strip() if i > 0 else ""
        assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
            f"Dockerfile line {i + 1}: an ignore needs a comment saying why on the line before")


# -- the image's shape --------------------------------------------------------------------------

def test_multi_stage_slim_python_base(instructions: list[Instruction]) -> None:
    froms = [item.arguments for item in instructions if item.keyword == "FROM"]
    assert len(froms) >= 3
    base_arg = _index(instructions, "ARG", r"^PYTHON_IMAGE=")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", instructions[base_arg].arguments)
    assert froms[0].startswith("${PYTHON_IMAGE} AS ")


def test_final_stage_runs_bids_rim_as_a_non_root_user(instructions: list[Instruction]) -> None:
    final = _final(instructions)
    assert [item.arguments for item in final if item.keyword == "ENTRYPOINT"] == ['["bids_rim"]']
    users = [item.arguments for item in final if item.keyword == "USER"]
    assert len(users) == 1 and users[0].split(":")[0] not in ("root", "0")
    created = _index(instructions, "RUN", r"useradd")
    assert f"--uid {users[0].split(':')[0]}" in instructions[created].arguments


def test_oci_labels_name_version_source_and_licence(instructions: list[Instruction]) -> None:
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"',
                             " ".join(item.arguments for item in _final(instructions) if item.keyword == "LABEL")))
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"] == __version__
    assert labels["org.opencontainers.image.source"] == PYPROJECT["project"]["urls"]["Source"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]


def test_slow_steps_come_first_one_layer_each(instructions: list[Instruction]) -> None:
    order = [
        _index(instructions, "RUN", r"useradd"),                                  # system: user, venv
        _index(instructions, "RUN", r"pip install .*torch=="),                    # torch
        _index(instructions, "RUN", r"runtime_requirements\.py .*pip install"),   # other dependencies
        _index(instructions, "RUN", r"fetch_templates\.py"),                      # templates
        _index(instructions, "COPY", r"^bids_rim "),                              # the source tree
        _index(instructions, "RUN", r"pip install --no-deps .*bids_rim-\*\.whl"),  # the package
    ]
    assert order == sorted(order)


def test_templates_fetched_at_build_time_and_never_at_run_time(instructions: list[Instruction]) -> None:
    env = " ".join(item.arguments for item in instructions if item.keyword == "ENV" and item.stage == 0)
    home = re.search(r"TEMPLATEFLOW_HOME=(\S+)", env).group(1)
    assert "TEMPLATEFLOW_AUTOUPDATE=0" in env and "NIPYPE_NO_ET=1" in env
    fetch = instructions[_index(instructions, "RUN", r"fetch_templates\.py")]
    templates_stage = [item for item in instructions if item.stage == fetch.stage][0].arguments.split()[-1]
    copies = [item.arguments for item in _final(instructions) if item.keyword == "COPY"]
    assert f"--from={templates_stage} {home} {home}" in copies
    assert "MNI152NLin2009cAsym" in instructions[_index(instructions, "ARG", r"^TEMPLATE_SPACES=")].arguments


def test_build_stops_without_a_bundled_model(instructions: list[Instruction]) -> None:
    install = instructions[_index(instructions, "RUN", r"pip install --no-deps .*bids_rim-\*\.whl")].arguments
    assert "bundled_model_path" in install and "is_file()" in install and "pip check" in install
    assert "for o in BUNDLED_MODELS" in install  # every bundled model, one per --lesion-outline
    assert "data/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["bids_rim"]


# -- the same installation as the README ---------------------------------------------------------

def _readme_pip_arguments() -> list[str]:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "pip install" in line]
    assert lines, "README.md has no pip install line"
    after = shlex.split(lines[0].split("pip install", 1)[1])
    return after[: after.index("&&")] if "&&" in after else after


def test_dockerfile_installs_the_package_as_the_readme_does(instructions: list[Instruction]) -> None:
    readme = _readme_pip_arguments()
    readme_torch = [arg for arg in readme if arg.startswith("torch==")]
    assert len(readme_torch) == 1
    assert any(re.fullmatch(r"\.(\[[\w,]+\])?", arg) for arg in readme), "the README installs the package itself"

    torch_version = instructions[_index(instructions, "ARG", r"^TORCH_VERSION=")].arguments.split("=", 1)[1]
    assert f"torch=={torch_version}" == readme_torch[0]
    torch_install = instructions[_index(instructions, "RUN", r"pip install .*torch==")].arguments
    assert '"torch==${TORCH_VERSION}"' in torch_install
    variant = instructions[_index(instructions, "ARG", r"^TORCH_VARIANT=")].arguments
    assert variant == "TORCH_VARIANT=cpu" and "download.pytorch.org/whl/${TORCH_VARIANT}" in torch_install

    # The package is the project itself, built from pyproject.toml and the bids_rim tree.
    wheel = instructions[_index(instructions, "RUN", r"pip wheel --no-deps")]
    source_dir = wheel.arguments.split()[-1]
    wheel_copies = [item.arguments for item in instructions if item.stage == wheel.stage and item.keyword == "COPY"]
    assert f"pyproject.toml README.md {source_dir}/" in wheel_copies
    assert f"bids_rim {source_dir}/bids_rim" in wheel_copies


def test_runtime_requirements_are_the_projects_plus_the_validator() -> None:
    from bids_rim.bidsio.validator import VALIDATOR

    requirements = _script("runtime_requirements").runtime_requirements(ROOT / "pyproject.toml")
    assert set(PYPROJECT["project"]["dependencies"]) <= set(requirements)
    assert any(line.startswith(VALIDATOR) for line in requirements)
    assert len(requirements) == len({re.split(r"[<>=!~ ;\[]", line)[0].lower() for line in requirements})


# -- what the build context holds ---------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent folder decides."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for rule in rules:
        negated = rule.startswith("!")
        regex = _ignore_regex(rule.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = negated
    return included


def test_build_context_holds_what_copy_needs_and_nothing_heavy(instructions: list[Instruction]) -> None:
    copied = [source for item in instructions if item.keyword == "COPY" and "--from=" not in item.arguments
              for source in item.arguments.split()[:-1]]
    for source in copied:
        assert in_build_context(source + ("/__init__.py" if (ROOT / source).is_dir() else "")), source
    assert in_build_context("bids_rim/data/bids_rim_default_model.pt")
    assert in_build_context("bids_rim/data/bids_rim_refined_outline_model.pt")
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/test_containers.py", "work/bids_rim_wf/x",
                  "bids_rim/__pycache__/run.cpython-311.pyc", "demo/bids/participants.tsv",
                  "bids_rim.egg-info/PKG-INFO", "scripts/train_bundled_model.py", "benchmarks/results/a.tsv"):
        assert not in_build_context(heavy), heavy


# -- Apptainer / Singularity -------------------------------------------------------------------

def test_apptainer_definition_builds_from_the_docker_image(instructions: list[Instruction]) -> None:
    from spython.main.parse.parsers import SingularityParser

    layer = next(iter(SingularityParser(str(DEFINITION)).recipe.values()))
    header = DEFINITION.read_text().splitlines()[:2]
    assert header == ["Bootstrap: docker-daemon", f"From: bids_rim:{__version__}"]
    assert layer.fromHeader == f"bids_rim:{__version__}"
    assert layer.cmd == 'exec bids_rim "$@"'
    docker_env = " ".join(item.arguments for item in instructions if item.keyword == "ENV")
    assert layer.environ  # the definition sets the image's variables (an empty list would check nothing)
    assert "BIDS_RIM_DOCKER=1" in docker_env  # what dataset_description.json's GeneratedBy.Container relies on
    for setting in layer.environ:
        name, value = setting.split("=", 1)
        assert f"{name}={value}" in docker_env, f"{setting} differs from the Docker image's environment"
    assert f"org.opencontainers.image.version {__version__}" in layer.labels


# -- the template pre-fetch script --------------------------------------------------------------

def _fake_templateflow(home: Path, space: str, *, bad: str | None = None) -> None:
    folder = home / f"tpl-{space}"
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text(json.dumps({"Name": "tiny test template"}))
    for resolution, spacing_mm in ((1, 1.0), (2, 2.0)):
        for stem in ("T1w", "desc-brain_mask"):
            name = f"tpl-{space}_res-0{resolution}_{stem}.nii.gz"
            zoom = 3.0 if name == bad else spacing_mm
            nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([zoom, zoom, zoom, 1.0])).to_filename(folder / name)


def _run_fetch(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_templates.py")], capture_output=True,
                          text=True, timeout=120, env={"TEMPLATEFLOW_HOME": str(home), "PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "1", "HOME": str(home)})


def test_fetch_templates_covers_the_apps_queries_and_checks_voxel_size(tmp_path: Path) -> None:
    from bids_rim.preproc.template_space import TEMPLATE_RESOLUTION

    space = _script("fetch_templates").DEFAULT_SPACES[0]
    assert TEMPLATE_RESOLUTION in _script("fetch_templates").RESOLUTIONS_MM
    _fake_templateflow(tmp_path / "good", space)
    completed = _run_fetch(tmp_path / "good")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert len(completed.stdout.split()) == 4

    broken = f"tpl-{space}_res-01_desc-brain_mask.nii.gz"
    _fake_templateflow(tmp_path / "bad", space, bad=broken)
    completed = _run_fetch(tmp_path / "bad")
    assert completed.returncode == 1
    assert broken in completed.stderr and "expected 3D at 1.0 mm" in completed.stderr
