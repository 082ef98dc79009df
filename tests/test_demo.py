"""The README's main command, ``bids_rim-demo``, in its smallest setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bids_rim.cli.demo import build_parser


def test_demo_runs_the_whole_product(tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("bids_rim-demo")
    completed = subprocess.run([str(executable), str(tmp_path / "demo"), "--subjects", "3", "--sites", "2",
                                "--nprocs", "2"], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output_dir = tmp_path / "demo" / "derivatives" / "bids_rim"
    tables = sorted(output_dir.glob("sub-*/ses-*/anat/*_desc-lesions_table.tsv"))
    assert len(tables) == 3
    assert all("rim_probability" in table.read_text().splitlines()[0] for table in tables)
    # Each table's sidecar names the model and the cut-off that made rim_label (probabilities have 4 decimals).
    for table_path in tables:
        parameters = json.loads(table_path.with_suffix(".json").read_text())["ProcessingParameters"]
        assert parameters["Model"] == "bids_rim_default_model.pt" and len(parameters["ModelSHA256"]) == 64
        table = pd.read_csv(table_path, sep="\t")
        clear = (table["rim_probability"] - parameters["DecisionThreshold"]).abs() > 1e-4
        called = (table["rim_probability"] >= parameters["DecisionThreshold"]).astype(int)
        assert clear.any() and (called == table["rim_label"])[clear].all()
    # The methods text names that model; every report carries it.
    citation = (output_dir / "logs" / "CITATION.md").read_text()
    assert parameters["ModelSHA256"] in citation and "## References" in citation
    report = (output_dir / "sub-001.html").read_text()
    assert 'id="methods"' in report and parameters["ModelSHA256"] in report
    assert len(list(output_dir.glob("sub-*.html"))) == 3
    assert (output_dir / "group.html").is_file()
    assert "Group report:" in completed.stdout


def test_demo_refuses_counts_below_one() -> None:
    for option in ("--subjects", "--sites", "--nprocs"):
        with pytest.raises(SystemExit) as raised:
            build_parser().parse_args([option, "0"])
        assert raised.value.code == 2
