"""The classification benchmark's --quick mode runs end to end, so that the benchmark code never rots.

It runs in a subprocess (as a user would) on the tiny cohort, into a temporary folder, with two
worker processes (the path the paper-sized run takes on many cores), and checks the written
table: every requested method is there with a finite PR AUC in [0, 1] inside its own bootstrap
interval. The numbers themselves are meaningless at this size and are not judged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import load_benchmark_script

REPO = Path(__file__).resolve().parents[1]
QUICK_METHODS = ("asym", "radiomics", "readout_logistic", "oracle")  # the slow ablations are left to the real run


def test_quick_benchmark_writes_every_method(tmp_path: Path) -> None:
    out = tmp_path / "results"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "classification.py"), "--quick", "--threads", "1", "--jobs", "2",
         "--methods", ",".join(QUICK_METHODS), "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]

    table = pd.read_csv(out / "classification.tsv", sep="\t")
    assert set(table["method"]) == set(QUICK_METHODS)
    pr_auc = table[table["metric"] == "pr_auc"].set_index("method")
    assert set(pr_auc.index) == set(QUICK_METHODS)
    for method, row in pr_auc.iterrows():
        values = row[["ci_low", "estimate", "ci_high"]].to_numpy(dtype=float)
        assert np.isfinite(values).all(), f"{method}: PR AUC or its interval is not finite: {values}"
        assert ((values >= 0) & (values <= 1)).all(), f"{method}: PR AUC outside [0, 1]: {values}"
        assert values[0] <= values[1] <= values[2], f"{method}: estimate outside its interval: {values}"

    page = (out / "classification.md").read_text()
    assert "QUICK" in page and "TRUE class" in page and "rater's annotations" in page
    assert "| participant level |" in page and "| training |" in page and "Not finished" not in page
    for method in QUICK_METHODS:
        assert f"| {method} |" in page
    assert (out / "classification_pr.png").stat().st_size > 0 and (out / "classification_roc.png").stat().st_size > 0
    # The participant level records the CPU and numeric libraries that made it; the page names this run's.
    made_with = json.loads((tmp_path / "work" / "participant_level.json").read_text())["environment"]
    assert made_with["antspyx"] == version("antspyx") and made_with["numpy"] == version("numpy") and made_with["cpu"]
    machine = next(line for line in page.splitlines() if line.startswith("- Machine:"))
    assert machine.startswith(f"- Machine: {made_with['cpu']};")
    assert f"antspyx {version('antspyx')}" in machine and f"scikit-learn {version('scikit-learn')}" in machine
    assert "another CPU or with other libraries" not in page  # made by this very run
    predictions = pd.read_csv(out / "classification_predictions.tsv", sep="\t")
    # the same lesions are scored by every method (one split, one evaluation set)
    lesion_sets = [set(zip(part["participant_id"], part["lesion_id"])) for _, part in predictions.groupby("method")]
    assert all(s == lesion_sets[0] for s in lesion_sets)

    # The error analysis of that run puts every scored lesion in exactly one subgroup of its class.
    analysed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "error_analysis.py"), str(out), "--work", str(tmp_path / "work"),
         "--bootstrap", "20", "--outlines", "--patch-spacing", "2", "--rank-shift", "readout_logistic,asym"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    analysis = (out / "error_analysis.md").read_text()
    one_method = predictions[predictions["method"] == "oracle"]
    bins = [int(n) for n in re.findall(r"CNR [^(|]*\((\d+) rim\+\)", analysis.split("Share called")[0])]
    mimics = [int(n) for n in re.findall(r"\| [a-z_]+ \((\d+) rim−\)",
                                         analysis.split("## Truly rim−")[1].split("Share")[0])]
    assert len(bins) == 4 and sum(bins) == int(one_method["true_label"].sum())
    assert len(mimics) == 4 and sum(mimics) == int((one_method["true_label"] == 0).sum())
    # --outlines rebuilt each patch's grid (its own check) and the pipeline-mask regression reproduced
    # the run's readout_logistic (checked too, else it exits non-zero); the page compares the two.
    assert "readout_logistic on the true outlines" in analysis and "against the pipeline's masks: true" in analysis
    assert "readout_logistic on three outlines" in analysis
    # Every scored lesion has a true class and a rater label, so it falls in exactly one rank-shift group.
    shift_rows = re.findall(r"^\| true rim[+−][^|]* \| (\d+) \|", analysis, re.MULTILINE)
    assert shift_rows and sum(int(n) for n in shift_rows) == len(one_method)
    statistics = pd.read_csv(out / "error_analysis.tsv", sep="\t", na_values="n/a")
    assert set(statistics["method"]) == set(QUICK_METHODS)
    finite = statistics.dropna(subset=["estimate"])
    assert ((finite["estimate"] >= 0) & (finite["estimate"] <= 1)).all()

    # The ranking by lesion volume: every scored lesion in one third, every method in every table.
    by_volume = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "volume_analysis.py"), str(out), "--work", str(tmp_path / "work"),
         "--bootstrap", "20"], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert by_volume.returncode == 0, by_volume.stderr[-3000:]
    thirds = re.findall(r"^\| (?:smallest|middle|largest) third \| [^|]+ \| (\d+) \| (\d+) \|",
                        (out / "volume_analysis.md").read_text(), re.MULTILINE)
    assert len(thirds) == 3 and sum(int(n) for n, _ in thirds) == len(one_method)
    assert sum(int(rim) for _, rim in thirds) == int(one_method["true_label"].sum())
    volume_statistics = pd.read_csv(out / "volume_analysis.tsv", sep="\t")
    assert set(volume_statistics["method"]) == set(QUICK_METHODS)

    # The start of asym's read-out path, step by step; the first step reproduced the run's
    # readout_logistic (checked, else it exits non-zero) and every method of the run follows.
    started = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "readout_start.py"), str(out), "--work", str(tmp_path / "work"),
         "--bootstrap", "20", "--out", str(out / "readout_start.md")],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert started.returncode == 0, started.stderr[-3000:]
    # less the header
    rows = [line for line in (out / "readout_start.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6 + len(QUICK_METHODS) - 1  # six steps; readout_logistic is the first of them
    assert all(re.match(r"\| .+ \| [01]\.\d{3} \|", row) for row in rows)

    # Variants of that regression against diffuse mimics: the reference reproduced (checked, else it
    # exits non-zero), six variants, then the run's other methods.
    varied = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "readout_variants.py"), str(out), "--work", str(tmp_path / "work"),
         "--bootstrap", "20", "--out", str(out / "readout_variants.md")],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert varied.returncode == 0, varied.stderr[-3000:]
    rows = [line for line in (out / "readout_variants.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 7 + len(QUICK_METHODS) - 1
    assert all(re.match(r"\| [^|]+ \| [01]\.\d{3} \|", row) for row in rows)

    # asym's first fold retrained with a look at its test lesions after every epoch: the retrained
    # member reproduces the run's probabilities (checked, else it exits 1), epochs 0 to the last.
    traced = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "finetune_trace.py"), str(out), "--work", str(tmp_path / "work"),
         "--folds", "1", "--out", str(out / "finetune_trace.md")],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=300, check=False)
    assert traced.returncode == 0, traced.stderr[-3000:]
    trace = (out / "finetune_trace.md").read_text()
    assert "(reproduced)" in trace and (out / "finetune_trace.png").stat().st_size > 0
    epochs = [int(n) for n in re.findall(r"^\| (\d+)(?: \(kept\))? \|", trace, re.MULTILINE)]
    assert epochs[0] == 0 and epochs == list(range(len(epochs))) and len(epochs) >= 2

    # The same fold scored with more test-time views: its one-view probabilities reproduce the run's
    # (checked, else it exits 1), and every view set gets a row with a PR AUC.
    viewed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tta_views.py"), str(out), "--work", str(tmp_path / "work"),
         "--folds", "1", "--bootstrap", "20", "--out", str(out / "tta_views.md")],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=300, check=False)
    assert viewed.returncode == 0, viewed.stderr[-3000:]
    views_page = (out / "tta_views.md").read_text()
    assert "(reproduced)" in views_page
    view_rows = re.findall(r"^\| [^|]+ \| (\d+) \| ([01]\.\d{3}) \|", views_page, re.MULTILINE)
    assert [int(number) for number, _ in view_rows] == [1, 2, 4, 16]
    scored = pd.read_csv(out / "tta_views.tsv", sep="\t")
    one_view = scored[scored["method"] == scored["method"].iloc[0]].merge(
        pd.read_csv(out / "classification_predictions.tsv", sep="\t").query("method == 'asym' and fold == 1"),
        on=["participant_id", "lesion_id"])
    np.testing.assert_allclose(one_view["rim_probability_x"], one_view["rim_probability_y"], atol=1e-4)


def test_a_reused_participant_level_made_on_another_cpu_or_libraries_is_named() -> None:
    benchmark = load_benchmark_script("classification")
    now = {"cpu": "AMD EPYC", "antspyx": "0.6.1", "numpy": "2.2.0", "scipy": "1.15.0"}
    assert benchmark.participant_level_provenance(dict(now), now) == ""
    changed = benchmark.participant_level_provenance({**now, "cpu": "Intel Xeon", "numpy": "2.1.3"}, now)
    assert changed == ("The participant level was made on another CPU or with other libraries than this run's: "
                       "cpu Intel Xeon (now AMD EPYC), numpy 2.1.3 (now 2.2.0).")
    assert "did not record" in benchmark.participant_level_provenance(None, now)
    older = {name: value for name, value in now.items() if name != "scipy"}
    assert "scipy not recorded (now 1.15.0)" in benchmark.participant_level_provenance(older, now)


def test_observer_is_scored_out_of_fold_once_per_lesion() -> None:
    benchmark = load_benchmark_script("classification")
    rng = np.random.default_rng(0)
    patients = np.repeat([f"sub-{i}" for i in range(6)], 10)
    labels = (rng.random(60) < 0.3).astype(float)
    scores = 3 * labels + rng.normal(size=60)
    evaluable = np.ones(60, bool)
    evaluable[:5] = False  # lesions without a true match are never scored
    meta = pd.DataFrame({"participant_id": patients})
    folds = [["sub-0", "sub-2", "sub-4"], ["sub-1", "sub-3", "sub-5"]]
    scored = benchmark.evaluate_observer(scores, labels, meta, folds, evaluable)
    assert sorted(scored["row"]) == list(range(5, 60))
    fold_of = {p: i + 1 for i, fold in enumerate(folds) for p in fold}
    assert (scored["fold"].to_numpy() == [fold_of[p] for p in patients[scored["row"]]]).all()
    for _, part in scored.groupby("fold"):  # a monotone calibration keeps the observer's ranking
        order = np.argsort(scores[part["row"]])
        assert np.all(np.diff(part["rim_probability"].to_numpy()[order]) >= 0)


def test_readout_reference_learns_only_from_training_patients_rater_labels() -> None:
    """readout_logistic: rim+ toy lesions rank high, and a fold's predictions ignore its own labels."""
    from sklearn.metrics import roc_auc_score

    from bids_rim.training.toy import make_toy_patches

    benchmark = load_benchmark_script("classification")
    patches, meta = make_toy_patches(8, 10, patch_size=16, seed=1)
    evaluable = np.ones(len(meta), bool)
    evaluable[::7] = False
    folds = [[f"sub-{i:03d}" for i in range(1, 9, 2)], [f"sub-{i:03d}" for i in range(2, 9, 2)]]
    scored = benchmark.evaluate_readout_logistic(patches, meta, folds, evaluable)
    assert sorted(scored["row"]) == list(np.flatnonzero(evaluable))
    labels = meta["label"].to_numpy()
    assert roc_auc_score(labels[scored["row"]], scored["rim_probability"]) > 0.8

    in_first_fold = meta["participant_id"].isin(folds[0]).to_numpy()
    relabelled = meta.assign(label=np.where(in_first_fold, 1 - labels, labels))  # test patients' labels flipped
    again = benchmark.evaluate_readout_logistic(patches, relabelled, folds, evaluable)
    first = scored["fold"] == 1
    np.testing.assert_allclose(again.loc[first, "rim_probability"], scored.loc[first, "rim_probability"])
    # the second fold trains on those flipped labels, so its predictions must change
    assert not np.allclose(again.loc[~first, "rim_probability"], scored.loc[~first, "rim_probability"])
    three_outlines = benchmark.evaluate_readout_logistic(patches, meta, folds, evaluable, outlines=3)
    assert sorted(three_outlines["row"]) == sorted(scored["row"])
    assert roc_auc_score(labels[three_outlines["row"]], three_outlines["rim_probability"]) > 0.8


def test_task_order_runs_radiomics_first_then_the_networks_that_really_pretrain() -> None:
    # RimNet and early fusion keep TrainConfig's pretrain_epochs but have no encoders to pretrain:
    # they rank with asym_no_pretrain, not with asym.
    from bids_rim.training.config import TrainConfig

    benchmark = load_benchmark_script("classification")
    configs = {"early_fusion": TrainConfig(arch="early_fusion"), "rimnet": TrainConfig(arch="rimnet"),
               "asym_no_pretrain": TrainConfig(pretrain_epochs=0), "radiomics": TrainConfig(arch="radiomics"),
               "asym": TrainConfig(), "asym_no_flair": TrainConfig(arch="qsm_only")}
    tasks = [benchmark.FoldTask(method, fold, ("sub-001",), ()) for method in configs for fold in (2, 1)]
    order = [(task.method, task.fold) for task in benchmark.task_order(tasks, configs)]
    assert order == [("radiomics", 1), ("radiomics", 2), ("asym", 1), ("asym", 2), ("asym_no_flair", 1),
                     ("asym_no_flair", 2), ("asym_no_pretrain", 1), ("asym_no_pretrain", 2), ("early_fusion", 1),
                     ("early_fusion", 2), ("rimnet", 1), ("rimnet", 2)]


def test_label_one_in_k_withholds_training_labels_only() -> None:
    """--label-one-in: each fold keeps one in K of its training patients' labels; test patients and the
    kept patients are untouched, and the read-out reference ignores the withheld labels."""
    from bids_rim.training.toy import make_toy_patches

    benchmark = load_benchmark_script("classification")
    patches, meta = make_toy_patches(12, 8, patch_size=16, seed=2)  # sites alternate with the patient number
    folds = [[f"sub-{i:03d}" for i in (1, 2, 5, 6, 9, 10)], [f"sub-{i:03d}" for i in (3, 4, 7, 8, 11, 12)]]
    assert benchmark.withheld_label_patients(meta, folds, 1, seed=5) == [[], []]
    withheld = benchmark.withheld_label_patients(meta, folds, 3, seed=5)
    assert withheld == benchmark.withheld_label_patients(meta, folds, 3, seed=5)  # seeded
    for test_patients, held in zip(folds, withheld):
        training = set(meta["participant_id"]) - set(test_patients)
        assert set(held) < training and len(training) - len(held) == 2  # 6 training patients, one in 3 kept
        kept = meta[meta["participant_id"].isin(training - set(held))]
        assert (kept["label"] == 1).any() and kept["site"].nunique() == 2  # a balanced labelled subset
    hidden = benchmark.without_labels_of(meta, withheld[0])
    assert hidden["label"].isna().to_numpy().tolist() == meta["participant_id"].isin(withheld[0]).tolist()

    evaluable = np.ones(len(meta), bool)
    scored = benchmark.evaluate_readout_logistic(patches, meta, folds, evaluable, withheld)
    labels = meta["label"].to_numpy()

    def flip(patients: list[str]) -> pd.DataFrame:
        return meta.assign(label=np.where(meta["participant_id"].isin(patients), 1 - labels, labels))

    unchanged = benchmark.evaluate_readout_logistic(patches, flip(withheld[0] + withheld[1]), folds, evaluable,
                                                    withheld)
    np.testing.assert_allclose(unchanged["rim_probability"], scored["rim_probability"])
    kept_in_first = sorted(set(folds[1]) - set(withheld[0]))  # fold 1 trains on fold 2's test patients
    changed = benchmark.evaluate_readout_logistic(patches, flip(kept_in_first), folds, evaluable, withheld)
    first = scored["fold"] == 1
    assert not np.allclose(changed.loc[first, "rim_probability"], scored.loc[first, "rim_probability"])


def test_training_data_is_replaced_atomically_under_a_reader(tmp_path: Path) -> None:
    """A second run on the same work folder rewrites patches.npy while the first run's workers
    have it memory-mapped: they must keep reading whole, unchanged patches."""
    from bids_rim.training.toy import make_toy_patches

    benchmark = load_benchmark_script("classification")
    patches, meta = make_toy_patches(4, 4, patch_size=8, seed=5)
    folder = benchmark.save_training_data(patches, meta, np.ones(len(meta), bool), tmp_path)
    reading = np.load(folder / "patches.npy", mmap_mode="r")
    benchmark.save_training_data(patches + 1.0, meta, np.zeros(len(meta), bool), tmp_path)
    np.testing.assert_array_equal(reading, patches)
    np.testing.assert_array_equal(np.load(folder / "patches.npy"), patches + 1.0)
    assert not pd.read_pickle(folder / "meta.pkl")["evaluable"].any()
    assert sorted(p.name for p in folder.iterdir()) == ["meta.pkl", "patches.npy"]


def test_fold_task_pretrains_on_withheld_patients_without_their_labels(tmp_path: Path, monkeypatch) -> None:
    """A task with withheld patients hands train_member their lesions (for pretraining) without labels."""
    import bids_rim.training.crossval as crossval
    from bids_rim.training.toy import make_toy_patches

    benchmark = load_benchmark_script("classification")
    patches, meta = make_toy_patches(6, 4, patch_size=16, seed=4)
    folder = benchmark.save_training_data(patches, meta, np.ones(len(meta), bool), tmp_path)
    seen = {}

    class Captured(Exception):
        pass

    def capture(patches, meta, train_patients, *args, **kwargs):
        seen.update(meta=meta, train_patients=train_patients)
        raise Captured

    monkeypatch.setattr(crossval, "train_member", capture)
    task = benchmark.FoldTask("asym", 1, ("sub-001", "sub-002"), ("sub-003", "sub-005"))
    settings = benchmark.BenchmarkSettings(6, 2, "small", 1, 2, 16, 2.0, ("asym",), True, 20)
    with pytest.raises(Captured):
        benchmark.run_fold_task(task, benchmark.method_config("asym", settings), folder, "cpu", 1)
    assert seen["train_patients"] == ["sub-003", "sub-004", "sub-005", "sub-006"]
    withheld_rows = seen["meta"]["participant_id"].isin(["sub-003", "sub-005"])
    assert seen["meta"].loc[withheld_rows, "label"].isna().all()
    pd.testing.assert_series_equal(seen["meta"].loc[~withheld_rows, "label"], meta.loc[~withheld_rows, "label"])


def _write_run(folder: Path, training_seed: int, predictions: pd.DataFrame, label_one_in: int = 1) -> Path:
    folder.mkdir()
    (folder / "classification.md").write_text(  # the command line also says "seed": the Date line counts
        f"- Command: `python benchmarks/classification.py --seed 2026 --training-seed {training_seed}`\n"
        f"- Date: 2026-12-01 15:00 UTC; seed 2026 (trained methods: training seed {training_seed})"
        + ("" if label_one_in == 1 else f"; rater labels of one in {label_one_in} training patients") + "\n")
    predictions.to_csv(folder / "classification_predictions.tsv", sep="\t", index=False)
    return folder


def test_seed_spread_reports_paired_differences(tmp_path: Path) -> None:
    from sklearn.metrics import average_precision_score

    spread = load_benchmark_script("seed_spread")
    rng = np.random.default_rng(4)
    lesions = pd.DataFrame({"participant_id": np.repeat([f"sub-{i}" for i in range(10)], 8),
                            "lesion_id": np.tile(np.arange(1, 9), 10)})
    lesions["true_label"] = (rng.random(len(lesions)) < 0.3).astype(int)
    folders, expected = [], []
    for seed in (1, 2):
        good = lesions.assign(method="a", rim_probability=lesions["true_label"] + rng.normal(0, 0.8, len(lesions)))
        poor = lesions.assign(method="b", rim_probability=rng.random(len(lesions)))
        expected.append(average_precision_score(good["true_label"], good["rim_probability"])
                        - average_precision_score(poor["true_label"], poor["rim_probability"]))
        folders.append(_write_run(tmp_path / f"s{seed}", seed, pd.concat([good, poor])))
    out = tmp_path / "spread.md"
    assert spread.main([*map(str, folders), "--compare", "a,b", "--bootstrap", "50", "--out", str(out)]) == 0
    text = out.read_text()
    for seed, difference in zip((1, 2), expected):
        assert f"| {seed} | {difference:+.3f} [" in text
    assert f"a is ahead in {sum(d > 0 for d in expected)} of 2 seeds" in text
    with pytest.raises(SystemExit):  # the same run twice is not two parts of one run
        spread.main([str(folders[0]), str(folders[0])])
    # A part with method c (and b again, the same) joins the seed-2 run; a part whose b differs does not.
    added = poor.assign(method="c", rim_probability=good["rim_probability"].to_numpy())
    part = _write_run(tmp_path / "s2_part", 2, pd.concat([poor, added]))
    assert spread.main([str(folders[1]), str(part), "--compare", "a,c", "--bootstrap", "20", "--out", str(out)]) == 0
    assert "| 2 | +0.000 [+0.000, +0.000] |" in out.read_text()
    changed = _write_run(tmp_path / "s2_changed", 2, pd.concat([poor.assign(rim_probability=0.5), added]))
    with pytest.raises(SystemExit):
        spread.main([str(folders[1]), str(changed)])
    fewer_labels = _write_run(tmp_path / "s3_k3", 3, pd.concat([good, poor]), label_one_in=3)
    assert spread.run_seeds(fewer_labels) == (2026, 3, 3)
    with pytest.raises(SystemExit):  # a run trained on a third of the labels is not another seed of the same run
        spread.main([str(folders[0]), str(fewer_labels)])


def test_fold_tasks_reproduce_cross_validate(tmp_path: Path) -> None:
    """A (method, fold) task trained alone gives the numbers sequential cross_validate gives that fold.

    This is what makes the benchmark's numbers independent of how many jobs run the tasks (asym:
    its torch seed, pretraining, inner split and fine-tuning seeds all follow the fold's seed).
    """
    import torch

    from bids_rim.training.config import TrainConfig
    from bids_rim.training.crossval import cross_validate
    from bids_rim.training.toy import make_toy_patches

    benchmark = load_benchmark_script("classification")
    patches, meta = make_toy_patches(8, 6, patch_size=16, seed=3)
    config = TrainConfig(arch="asym", width=4, batch_size=16, pretrain_epochs=1, finetune_epochs=2, patience=2, folds=2,
                         patch_size=16, bootstrap_resamples=20, train_final_model=False)
    torch.set_num_threads(1)
    sequential = cross_validate(patches, meta, config, torch.device("cpu"))
    evaluable = np.ones(len(meta), bool)
    folder = benchmark.save_training_data(patches, meta, evaluable, tmp_path)
    for fold, test_patients in enumerate(sequential.test_participants, start=1):
        task = benchmark.FoldTask("asym", fold, tuple(test_patients))
        alone = benchmark.run_fold_task(task, config, folder, "cpu", 1)["predictions"]
        expected = sequential.predictions[sequential.predictions["fold"] == fold]
        chosen = meta.iloc[alone["row"]]
        assert list(zip(chosen["participant_id"], chosen["lesion_id"])) == list(
            zip(expected["participant_id"], expected["lesion_id"]))
        np.testing.assert_allclose(alone["rim_probability"], expected["rim_probability"], rtol=0, atol=1e-6)
        assert alone["threshold"].iloc[0] == expected["threshold"].iloc[0]


def test_interpretation_says_when_the_goal_is_missed() -> None:
    benchmark = load_benchmark_script("classification")
    rows = [("asym", 0.60, 0.50, 0.70), ("radiomics", 0.62, 0.52, 0.72), ("oracle", 0.90, 0.85, 0.95)]
    table = pd.DataFrame([{"method": m, "metric": "pr_auc", "estimate": e, "ci_low": lo, "ci_high": hi}
                          for m, e, lo, hi in rows]
                         + [{"method": "asym", "metric": "prevalence", "estimate": 0.1, "ci_low": 0.1, "ci_high": 0.1}])
    text = benchmark.interpretation(table)
    assert "best baseline is radiomics" in text and "is NOT met" in text and "0.300 above asym" in text
    # A noise study reports the same differences but judges no goal: its cohort is not the benchmark's.
    studied = benchmark.interpretation(table, noise_study=True)
    assert "noise study" in studied and "best baseline is radiomics" in studied and "0.300 above asym" in studied
    assert "goal" not in studied.replace("goals are not judged", "")


def test_ece_interval_above_its_estimate_is_named() -> None:
    """ECE's small-sample upward bias can put its whole bootstrap interval above the estimate; the page says so."""
    benchmark = load_benchmark_script("classification")
    table = pd.DataFrame({"method": ["oracle", "asym", "asym"], "metric": ["ece", "ece", "pr_auc"],
                          "estimate": [0.010, 0.050, 0.40], "ci_low": [0.013, 0.030, 0.45],
                          "ci_high": [0.047, 0.080, 0.55]})
    assert benchmark.ece_above_interval(table) == ["oracle"]


def test_folds_of_an_incomplete_method_are_kept_apart_and_compared_fold_by_fold() -> None:
    """A method cut by the time budget keeps the folds it finished, outside the pooled table, with
    every method's PR AUC on those same folds beside them."""
    benchmark = load_benchmark_script("classification")

    def fold_result(fold: int, rows: list[int], scores: list[float]) -> dict:
        return {"predictions": pd.DataFrame({"fold": fold, "row": rows, "rim_probability": scores, "threshold": 0.5})}

    finished = {"radiomics": [fold_result(2, [4, 5, 6, 7], [0.1, 0.9, 0.2, 0.3]),
                              fold_result(1, [0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1])],
                "rimnet": [fold_result(1, [3, 0, 1, 2], [0.2, 0.9, 0.1, 0.8])],
                "qsmrimnet": []}
    kept = benchmark.folds_of_incomplete_methods(finished, complete={"radiomics": 12.0})
    assert list(kept) == ["rimnet"]
    assert kept["rimnet"]["row"].tolist() == [0, 1, 2, 3] and set(kept["rimnet"]["fold"]) == {1}

    truth = {0: 1, 1: 0, 2: 1, 3: 0}  # rimnet ranks both rim+ first (PR AUC 1); radiomics ranks them 1st and 3rd
    frames = [kept["rimnet"].assign(method="rimnet"),
              pd.concat([r["predictions"] for r in finished["radiomics"]]).assign(method="radiomics")]
    predictions = pd.concat(frames, ignore_index=True)
    predictions["true_label"] = predictions["row"].map(lambda row: truth.get(row, row % 2))
    table = benchmark.fold_pr_aucs(predictions, [1])
    assert table.loc["rimnet", 1] == pytest.approx(1.0)
    assert table.loc["radiomics", 1] == pytest.approx((1 + 2 / 3) / 2)

    run = benchmark.RunRecord(*[None] * 7, partial_methods=["rimnet"], partial_folds=table,
                              partial_fold_wall_s={"rimnet": {1: 123.4}})
    page = "\n".join(benchmark.partial_section(run))
    assert benchmark.PARTIAL_PREDICTIONS in page and "| fold 1 |" in page
    assert "Training wall time of those folds: rimnet fold 1 123 s." in page
    assert "| rimnet | 1.000 |" in page and "| radiomics | 0.833 |" in page
    assert benchmark.partial_section(benchmark.RunRecord(*[None] * 7)) == []


CUT_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import classification as benchmark
run_every_task = benchmark.run_tasks

def run_until_asym_fold_1(tasks, configs, *arguments):
    # what a --time-budget does when it falls just after asym's first fold (exactly, not by the clock)
    kept = [task for task in tasks if task.method != "asym" or task.fold == 1]
    return run_every_task(kept, configs, *arguments) + [task for task in tasks if task not in kept]

benchmark.run_tasks = run_until_asym_fold_1
sys.exit(benchmark.main(sys.argv[2:]))
"""


def test_a_run_cut_short_keeps_the_finished_folds_of_an_unfinished_method(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "classification_partial_predictions.tsv").write_text("stale\n")  # an earlier run's, to be replaced
    completed = subprocess.run(
        [sys.executable, "-c", CUT_RUN, str(REPO / "benchmarks"), "--quick", "--jobs", "1",
         "--threads", "1", "--time-budget", "3600", "--methods", "radiomics,asym", "--out", str(out),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        cwd=REPO, timeout=600, check=False)
    assert completed.returncode == 3, completed.stderr[-3000:]  # written, but incomplete
    assert set(pd.read_csv(out / "classification.tsv", sep="\t")["method"]) == {"radiomics"}
    kept = pd.read_csv(out / "classification_partial_predictions.tsv", sep="\t")
    assert set(kept["method"]) == {"asym"} and set(kept["fold"]) == {1}
    complete = pd.read_csv(out / "classification_predictions.tsv", sep="\t")
    fold_1 = complete[complete["fold"] == 1]
    assert sorted(zip(kept["participant_id"], kept["lesion_id"])) == sorted(zip(fold_1["participant_id"],
                                                                                fold_1["lesion_id"]))
    page = (out / "classification.md").read_text()
    assert "Not finished" in page and "| fold 1 |" in page
    assert re.search(r"^\| asym \| [01]\.\d{3} \|$", page, re.MULTILINE)
    assert re.search(r"^\| radiomics \| [01]\.\d{3} \|$", page, re.MULTILINE)
    assert re.search(r"^Training wall time of those folds: asym fold 1 \d+ s\.$", page, re.MULTILINE)


def test_error_analysis_splits_the_errors_by_subgroup() -> None:
    """A scorer fooled only by diffuse mimics and blind to faint rims shows exactly that, and nothing else."""
    analysis = load_benchmark_script("error_analysis")
    none, edge_vein, diffuse, _ = range(4)
    # rim+ lesions: two faint (CNR bin 0) and two clear (bin 3); rim− lesions: three plain, one edge vein, two diffuse
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    cnr_bin = [0, 0, 3, 3, *[analysis.NO_GROUP] * 6]
    mimic = [*[analysis.NO_GROUP] * 4, none, none, none, edge_vein, diffuse, diffuse]
    site = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    probabilities = np.array([0.025, 0.035, 0.8, 0.9, 0.01, 0.02, 0.03, 0.04, 0.95, 0.97])
    codes = np.column_stack([cnr_bin, mimic, site])
    result = analysis.subgroup_metrics(labels, probabilities, codes, np.full(10, 0.5), ["site1", "site2"])
    # clear rims outrank the 4 plain and vein lesions, not the 2 diffuse ones: 8 of 12 pairs
    assert result["auc|CNR ≥ 8"] == pytest.approx(8 / 12) and result["called|CNR ≥ 8"] == 1.0
    assert result["auc|CNR < 2"] == pytest.approx(5 / 12) and result["called|CNR < 2"] == 0.0  # 0.025: 2, 0.035: 3
    assert np.isnan(result["auc|CNR 2–4"]) and np.isnan(result["called|CNR 2–4"])  # empty bin
    assert result["auc|none"] == pytest.approx(11 / 12) and result["called|none"] == 0.0  # 0.025 < 0.03 only
    assert result["auc|edge_vein"] == 0.5  # the vein (0.04) outranks both faint rims
    assert result["auc|diffuse"] == 0.0 and result["called|diffuse"] == 1.0
    assert np.isnan(result["auc|calcification"])
    assert 0 < result["pr_auc|site1"] < 1 and 0 < result["pr_auc|site2"] < 1
    # both false positives at 0.5 are the diffuse lesions; rejecting them leaves the ranking
    # 0.9+ 0.8+ 0.04 0.035+ 0.03 0.025+ …: precision 1, 1, 3/4, 4/6 at the four rims
    assert result["fp_share|diffuse"] == 1.0 and result["fp_share|none"] == 0.0
    assert result["pr_auc_rejected|diffuse"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert result["pr_auc_rejected|none"] < result["pr_auc_rejected|diffuse"]
    assert result["pr_auc_rejected|calcification"] == result["pr_auc|all lesions"]  # nothing to reject


def test_volume_analysis_scores_each_third_on_its_own_lesions() -> None:
    """Within each third of lesions by volume: AUCs against every rim− and against diffuse rim−, PR AUC, and
    the oracle's PR AUC minus the method's, on hand-checked rankings."""
    volume = load_benchmark_script("volume_analysis")
    labels = np.array([1, 0, 0] * 3)
    third = np.repeat([0, 1, 2], 3)
    diffuse = np.array([False, True, False, False, False, True, False, True, False])
    oracle = [0.9, 0.1, 0.2] * 3
    method = [0.5, 0.6, 0.1,  # the diffuse lesion outranks the rim, the plain one does not
              0.8, 0.1, 0.2,  # the rim first
              0.3, 0.4, 0.35]  # the rim last
    result = volume.third_metrics(labels, np.column_stack([oracle, method]), third, diffuse, ["oracle", "m"])
    smallest, middle, largest = volume.THIRDS
    assert result[f"m|{smallest}|roc_auc"] == 0.5 and result[f"m|{smallest}|roc_auc_vs_diffuse"] == 0.0
    assert result[f"m|{smallest}|pr_auc"] == 0.5 and result[f"m|{smallest}|oracle_minus"] == 0.5
    assert result[f"m|{middle}|roc_auc"] == result[f"m|{middle}|pr_auc"] == 1.0
    assert result[f"m|{middle}|oracle_minus"] == 0.0
    assert result[f"m|{largest}|roc_auc"] == 0.0 and result[f"m|{largest}|pr_auc"] == pytest.approx(1 / 3)
    assert result[f"m|{largest}|oracle_minus"] == pytest.approx(2 / 3)
    assert all(result[f"oracle|{name}|pr_auc"] == 1.0 for name in volume.THIRDS)
    edges_of = volume.volume_thirds(np.arange(1.0, 10.0))
    assert list(edges_of[0]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_rank_shift_shows_a_method_that_learned_the_raters_false_rims() -> None:
    """Method b ranks the edge veins that the rater called rims above where a ranks them, and
    nothing else moves but the lesions they overtake: the rank-shift table says exactly that."""
    analysis = load_benchmark_script("error_analysis")
    # per patient (one fold): a true rim the rater saw, an edge vein the rater called a rim, two plain rim− lesions
    lesions = pd.DataFrame({"participant_id": np.repeat([f"sub-{i}" for i in range(6)], 4),
                            "lesion_id": np.tile([1, 2, 3, 4], 6), "fold": 1,
                            "true_label": np.tile([1, 0, 0, 0], 6), "rater_label": np.tile([1, 1, 0, 0], 6)})
    truth = lesions[["participant_id", "lesion_id"]].assign(mimic=np.tile(["none", "edge_vein", "none", "none"], 6))
    patient = np.repeat(np.arange(6), 4) / 100  # breaks ties between patients, same order in both methods
    a = lesions.assign(method="a", rim_probability=np.tile([0.9, 0.2, 0.3, 0.1], 6) + patient)
    b = lesions.assign(method="b", rim_probability=np.tile([0.9, 0.5, 0.3, 0.1], 6) + patient)
    shift = analysis.rank_shift(pd.concat([a, b]), truth, "a", "b", n_resamples=50, seed=0).set_index("group")
    vein = "true rim−, rater rim+, edge_vein (rater's false rim)"
    assert list(shift.index) == ["true rim+, rater rim+", vein, "true rim−, rater rim−, none"]
    assert shift["lesions"].tolist() == [6, 6, 12]
    # 24 lesions in the fold: the veins rise from below every 0.3 lesion to above all of them (6 places
    # of 24 = +25 points); the 0.3 lesions fall 6 places, and they are half of the plain group (−12.5).
    assert shift.loc[vein, "shift"] == pytest.approx(25.0)
    assert shift.loc["true rim−, rater rim−, none", "shift"] == pytest.approx(-12.5)
    assert shift.loc["true rim+, rater rim+", "shift"] == 0.0
    assert shift.loc[vein, "ci_low"] <= 25.0 <= shift.loc[vein, "ci_high"]
    lines = analysis.rank_shift_lines(shift.reset_index(), "a", "b")
    assert f"| {vein} | 6 | " in "\n".join(lines) and "+25.0 [" in "\n".join(lines)
    with pytest.raises(ValueError, match="no method c"):
        analysis.rank_shift(pd.concat([a, b]), truth, "a", "c", n_resamples=10, seed=0)


def test_compare_runs_pairs_one_method_across_two_participant_levels(tmp_path: Path) -> None:
    from sklearn.metrics import average_precision_score

    compare = load_benchmark_script("compare_runs")  # it imports its sibling seed_spread, as run from there
    rng = np.random.default_rng(5)
    lesions = pd.DataFrame({"participant_id": np.repeat([f"sub-{i}" for i in range(10)], 8),
                            "lesion_id": np.tile(np.arange(1, 9), 10)})
    lesions["true_label"] = (rng.random(len(lesions)) < 0.3).astype(int)
    lesions["fold"] = lesions["participant_id"].str[-1].astype(int) % 3 + 1
    before = lesions.assign(method="a", rim_probability=rng.random(len(lesions)))
    after = lesions.assign(method="a", rim_probability=lesions["true_label"] + rng.normal(0, 0.8, len(lesions)))
    after.loc[after["participant_id"] == "sub-4", "fold"] = 3  # one patient tested in another fold
    extra = after.iloc[:1].assign(lesion_id=99)  # a lesion only the second run scored
    expected = (average_precision_score(after["true_label"], after["rim_probability"])
                - average_precision_score(before["true_label"], before["rim_probability"]))
    first = _write_run(tmp_path / "given", 2026, before)
    second = _write_run(tmp_path / "refined", 2026, pd.concat([after, extra]))
    out = tmp_path / "compare.md"
    assert compare.main([str(first), str(second), "--methods", "a", "--bootstrap", "50", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"| a | 80 | {average_precision_score(before['true_label'], before['rim_probability']):.3f} |" in text
    assert f"{expected:+.3f} [" in text
    assert "| a | 0 | 1 | 0 | 1 |" in text  # before only, after only, true class differs, patients moved
    with pytest.raises(SystemExit):  # a method one run lacks
        compare.main([str(first), str(second), "--methods", "b"])


def test_noise_study_option_is_checked_recorded_and_never_mixed_with_a_realistic_folder(tmp_path: Path) -> None:
    benchmark = load_benchmark_script("classification")
    assert benchmark.parse_args(["--quick", "--out", str(tmp_path), "--qsm-noise-scale", "0.1"]).qsm_noise_scale == 0.1
    failed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "classification.py"), "--qsm-noise-scale", "0"],
                            capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert failed.returncode == 2 and "--qsm-noise-scale must be > 0" in failed.stderr
    realistic = benchmark.BenchmarkSettings(8, 2, "small", 1, 2, 16, 2.0, ("asym",), True, 20)
    quiet = benchmark.BenchmarkSettings(8, 2, "small", 1, 2, 16, 2.0, ("asym",), True, 20, qsm_noise_scale=0.1)
    work = tmp_path / "work"
    work.mkdir()
    benchmark.check_work_folder(realistic, work)
    with pytest.raises(ValueError, match="choose another --work"):
        benchmark.check_work_folder(quiet, work)
    assert "qsm_noise_scale" not in (work / "benchmark_work.json").read_text()


def test_the_sixteen_test_time_views_are_the_orientations_training_augments_with() -> None:
    """tta_views.py's largest view set: 16 distinct orientations, closed under what training draws
    (single-axis flips, quarter turns about z), so it is the group those generate."""
    import torch

    views = load_benchmark_script("tta_views")
    patch = torch.arange(4 * 4 * 6, dtype=torch.float32).reshape(1, 1, 4, 4, 6)  # no symmetry of its own
    largest = max(views.VIEW_SETS.values(), key=len)
    orientations = {tuple(views.oriented(patch, view).flatten().tolist()) for view in largest}
    assert len(largest) == len(orientations) == 16
    for generator in [lambda x: torch.flip(x, (2,)), lambda x: torch.flip(x, (3,)), lambda x: torch.flip(x, (4,)),
                      lambda x: torch.rot90(x, 1, dims=(2, 3))]:
        moved = {tuple(generator(views.oriented(patch, view)).flatten().tolist()) for view in largest}
        assert moved == orientations
    assert views.VIEW_SETS[views.ONE_VIEW] == ((0, ()),)
    from bids_rim.training.prediction import TTA_FLIPS

    assert views.VIEW_SETS[views.PRODUCT_VIEWS] == tuple((0, flips) for flips in TTA_FLIPS)


def test_a_retrain_that_drifts_is_reported_with_both_cpus(tmp_path: Path) -> None:
    """tta_views.py's sentence on reproduction: within the tolerance it says so; beyond it, the page names
    the median drift and the run's CPU next to this one, the usual cause of a small drift."""
    views = load_benchmark_script("tta_views")
    from classification import cpu_model

    (tmp_path / "classification.md").write_text("# Classification benchmark\n\n- Machine: AMD EPYC; 2 logical CPUs\n")
    assert views.reproduction_text(5e-5, 1e-6, tmp_path).endswith("(reproduced).")
    drifted = views.reproduction_text(0.14, 2e-4, tmp_path)
    assert "largest difference 1.4e-01, median 2.0e-04 (NOT reproduced" in drifted
    assert f"the run's CPU: AMD EPYC, this one: {cpu_model()})" in drifted
    (tmp_path / "classification.md").write_text("# Classification benchmark\n")
    assert "the run's CPU: not recorded" in views.reproduction_text(0.14, 2e-4, tmp_path)


def test_a_traced_fold_that_drifts_names_both_cpus(tmp_path: Path) -> None:
    """finetune_trace.py says a fold was reproduced within the tolerance, and beyond it names the run's CPU
    next to this one, as tta_views.py does."""
    trace = load_benchmark_script("finetune_trace")
    from classification import cpu_model

    (tmp_path / "classification.md").write_text("# Classification benchmark\n\n- Machine: AMD EPYC; 2 logical CPUs\n")
    assert trace.reproduction_words(trace.REPRODUCTION_TOLERANCE, tmp_path) == "reproduced"
    drifted = trace.reproduction_words(0.14, tmp_path)
    assert drifted.startswith("NOT reproduced")
    assert drifted.endswith(f"the run's CPU: AMD EPYC, this one: {cpu_model()}")
