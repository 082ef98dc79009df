"""Where does asym's starting point stand against the read-out reference?

The regression on the rim read-out, fitted step by step as the network's fine-tuning starts it.

    python benchmarks/readout_start.py RESULTS_DIR --work WORK [--outlines 1|3] [--bootstrap 1000]
        [--out readout_start.md]

RESULTS_DIR is the ``--out`` of one ``classification.py`` run that holds the read-out reference
(``readout_logistic``, or ``readout_logistic_outlines`` with ``--outlines 3``) and WORK its
``--work`` folder. Before its first fine-tuning step asym's logit is a logistic regression on its
rim read-out (the MLP head's last layer starts at zero). That regression differs from the
benchmark's reference in three ways, and this script measures each on the run's own folds, test
lesions and true labels, out of fold:

- **class weights**: the reference is the plain maximum-likelihood fit; until 12ee1f0 the
  network started from a fit with class-balanced weights;
- **fewer patients**: the network's start is fitted on the fit patients only; its inner-validation
  patients (``inner_val_fraction``) are kept for early stopping and calibration;
- **calibration**: the network's probabilities are Platt-scaled on those few inner-validation
  patients, fold by fold; a pooled PR AUC ranks the lesions of all folds together, so a fold
  calibrated higher than another moves its lesions up.

The first row reproduces the run's reference to 1e-4 (else the script stops: the folds or the
read-out differ from the run's); every method of the run follows for comparison. Intervals are
patient-bootstrap 95 % intervals of the paired difference from the reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from seed_spread import load_labelled_run, paired_difference, write_page  # the sibling script (benchmarks/)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

REFERENCES = {1: "readout_logistic", 3: "readout_logistic_outlines"}
STEPS = {  # name: (fit on the fit patients only, class-balanced weights, Platt-scaled on the inner validation)
    "plain, all training patients (the reference, reproduced)": (False, False, False),
    "class-balanced, all training patients": (False, True, False),
    "plain, fit patients": (True, False, False),
    "class-balanced, fit patients": (True, True, False),
    "class-balanced, fit patients, Platt (asym before fine-tuning, until 12ee1f0)": (True, True, True),
    "plain, fit patients, Platt (asym before fine-tuning, since 12ee1f0)": (True, False, True),
}
REFERENCE_STEP = next(iter(STEPS))  # the run's readout_logistic, reproduced


def start_probabilities(features: np.ndarray, labels: np.ndarray, fit: np.ndarray, validation: np.ndarray,
                        test: np.ndarray, balanced: bool, platt: bool) -> np.ndarray:
    """Test probabilities of one regression step (rows are boolean masks of ``features``)."""
    from bids_rim.training.calibration import calibrated, fit_platt
    from bids_rim.training.config import TrainConfig
    from bids_rim.training.finetune import training_prior_bias

    regression = LogisticRegression(class_weight="balanced" if balanced else None, max_iter=1000)
    regression.fit(features[fit], labels[fit].astype(int))
    if not platt:
        return regression.predict_proba(features[test])[:, 1]
    # The logit as the network holds it: in the prior that balanced batches present (0.5).
    prior_bias = training_prior_bias(TrainConfig(), float(labels[fit].mean()))
    taught_shift = 0.0 if balanced else prior_bias
    temperature, bias = fit_platt(regression.decision_function(features[validation]) - taught_shift,
                                  labels[validation].astype(int), prior_bias)
    return calibrated(regression.decision_function(features[test]) - taught_shift, temperature, bias)


def step_predictions(patches: np.ndarray, meta: pd.DataFrame, run: pd.DataFrame, outlines: int,
                     split_seed: int, training_seed: int) -> pd.DataFrame:
    """Every step's out-of-fold probabilities on the run's test lesions, as rows of a predictions table.

    The folds are the benchmark's own (``patient_folds`` with the run's split seed): a test
    patient without any scored lesion is still no training patient.
    """
    from bids_rim.models.asym import rim_readout_of_patches
    from bids_rim.training.config import TrainConfig
    from bids_rim.training.crossval import inner_split, patient_folds

    features = rim_readout_of_patches(patches, outlines=outlines).astype(float)  # as the reference: float64
    labels = meta["label"].to_numpy(dtype=float)
    labelled = np.isfinite(labels)
    patients = meta["participant_id"].to_numpy()
    scored = run[run["method"] == REFERENCES[outlines]]
    folds = patient_folds(meta.drop(columns="evaluable"), int(scored["fold"].max()), split_seed)
    key = pd.MultiIndex.from_frame(meta[["participant_id", "lesion_id"]])
    rows = []
    for fold, tested in scored.groupby("fold"):
        if not set(tested["participant_id"]) <= set(folds[fold - 1]):
            raise ValueError(f"fold {fold} of the run is not the benchmark's fold for split seed {split_seed}")
        in_test = np.isin(patients, folds[fold - 1])
        training = labelled & ~in_test
        fit_patients, _ = inner_split(meta[training], TrainConfig().inner_val_fraction, training_seed + 100 * fold)
        in_fit = training & np.isin(patients, fit_patients)
        test = key.get_indexer(pd.MultiIndex.from_frame(tested[["participant_id", "lesion_id"]]))
        for name, (fit_only, balanced, platt) in STEPS.items():
            probabilities = start_probabilities(features, labels, in_fit if fit_only else training,
                                                training & ~in_fit, test, balanced, platt)
            rows.append(tested.assign(method=name, rim_probability=probabilities))
    return pd.concat(rows, ignore_index=True)


def report(predictions: pd.DataFrame, reference: str, n_resamples: int, seed: int, command: str) -> str:
    """Markdown: pooled and per-fold PR AUC of each step and method, paired with the reference."""
    lines = ["# Classification benchmark: asym's starting point against the read-out reference", "",
             f"Command: `{command}`", "",
             "Pooled out-of-fold PR AUC against the true class, per fold, and the paired difference from "
             f"the reference (`{reference}`; patient-bootstrap 95 % CI, {n_resamples} resamples). The steps are "
             "logistic regressions on the rim read-out (see the script's docstring); the methods are the run's.", "",
             "| regression step or method | pooled PR AUC | per fold | minus the reference [95 % CI] |",
             "|---|---|---|---|", *report_rows(predictions, list(STEPS), reference, n_resamples, seed)]
    return "\n".join(lines) + "\n"


def report_rows(predictions: pd.DataFrame, first: list[str], reference: str, n_resamples: int, seed: int) -> list[str]:
    """Table rows: the ``first`` methods, then the rest; pooled and per-fold PR AUC, paired with ``reference``."""
    rows = []
    for method in [*first, *(m for m in predictions["method"].unique() if m not in first)]:
        part = predictions[predictions["method"] == method]
        folds = " / ".join(f"{average_precision_score(f['true_label'], f['rim_probability']):.3f}"
                           for _, f in part.groupby("fold"))
        pooled = average_precision_score(part["true_label"], part["rim_probability"])
        difference = "" if method == reference else "{:+.3f} [{:+.3f}, {:+.3f}]".format(
            *paired_difference(predictions, method, reference, n_resamples, seed))
        rows.append(f"| {method} | {pooled:.3f} | {folds} | {difference} |")
    return rows


def load_run(parser: argparse.ArgumentParser, results: Path, work: Path, reference: str
             ) -> tuple[int, int, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """A fully labelled run holding ``reference``: its split and training seeds, predictions, and
    its work folder's lesion metadata and patches (a one-line parser error otherwise)."""
    split_seed, training_seed, run = load_labelled_run(parser, results, reference)
    data = work / "training_data"
    patches = np.asarray(np.load(data / "patches.npy", mmap_mode="r"))
    return split_seed, training_seed, run, pd.read_pickle(data / "meta.pkl").reset_index(drop=True), patches


def with_reproduced_reference(parser: argparse.ArgumentParser, work: Path, computed: pd.DataFrame, computed_name: str,
                              run: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The run's predictions plus ``computed``, once ``computed_name`` reproduces the run's ``reference``
    to 1e-4 (else a parser error: wrong work folder or folds); the reference is renamed ``computed_name``."""
    key = ["participant_id", "lesion_id"]
    reproduced = computed[computed["method"] == computed_name].merge(run[run["method"] == reference], on=key,
                                                                     validate="one_to_one")
    if not np.allclose(reproduced["rim_probability_x"], reproduced["rim_probability_y"], atol=1e-4):
        parser.error(f"{work}: the reference regression does not reproduce the run's {reference}; "
                     "is it the run's --work folder?")
    predictions = pd.concat([computed[computed["method"] != computed_name], run], ignore_index=True)
    predictions["method"] = predictions["method"].replace(reference, computed_name)
    return predictions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a classification.py --out folder holding the read-out reference")
    parser.add_argument("--work", type=Path, required=True, help="that run's --work folder")
    parser.add_argument("--outlines", type=int, choices=sorted(REFERENCES), default=1,
                        help="the read-out of the mask as given (1, reference readout_logistic) or also eroded "
                             "and dilated (3, reference readout_logistic_outlines)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples (default 1000)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    reference = REFERENCES[args.outlines]
    split_seed, training_seed, run, meta, patches = load_run(parser, args.results, args.work, reference)
    steps = step_predictions(patches, meta, run, args.outlines, split_seed, training_seed)
    predictions = with_reproduced_reference(parser, args.work, steps, REFERENCE_STEP, run, reference)
    command = "python benchmarks/readout_start.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_page(report(predictions, REFERENCE_STEP, args.bootstrap, split_seed, command), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
