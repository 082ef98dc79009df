"""Does averaging over more views of each patch at test time rank the test lesions better?

A retrain of the folds of one benchmark run, scored with several sets of views.

    python benchmarks/tta_views.py RESULTS_DIR --work WORK [--folds 1 2 3 4 5]
        [--method asym] [--jobs 2] [--bootstrap 1000] [--out tta_views.md]

``classification.py`` scores each test lesion with one view of its patch, as it was cut. The
participant level predicts with the model's flip views (``bids_rim.training.prediction.TTA_FLIPS``:
the patch and its left-right mirror image), averaging their calibrated probabilities. Training
augments with single-axis flips and 90° rotations about z (``bids_rim.training.augment``), so the
network was taught that 16 views of a patch (the eight symmetries of the axial square, each with
and without a z flip) are the same lesion. This script says what each set of views is worth.

Each chosen fold is trained again exactly as the run trained it (``finetune_trace.retrain_fold``);
its one-view probabilities must equal the run's to 1e-4 (checked; else the page says so and the
script exits with 1). Then every set of views scores the fold's test lesions the way the
participant level does: the mean over the views of the member's calibrated probability (its Platt
temperature and bias, fitted on one view of the inner-validation lesions). Nothing here feeds back
into training, and every view set is fixed in advance (no choice is made on the test lesions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from finetune_trace import REPRODUCTION_TOLERANCE, load_run_to_retrain, map_folds, retrain_fold  # sibling scripts
from seed_spread import cpu_comparison, paired_difference, write_page
from sklearn.metrics import average_precision_score, roc_auc_score

# A view: (quarter turns about z, in the axial plane; then the patch axes flipped, as batch dims
# (B, C, x, y, z) = (0, 1, 2, 3, 4)).
View = tuple[int, tuple[int, ...]]
ONE_VIEW = "one view (as classification.py scores)"
PRODUCT_VIEWS = "left-right flip (the participant level's TTA_FLIPS)"
VIEW_SETS: dict[str, tuple[View, ...]] = {
    ONE_VIEW: ((0, ()),),
    PRODUCT_VIEWS: ((0, ()), (0, (2,))),
    "single-axis flips (ALL_FLIPS)": ((0, ()), (0, (2,)), (0, (3,)), (0, (4,))),
    "16 training symmetries (axial quarter turns × x flip × z flip)": tuple(
        (turns, (*x_flip, *z_flip)) for turns in range(4) for x_flip in ((), (2,)) for z_flip in ((), (4,))),
}


def oriented(batch, view: View):
    """``batch`` (B, C, x, y, z) turned about z by the view's quarter turns, then flipped."""
    import torch

    turns, flips = view
    turned = torch.rot90(batch, turns, dims=(2, 3)) if turns else batch
    return torch.flip(turned, flips) if flips else turned


def view_probabilities(model, patches: np.ndarray, views: tuple[View, ...], temperature: float, bias: float,
                       device) -> np.ndarray:
    """Mean over ``views`` of the calibrated probability σ(z / T + b) of each patch, as the
    participant level averages its flip views (``RimModel.predict``)."""
    import torch

    from bids_rim.training.calibration import calibrated

    model.eval()
    per_view = []
    with torch.inference_mode():
        for view in views:
            logits = []
            for start in range(0, len(patches), 64):
                batch = torch.as_tensor(np.ascontiguousarray(patches[start : start + 64]), dtype=torch.float32,
                                        device=device)
                logits.append(model(oriented(batch, view))["logit"].float().cpu().numpy())
            per_view.append(calibrated(np.concatenate(logits), temperature, bias))
    return np.mean(per_view, axis=0)


def score_fold(fold: int, test_patients: list[str], config, data_folder: Path, true_labels: pd.Series,
               threads: int) -> pd.DataFrame:
    """One fold retrained, its test lesions scored with every view set (long format: one row per
    view set and lesion, the view set in ``method``)."""
    from bids_rim.models import get_model

    fold_data = retrain_fold(fold, test_patients, config, data_folder, true_labels, threads)
    member = fold_data.member
    model = get_model(config.arch, **config.model_kwargs()).to(fold_data.device)
    model.load_state_dict(member.state_dict)
    parts = []
    for name, views in VIEW_SETS.items():
        parts.append(pd.DataFrame({
            "method": name, "fold": fold, "participant_id": fold_data.key.get_level_values(0),
            "lesion_id": fold_data.key.get_level_values(1), "true_label": fold_data.test_labels,
            "rim_probability": view_probabilities(model, fold_data.test_patches, views, member.temperature,
                                                  member.bias, fold_data.device)}))
    return pd.concat(parts, ignore_index=True)


def reproduction_gaps(scored: pd.DataFrame, run: pd.DataFrame, method: str) -> tuple[float, float]:
    """Largest and median difference between the retrained one-view probabilities and the run's, over
    the folds retrained (both infinite when the lesions differ)."""
    mine = scored[scored["method"] == ONE_VIEW]
    ran = run[(run["method"] == method) & run["fold"].isin(mine["fold"].unique())]
    joined = mine.merge(ran, on=["participant_id", "lesion_id", "fold"], validate="one_to_one")
    if len(joined) != len(ran) or len(joined) != len(mine):
        return float("inf"), float("inf")
    gaps = np.abs(joined["rim_probability_x"] - joined["rim_probability_y"])
    return float(gaps.max()), float(gaps.median())


def reproduction_text(largest: float, median: float, results_dir: Path) -> str:
    """The page's sentence on whether the retrained folds are the run's models, and if not, a lead on why:
    torch and oneDNN choose their kernels by CPU, so on another CPU model a retrain drifts in the last
    digits and fine-tuning can amplify the drift (the view sets are still compared on the same models)."""
    text = f"Retrained one-view probabilities against the run's: largest difference {largest:.1e}"
    if largest <= REPRODUCTION_TOLERANCE:
        return text + " (reproduced)."
    return (text + f", median {median:.1e} (NOT reproduced: these are not the run's models; "
            f"{cpu_comparison(results_dir)}). The view sets below are still compared paired, "
            "on the same retrained models.")


def summary_table(scored: pd.DataFrame, n_resamples: int, seed: int) -> list[str]:
    """Markdown rows: per view set its pooled PR AUC, ROC AUC, ECE, per-fold PR AUC and the paired
    PR AUC differences (patient bootstrap) from one view, which the benchmarks score, and from the
    participant level's two views, which the product predicts with."""
    from bids_rim.training.metrics import expected_calibration_error

    def difference(name: str, reference: str) -> str:
        if name == reference:
            return "(reference)"
        estimate, low, high = paired_difference(scored, name, reference, n_resamples, seed)
        return f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"

    folds = sorted(scored["fold"].unique())
    lines = ["| views | number | pooled PR AUC | minus one view [95 % CI] | minus the product's two views [95 % CI] | "
             "ROC AUC | ECE | " + " | ".join(f"fold {fold}" for fold in folds) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(folds)]
    for name, views in VIEW_SETS.items():
        part = scored[scored["method"] == name]
        labels, probabilities = part["true_label"].to_numpy(), part["rim_probability"].to_numpy()
        per_fold = [average_precision_score(f["true_label"], f["rim_probability"]) for _, f in part.groupby("fold")]
        lines.append(f"| {name} | {len(views)} | {average_precision_score(labels, probabilities):.3f} | "
                     f"{difference(name, ONE_VIEW)} | {difference(name, PRODUCT_VIEWS)} | "
                     f"{roc_auc_score(labels, probabilities):.3f} | "
                     f"{expected_calibration_error(labels, probabilities):.3f} | "
                     + " | ".join(f"{value:.3f}" for value in per_fold) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a classification.py --out folder holding --method")
    parser.add_argument("--work", type=Path, required=True, help="that run's --work folder")
    parser.add_argument("--folds", type=int, nargs="+", help="the run's folds (1-based) to retrain (default: all)")
    parser.add_argument("--method", default="asym", help="a network method of the run (default asym)")
    parser.add_argument("--jobs", type=int, default=1, help="folds retrained at once, one torch thread each")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient resamples of the paired intervals")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)

    chosen = load_run_to_retrain(parser, args.results, args.work, args.method, args.folds)
    scored = pd.concat(map_folds(score_fold, chosen.tasks(), args.jobs), ignore_index=True)
    largest_gap, median_gap = reproduction_gaps(scored, chosen.run, args.method)
    reproduced = largest_gap <= REPRODUCTION_TOLERANCE
    command = "python benchmarks/tta_views.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Test-time views: {args.method}", "", f"Command: `{command}`", "",
             f"Run: `{args.results}` (split seed {chosen.split_seed}, training seed {chosen.training_seed}, folds "
             f"{', '.join(map(str, chosen.folds))} of {chosen.n_folds} retrained). "
             + reproduction_text(largest_gap, median_gap, args.results)
             + " Each view set's probability is the mean of the member's calibrated probabilities over its views, as "
             "the participant level averages its flip views; every figure is against the TRUE class, pooled over the "
             f"folds retrained; intervals: {args.bootstrap} patient resamples, paired on the same lesions.", "",
             *summary_table(scored, args.bootstrap, chosen.split_seed), ""]
    write_page("\n".join(lines), args.out)
    if args.out is not None:
        scored.to_csv(args.out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.5f")
    return 0 if reproduced else 1


if __name__ == "__main__":
    raise SystemExit(main())
