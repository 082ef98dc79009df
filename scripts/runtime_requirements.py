"""Print the requirements bids_rim needs at run time, one per line, from pyproject.toml.

    python scripts/runtime_requirements.py pyproject.toml > requirements.txt

The Dockerfile installs these in their own layer before the package, so that changing the
code does not reinstall the dependencies. They are the project's ``dependencies`` plus the
tools the app calls at run time that pyproject keeps among the ``test`` extras (the official
BIDS validator, which the participant level runs unless ``--skip-bids-validation``).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

#: Distributions the app runs at run time although pyproject lists them as test extras.
RUNTIME_TOOLS_FROM_EXTRAS = ("bids-validator-deno",)


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (``Foo_Bar>=1`` -> ``foo-bar``)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if name is None:
        raise ValueError(f"{requirement!r}: not a PEP 508 requirement")
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def runtime_requirements(pyproject: Path) -> list[str]:
    """``project.dependencies`` plus the run-time tools found among the optional dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    present = {requirement_name(item) for item in requirements}
    extras = [item for group in project.get("optional-dependencies", {}).values() for item in group]
    for tool in RUNTIME_TOOLS_FROM_EXTRAS:
        if tool in present:
            continue
        matches = [item for item in extras if requirement_name(item) == tool]
        if not matches:
            raise ValueError(f"{pyproject}: {tool} is needed at run time but is listed nowhere")
        requirements.append(matches[0])
    return requirements


if __name__ == "__main__":
    print("\n".join(runtime_requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
