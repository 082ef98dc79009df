"""Run the official BIDS validator (``bids-validator-deno``) and summarise what it found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

VALIDATOR = "bids-validator-deno"


@dataclass(frozen=True)
class ValidationIssue:
    """One issue the validator reported."""

    severity: str  # "error" | "warning"
    code: str
    location: str

    def __str__(self) -> str:
        return f"[{self.severity.upper()}] {self.code} {self.location}"


@dataclass(frozen=True)
class ValidationResult:
    """Every issue of one validator run."""

    issues: tuple[ValidationIssue, ...]

    @property
    def errors(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [issue for issue in self.issues if issue.severity == "warning"]


def find_validator() -> str | None:
    """The validator's executable: beside this Python first (a venv), then on PATH."""
    beside_python = Path(sys.executable).with_name(VALIDATOR)
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which(VALIDATOR)


def validate_dataset(dataset: Path, *, timeout_s: float = 600) -> ValidationResult:
    """Validate a raw or derivative dataset; raise RuntimeError if the validator cannot run."""
    executable = find_validator()
    if executable is None:
        raise RuntimeError(
            f"{VALIDATOR} is not installed (pip install bids-validator-deno), "
            "or pass --skip-bids-validation"
        )
    completed = subprocess.run(
        [executable, "--format", "json", str(dataset)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{VALIDATOR} failed on {dataset}: {detail[0]}") from error
    return ValidationResult(
        tuple(
            ValidationIssue(item.get("severity", "error"), item.get("code", "?"), item.get("location", ""))
            for item in report.get("issues", {}).get("issues", [])
        )
    )
