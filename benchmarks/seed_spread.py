"""How much do the classification benchmark's numbers move with the training seed alone?

    python benchmarks/seed_spread.py RESULTS_DIR [RESULTS_DIR ...] --compare asym,asym_no_pretrain --out spread.md

Each RESULTS_DIR is the ``--out`` of one ``classification.py`` run on the same ``--work`` folder
(same cohort, same split, same test lesions) with a different ``--training-seed``. One run's
patient-bootstrap intervals describe the sampling of patients; they say nothing about how a
network's initialisation and batch order move its PR AUC. Before a method is preferred to
another (pretraining or not, say), the difference should hold across seeds. This script
writes, per method, the pooled out-of-fold PR AUC of every seed with its mean and range, and
for each compared pair the per-seed paired difference with a patient-bootstrap 95 % CI (both
methods scored on the same resampled patients).

Folders with the same training seed are parts of one run (methods added later on the same work
folder, cohort, split and seed): their predictions are joined. A method in two parts must give
the same probability for every lesion, to the printed digit, which checks that the code between
the parts did not change it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

SEED_LINE = re.compile(r"^- Date: [^;]*; seed (\d+)(?: \(trained methods: training seed (\d+)\))?"
                       r"(?:; rater labels of one in (\d+) training patients)?", re.MULTILINE)


def run_seeds(results_dir: Path) -> tuple[int, int, int]:
    """(split seed, training seed, label_one_in) read from the run's results page."""
    page = results_dir / "classification.md"
    found = SEED_LINE.search(page.read_text()) if page.exists() else None
    if found is None:
        raise ValueError(f"{page}: no classification results page with a seed line")
    split_seed = int(found.group(1))
    return split_seed, int(found.group(2) or split_seed), int(found.group(3) or 1)


def run_cpu(results_dir: Path) -> str:
    """The CPU named on the run's results page ("not recorded" where the page has no machine line)."""
    for line in (results_dir / "classification.md").read_text().splitlines():
        if line.startswith("- Machine: "):
            return line.removeprefix("- Machine: ").split(";", 1)[0]
    return "not recorded"


def cpu_comparison(results_dir: Path) -> str:
    """"the run's CPU: X, this one: Y": a lead on why a retrain does not reproduce a run (torch and oneDNN
    choose their kernels by CPU model, and fine-tuning can amplify a drift in the last digits)."""
    from classification import cpu_model  # the sibling script (benchmarks/)

    return f"the run's CPU: {run_cpu(results_dir)}, this one: {cpu_model()}"


def load_predictions(results_dir: Path) -> pd.DataFrame:
    """The per-lesion predictions of one run, one row per (method, lesion)."""
    path = results_dir / "classification_predictions.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; is {results_dir} a classification.py --out folder?")
    return pd.read_csv(path, sep="\t")


def load_labelled_run(parser: argparse.ArgumentParser, results: Path, method: str
                      ) -> tuple[int, int, pd.DataFrame]:
    """Split seed, training seed and predictions of a fully labelled run that holds ``method``, for
    a script that retrains or re-fits on it (a one-line parser error otherwise)."""
    split_seed, training_seed, label_one_in = run_seeds(results)
    if label_one_in != 1:
        parser.error(f"{results}: a run with --label-one-in {label_one_in}; only fully labelled runs are supported")
    run = load_predictions(results)
    if method not in set(run["method"]):
        parser.error(f"{results}: the run has no {method}; run classification.py with it")
    return split_seed, training_seed, run


def pooled_pr_auc(predictions: pd.DataFrame) -> pd.Series:
    """Pooled out-of-fold PR AUC against the true class, per method."""
    return predictions.groupby("method").apply(
        lambda part: average_precision_score(part["true_label"], part["rim_probability"]), include_groups=False)


def join_parts(parts: list[pd.DataFrame], seed: int) -> pd.DataFrame:
    """The predictions of one training seed made in several runs, each method once.

    A method found in more than one part must agree on every lesion (within 1e-5, the printed
    precision): otherwise the parts are not one run and pairing across them would mislead. A part
    must add a method: a run given twice is not two parts.
    """
    key = ["participant_id", "lesion_id"]
    joined = parts[0]
    for part in parts[1:]:
        if set(part["method"]) <= set(joined["method"]):
            raise ValueError(f"training seed {seed}: a part adds no method to the others (the same run twice?)")
        for method in sorted(set(part["method"]) & set(joined["method"])):
            here = joined[joined["method"] == method].set_index(key)["rim_probability"]
            there = part[part["method"] == method].set_index(key)["rim_probability"]
            if set(here.index) != set(there.index) or not np.allclose(here, there.loc[here.index], rtol=0, atol=1e-5):
                raise ValueError(f"training seed {seed}: {method} differs between the parts of the run")
        joined = pd.concat([joined, part[~part["method"].isin(joined["method"])]], ignore_index=True)
    return joined


def paired_difference(predictions: pd.DataFrame, first: str, second: str, n_resamples: int,
                      seed: int) -> tuple[float, float, float] | None:
    """PR AUC of ``first`` minus ``second`` on the same lesions, with a patient-bootstrap 95 % CI
    (``None`` when the run lacks one of them)."""
    from bids_rim.training.metrics import bootstrap_ci

    if not {first, second} <= set(predictions["method"]):
        return None
    key = ["participant_id", "lesion_id"]
    pair = predictions[predictions["method"] == first].merge(
        predictions[predictions["method"] == second], on=key, suffixes=("_a", "_b"), validate="one_to_one")
    if len(pair) != (predictions["method"] == first).sum():
        raise ValueError(f"{first} and {second} were not scored on the same lesions")
    labels = pair["true_label_a"].to_numpy()
    both = pair[["rim_probability_a", "rim_probability_b"]].to_numpy()

    def difference(_patients, drawn_labels, drawn, _threshold) -> dict[str, float]:
        if len(np.unique(drawn_labels)) < 2:
            return {"difference": float("nan")}
        return {"difference": average_precision_score(drawn_labels, drawn[:, 0])
                - average_precision_score(drawn_labels, drawn[:, 1])}

    estimate = difference(None, labels, both, None)["difference"]
    low, high = bootstrap_ci(pair["participant_id"].to_numpy(), labels, both, 0.5, n_resamples=n_resamples,
                             seed=seed, metric_fn=difference)["difference"]
    return estimate, low, high


def spread_report(runs: dict[int, pd.DataFrame], pairs: list[tuple[str, str]], n_resamples: int,
                  split_seed: int, label_one_in: int, command: str) -> str:
    """Markdown: PR AUC per method and seed, and the paired differences per seed."""
    scores = pd.DataFrame({seed: pooled_pr_auc(predictions) for seed, predictions in sorted(runs.items())})
    lines = ["# Classification benchmark: spread over training seeds", "", f"Command: `{command}`", "",
             f"Same cohort, split and test lesions (split seed {split_seed}); only the trained methods' seed "
             f"changes (training seeds {', '.join(map(str, scores.columns))}). Untrained methods (observers, "
             "readout_logistic) give the same numbers in every run."
             + ("" if label_one_in == 1 else f" Every run kept the rater labels of one in {label_one_in} training "
                "patients (`--label-one-in`).")
             + " Pooled out-of-fold PR AUC against the true class:",
             "", "| method | " + " | ".join(f"seed {s}" for s in scores.columns) + " | mean | min–max |",
             "|---|" + "---|" * (len(scores.columns) + 2)]
    for method, row in scores.iterrows():  # a method missing from a run shows as "not run"
        values = " | ".join("not run" if np.isnan(v) else f"{v:.3f}" for v in row)
        lines.append(f"| {method} | {values} | {row.mean():.3f} | {row.min():.3f}–{row.max():.3f} |")
    for first, second in pairs:
        lines += ["", f"**{first} − {second}** (paired, same lesions; patient-bootstrap 95 % CI, "
                      f"{n_resamples} resamples):", "", "| training seed | difference [95 % CI] |", "|---|---|"]
        signs = []
        for seed, predictions in sorted(runs.items()):
            difference = paired_difference(predictions, first, second, n_resamples, split_seed)
            if difference is None:
                lines.append(f"| {seed} | not run |")
                continue
            estimate, low, high = difference
            signs.append(estimate > 0)
            lines.append(f"| {seed} | {estimate:+.3f} [{low:+.3f}, {high:+.3f}] |")
        lines += ["", f"{first} is ahead in {sum(signs)} of {len(signs)} seeds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="classification.py --out folders, one per training seed (or several, the parts of "
                             "one run with other methods)")
    parser.add_argument("--compare", action="append", default=[], metavar="A,B",
                        help="a pair of methods whose paired PR AUC difference A − B is reported (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=500, help="patient bootstrap resamples (default 500)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    pairs = []
    for text in args.compare:
        names = text.split(",")
        if len(names) != 2:
            parser.error(f"--compare {text!r}: give two methods separated by a comma")
        pairs.append((names[0], names[1]))
    seeds = [run_seeds(folder) for folder in args.results]
    if len({(split, one_in) for split, _, one_in in seeds}) != 1:
        parser.error("the runs must share one split seed and --label-one-in; got "
                     f"(split seed, training seed, label one in) {seeds}")
    parts: dict[int, list[pd.DataFrame]] = {}
    for folder, (_, seed, _) in zip(args.results, seeds):
        parts.setdefault(seed, []).append(load_predictions(folder))
    try:
        runs = {seed: join_parts(found, seed) for seed, found in parts.items()}
    except ValueError as error:
        parser.error(str(error))
    lesion_sets = {seed: set(zip(p["participant_id"], p["lesion_id"])) for seed, p in runs.items()}
    if len({frozenset(s) for s in lesion_sets.values()}) != 1:
        parser.error("the runs scored different lesions: were they made on one --work folder?")
    command = "python benchmarks/seed_spread.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_page(spread_report(runs, pairs, args.bootstrap, seeds[0][0], seeds[0][2], command), args.out)
    return 0


def write_page(text: str, out: Path | None) -> None:
    """The markdown page into ``out``, or onto standard output without one."""
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    raise SystemExit(main())
