"""Two classification runs compared method by method, on the lesions both scored.

    python benchmarks/compare_runs.py BEFORE AFTER --methods asym,readout_logistic --out compare.md

BEFORE and AFTER are the ``--out`` folders of two ``classification.py`` runs with one split seed
that differ in their participant level (for instance ``--lesion-outline given`` and ``refined``
on two ``--work`` folders made from the same cohort), their noise (``--qsm-noise-scale``) or the
cohort's size: the generator draws each subject from its own seed, so the cohort of 88 patients
begins with the 40 of a 40-patient cohort of the same seed, and a run on the larger cohort
trains every fold on more patients. ``seed_spread.py`` cannot pair
them: it joins runs only when a shared method gives the same probabilities. Here a method's
two runs are paired on the lesions both scored (same participant and lesion id, same true
class), and for each method the page gives both pooled PR AUCs and the paired difference
AFTER − BEFORE with a patient-bootstrap 95 % CI. It also says how many lesions either run
scored alone, and whether every patient was tested in the same fold in both runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
from seed_spread import load_predictions, paired_difference, pooled_pr_auc, run_seeds, write_page  # the sibling script

KEY = ["participant_id", "lesion_id"]


def paired_runs(before: pd.DataFrame, after: pd.DataFrame, methods: list[str]) -> tuple[pd.DataFrame, dict]:
    """Both runs' predictions of ``methods`` on the lesions both scored with one true class.

    Method names get the suffixes ``@before`` and ``@after``. The dict counts the lesions left
    out (scored by one run only, or with different true classes) and the patients whose test
    fold differs.
    """
    rows, report = [], {}
    for method in methods:
        one = before[before["method"] == method]
        two = after[after["method"] == method]
        if one.empty or two.empty:
            raise ValueError(f"{method}: not in both runs")
        both = one.merge(two, on=KEY, suffixes=("_b", "_a"), validate="one_to_one")
        same = both[both["true_label_b"] == both["true_label_a"]]
        report[method] = {"paired": len(same), "before_only": len(one) - len(both),
                          "after_only": len(two) - len(both), "true_class_differs": len(both) - len(same)}
        folds = same.groupby("participant_id")[["fold_b", "fold_a"]].first()
        report[method]["patients_moved_fold"] = int((folds["fold_b"] != folds["fold_a"]).sum())
        for suffix, tag in (("_b", "before"), ("_a", "after")):
            part = same[KEY + [f"rim_probability{suffix}", f"true_label{suffix}"]].copy()
            part.columns = KEY + ["rim_probability", "true_label"]
            part["method"] = f"{method}@{tag}"
            rows.append(part)
    return pd.concat(rows, ignore_index=True), report


def comparison_page(predictions: pd.DataFrame, report: dict, methods: list[str], labels: tuple[str, str],
                    n_resamples: int, split_seed: int, command: str) -> str:
    """Markdown: per method, PR AUC before and after on the paired lesions and the paired difference."""
    scores = pooled_pr_auc(predictions)
    lines = ["# Classification benchmark: two runs compared", "", f"Command: `{command}`", "",
             f"Before: {labels[0]}. After: {labels[1]}. Same split seed ({split_seed}); each method is "
             "scored on the lesions both runs scored with the same true class. Pooled out-of-fold PR AUC against "
             f"the true class, and the paired difference after − before (patient bootstrap, {n_resamples} "
             "resamples, 95 % CI):", "",
             "| method | lesions paired | before | after | after − before [95 % CI] |", "|---|---|---|---|---|"]
    for method in methods:
        estimate, low, high = paired_difference(predictions, f"{method}@after", f"{method}@before", n_resamples,
                                                split_seed)
        lines.append(f"| {method} | {report[method]['paired']} | {scores[f'{method}@before']:.3f} | "
                     f"{scores[f'{method}@after']:.3f} | {estimate:+.3f} [{low:+.3f}, {high:+.3f}] |")
    lines += ["", "Lesions left out of the pairing, and patients tested in another fold:", "",
              "| method | before only | after only | true class differs | patients in another fold |",
              "|---|---|---|---|---|"]
    for method in methods:
        counts = report[method]
        lines.append(f"| {method} | {counts['before_only']} | {counts['after_only']} | "
                     f"{counts['true_class_differs']} | {counts['patients_moved_fold']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="classification.py --out folder of the first run")
    parser.add_argument("after", type=Path, help="classification.py --out folder of the second run")
    parser.add_argument("--methods", required=True, help="comma-separated methods present in both runs")
    parser.add_argument("--labels", nargs=2, metavar=("BEFORE", "AFTER"), default=("the first run", "the second run"),
                        help="what each run is, for the page (default: the first run, the second run)")
    parser.add_argument("--bootstrap", type=int, default=500, help="patient bootstrap resamples (default 500)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    seeds = [run_seeds(folder) for folder in (args.before, args.after)]
    if seeds[0] != seeds[1]:
        parser.error(f"the runs differ in (split seed, training seed, label one in): {seeds[0]} and {seeds[1]}")
    methods = args.methods.split(",")
    try:
        predictions, report = paired_runs(load_predictions(args.before), load_predictions(args.after), methods)
    except ValueError as error:
        parser.error(str(error))
    command = "python benchmarks/compare_runs.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_page(comparison_page(predictions, report, methods, tuple(args.labels), args.bootstrap, seeds[0][0],
                               command), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
