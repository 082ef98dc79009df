"""Does lesion size limit what a reader of the image can tell apart? One classification run, by lesion volume.

    python benchmarks/volume_analysis.py RESULTS_DIR --work WORK [--out volume_analysis.md]

RESULTS_DIR is the ``--out`` of one ``classification.py`` run and WORK a ``--work`` folder of its
cohort (the synthetic truth and the participant-level outputs).

Why: the oracle is told each lesion's true rim component; a reader of the image has to see the
rim. In the generator a rim is 0.7–2 mm thick and at most 40 % of the lesion's short semi-axis
(``bids_rim.synth.lesions``), so in a small lesion the rim is most of the lesion and the core is a
voxel or two: at the QSM's 0.6–1 mm voxels such a rim+ lesion looks like a uniformly paramagnetic
(diffuse) rim− lesion, whatever the noise. If that is what holds the readers below the oracle,
their distance to it should shrink from the smallest to the largest lesions.

For each method and each third of the scored lesions by the participant level's ``volume_mm3``
(what a user measures too), it gives the ROC AUC of the third's rim+ lesions against its rim−
lesions and against its diffuse rim− lesions, the PR AUC within the third (whose prevalence
differs, so it is given), and the oracle's PR AUC minus the method's, all with patient-bootstrap
95 % intervals (the lesions stay with their patient; every method's scores travel together, so
the differences are paired).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from error_analysis import lesion_truth, read_run_predictions, run_analysis_parser  # noqa: E402

THIRDS = ("smallest third", "middle third", "largest third")
REFERENCE = "oracle"


def lesion_volumes(work: Path, lesions: pd.DataFrame) -> pd.Series:
    """``volume_mm3`` of each (participant_id, lesion_id) from the participant level's lesion tables."""
    tables = []
    for path in sorted((work / "derivatives").glob("sub-*/**/anat/*_desc-lesions_table.tsv")):
        table = pd.read_csv(path, sep="\t", usecols=["lesion_id", "volume_mm3"])
        tables.append(table.assign(participant_id=path.name.split("_")[0]))
    volumes = pd.concat(tables).set_index(["participant_id", "lesion_id"])["volume_mm3"]
    keys = pd.MultiIndex.from_frame(lesions[["participant_id", "lesion_id"]])
    found = volumes.reindex(keys)
    if found.isna().any():
        missing = keys[found.isna().to_numpy()][0]
        raise ValueError(f"{work}: no lesion table row for {missing}; is WORK this run's cohort?")
    return pd.Series(found.to_numpy(), index=lesions.index)


def volume_thirds(volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each lesion's third (0, 1, 2) by volume, and the two edges in mm³ (terciles of these lesions)."""
    edges = np.quantile(volumes, [1 / 3, 2 / 3])
    return np.digitize(volumes, edges), edges


def third_metrics(labels: np.ndarray, scores: np.ndarray, third: np.ndarray, diffuse: np.ndarray,
                  methods: list[str]) -> dict[str, float]:
    """Per method and third: ROC AUC against all rim− and against diffuse rim−, PR AUC, oracle minus it."""
    result: dict[str, float] = {}
    for index, name in enumerate(THIRDS):
        inside = third == index
        positive, negative = inside & (labels == 1), inside & (labels == 0)
        both = positive.any() and negative.any()
        for column, method in enumerate(methods):
            score = scores[:, column]

            def auc(rim_negative: np.ndarray) -> float:
                chosen = positive | rim_negative
                if not positive.any() or not rim_negative.any():
                    return float("nan")
                return float(roc_auc_score(labels[chosen], score[chosen]))

            result[f"{method}|{name}|roc_auc"] = auc(negative)
            result[f"{method}|{name}|roc_auc_vs_diffuse"] = auc(negative & diffuse)
            result[f"{method}|{name}|pr_auc"] = (float(average_precision_score(labels[inside], score[inside]))
                                                 if both else float("nan"))
        for method in methods:
            result[f"{method}|{name}|oracle_minus"] = (result[f"{REFERENCE}|{name}|pr_auc"]
                                                       - result[f"{method}|{name}|pr_auc"])
    return result


def analyse(wide: pd.DataFrame, methods: list[str], n_resamples: int, seed: int) -> pd.DataFrame:
    """Long table: method, third, statistic, estimate and patient-bootstrap 95 % CI."""
    from bids_rim.training.metrics import bootstrap_ci

    labels = wide["true_label"].to_numpy(dtype=int)
    packed = np.column_stack([wide[methods].to_numpy(dtype=float), wide["third"], wide["diffuse"]])
    width = len(methods)

    def metric(_patients, drawn_labels, drawn, _threshold) -> dict[str, float]:
        return third_metrics(drawn_labels, drawn[:, :width], drawn[:, width].astype(int),
                             drawn[:, width + 1].astype(bool), methods)

    estimate = metric(None, labels, packed, None)
    intervals = bootstrap_ci(wide["participant_id"].to_numpy(), labels, packed, 0.5, n_resamples=n_resamples,
                             seed=seed, metric_fn=metric)
    rows = []
    for key, value in estimate.items():
        method, third, statistic = key.split("|")
        rows.append({"method": method, "third": third, "statistic": statistic, "estimate": value,
                     "ci_low": intervals[key][0], "ci_high": intervals[key][1]})
    return pd.DataFrame(rows)


def _cell(row: pd.Series) -> str:
    if not np.isfinite(row["estimate"]):
        return "n/a"
    return f"{row['estimate']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def report(results: pd.DataFrame, wide: pd.DataFrame, edges: np.ndarray, methods: list[str], source: str,
           command: str, commit: str) -> str:
    """The markdown page: counts per third, then one table per statistic."""
    bounds = [f"< {edges[0]:.0f} mm³", f"{edges[0]:.0f}–{edges[1]:.0f} mm³", f"≥ {edges[1]:.0f} mm³"]
    lines = ["# Ranking by lesion volume", "", f"Run: [{source}]({source}). Command: `{command}` (code {commit}).", "",
             "Thirds of the scored lesions by the participant level's `volume_mm3`. Estimates with "
             "patient-bootstrap 95 % intervals; within a third, every method scores the same lesions, and "
             "\"oracle minus\" is paired.", "",
             "| third | volume | lesions | rim+ | rim− | diffuse rim− | prevalence |", "|---|---|---|---|---|---|---|"]
    for index, name in enumerate(THIRDS):
        part = wide[wide["third"] == index]
        rim_positive = int((part["true_label"] == 1).sum())
        lines.append(f"| {name} | {bounds[index]} | {len(part)} | {rim_positive} | {len(part) - rim_positive} | "
                     f"{int((part['diffuse'] & (part['true_label'] == 0)).sum())} | "
                     f"{rim_positive / max(len(part), 1):.3f} |")
    titles = {"roc_auc": "ROC AUC, rim+ against every rim− lesion of the same third",
              "roc_auc_vs_diffuse": "ROC AUC, rim+ against the diffuse paramagnetic rim− lesions of the same third",
              "pr_auc": "PR AUC within the third",
              "oracle_minus": "The oracle's PR AUC minus the method's, within the third (paired)"}
    for statistic, title in titles.items():
        shown = [m for m in methods if not (statistic == "oracle_minus" and m == REFERENCE)]
        lines += ["", f"## {title}", "", "| method | " + " | ".join(THIRDS) + " |", "|---|" + "---|" * len(THIRDS)]
        for method in shown:
            cells = [_cell(results[(results["method"] == method) & (results["third"] == third)
                                   & (results["statistic"] == statistic)].iloc[0]) for third in THIRDS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = run_analysis_parser(__doc__.splitlines()[0], "volume_analysis.md",
                                 "a classification.py --out folder (with an oracle)")
    args = parser.parse_args(argv)
    predictions, commit = read_run_predictions(parser, args)
    path = args.results / "classification_predictions.tsv"
    methods = list(dict.fromkeys(predictions["method"]))
    if REFERENCE not in methods:
        parser.error(f"{path}: no {REFERENCE} predictions; the run must include the oracle")
    wide = predictions.pivot(index=["participant_id", "lesion_id"], columns="method", values="rim_probability")
    labels = predictions.groupby(["participant_id", "lesion_id"])["true_label"].first()
    wide = wide.join(labels).reset_index()
    if wide[methods].isna().any().any():
        parser.error(f"{path}: the methods did not score the same lesions")
    truth = lesion_truth(args.work, wide)
    wide["diffuse"] = (truth["mimic"] == "diffuse").to_numpy()
    wide["third"], edges = volume_thirds(lesion_volumes(args.work, wide).to_numpy())
    results = analyse(wide, methods, args.bootstrap, args.seed)
    out = args.out or args.results / "volume_analysis.md"
    command = "python benchmarks/volume_analysis.py " + " ".join(sys.argv[1:] if argv is None else argv)
    source = os.path.relpath(args.results / "classification.md", out.parent)
    out.write_text(report(results, wide, edges, methods, source, command, commit))
    results.to_csv(out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4f")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
