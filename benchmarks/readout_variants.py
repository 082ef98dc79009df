"""Can the rim read-out tell a diffusely paramagnetic lesion from a rim?

Variants of the read-out regression, out of fold on a classification run's own folds.

    python benchmarks/readout_variants.py RESULTS_DIR --work WORK [--bootstrap 1000] [--out readout_variants.md]

RESULTS_DIR is the ``--out`` of one fully labelled ``classification.py`` run that holds
``readout_logistic`` and WORK its ``--work`` folder. The error analysis puts about half of the
network's and the regression's false positives on rim− lesions that are paramagnetic throughout
(the generator's ``diffuse`` mimic). A rim− lesion in the generator is iso- or hypointense on QSM,
so a ring brighter than the core speaks against a rim; a diffuse lesion's core is far brighter
than its ring, and a linear model on the read-out extrapolates that into strong rim evidence.
Each variant below changes only the regression's inputs or training lesions (the read-out of the
mask as given: edge−core, edge, core, ring−core, the share of the edge above the core, and the
two contrast-to-noise ratios; network units of 20 ppb):

- the reference, reproduced (else the script stops);
- ring−core floored at −1 (20 ppb below the core) and its CNR at −2: no extra credit beyond that;
- the positive part of the core level added (a term for "brighter than NAWM");
- absolute ring−core and its CNR added (non-monotone in the ring);
- gradient-boosted trees (depth 3) on the same seven numbers instead of the regression;
- the QSM profile from the border inwards: medians of the lesion's first, second and third
  one-voxel layers and of the rest (a smaller lesion repeats its innermost layer), and their
  three successive differences, added (rising inwards for a diffuse lesion, falling for a rim);
- simulated diffuse negatives: 300 rater-rim− patches of the training patients with a uniform
  5–45 ppb added inside the lesion mask (blurred by 0.7 voxel, about what the reconstruction
  does to an edge), added to the training set as rim−.

Scored against the true class, paired with the reference (patient-bootstrap 95 % CI).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from readout_start import load_run, report_rows, with_reproduced_reference  # the sibling script (benchmarks/)
from seed_spread import write_page
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

REFERENCE = "readout_logistic"
REFERENCE_VARIANT = "the read-out regression (the reference, reproduced)"
N_SIMULATED = 300

Features = Callable[[np.ndarray], np.ndarray]


def _floored_ring(x: np.ndarray) -> np.ndarray:
    floored = x.copy()
    floored[:, 3], floored[:, 6] = np.maximum(x[:, 3], -1.0), np.maximum(x[:, 6], -2.0)
    return floored


FEATURE_VARIANTS: dict[str, Features] = {
    REFERENCE_VARIANT: lambda x: x,
    "ring−core floored at −1, its CNR at −2": _floored_ring,
    "+ positive part of the core": lambda x: np.column_stack([x, np.maximum(x[:, 2], 0.0)]),
    "+ abs(ring−core) and abs(its CNR)": lambda x: np.column_stack([x, np.abs(x[:, 3]), np.abs(x[:, 6])]),
}
BOOSTED = "gradient-boosted trees (depth 3) on the seven numbers"
PROFILE = "+ the profile of four layers inwards"
N_LAYERS = 4
SIMULATED = f"+ {N_SIMULATED} simulated diffuse negatives"


def simulated_diffuse(patches: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Read-out of copies of ``rows`` of ``patches`` with a uniform paramagnetic offset inside the
    lesion mask (the training augmentation ``simulated_diffuse_fraction`` makes the same copies)."""
    from bids_rim.models.asym import rim_readout_of_patches
    from bids_rim.training.augment import DIFFUSE_OFFSET_PPM, add_diffuse_paramagnetism

    copies = np.stack([add_diffuse_paramagnetism(patches[row], rng.uniform(*DIFFUSE_OFFSET_PPM)) for row in rows])
    return rim_readout_of_patches(copies).astype(float)


def layer_profile(patches: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, 2 · N_LAYERS − 1): median QSM (network units) of each one-voxel layer inwards, the last one
    the rest of the lesion, then the differences of successive layers."""
    import torch

    from bids_rim.models.blocks import _cross_erode, scale_inputs

    medians = []
    for start in range(0, len(patches), batch_size):
        batch = torch.from_numpy(np.array(patches[start : start + batch_size], dtype=np.float32))
        qsm, remaining = scale_inputs(batch)[:, :1], (batch[:, 2:3] > 0.5).float()
        layers = []
        for _ in range(N_LAYERS - 1):
            inner = _cross_erode(remaining)
            layers.append(remaining - inner)
            remaining = inner
        layers.append(remaining)
        for layer in layers:
            values = torch.where(layer > 0.5, qsm, torch.full_like(qsm, float("nan"))).flatten(1)
            medians.append(values.nanmedian(dim=1).values.numpy())
    per_layer = np.stack([np.concatenate(medians[i::N_LAYERS]) for i in range(N_LAYERS)], axis=1).astype(float)
    for j in range(1, N_LAYERS):  # a lesion without a deeper layer repeats its innermost one
        per_layer[:, j] = np.where(np.isnan(per_layer[:, j]), per_layer[:, j - 1], per_layer[:, j])
    per_layer = np.nan_to_num(per_layer)  # an empty mask reads as the NAWM level, as the read-out does
    return np.column_stack([per_layer, -np.diff(per_layer, axis=1)])


def variant_predictions(patches: np.ndarray, meta: pd.DataFrame, run: pd.DataFrame, split_seed: int,
                        seed: int) -> pd.DataFrame:
    """Every variant's out-of-fold probabilities on the run's test lesions (the run's folds)."""
    from bids_rim.models.asym import rim_readout_of_patches
    from bids_rim.training.crossval import patient_folds

    readout = rim_readout_of_patches(patches).astype(float)
    profile = np.column_stack([readout, layer_profile(patches)])
    labels = meta["label"].to_numpy(dtype=float)
    patients = meta["participant_id"].to_numpy()
    rng = np.random.default_rng(seed)
    negatives = np.flatnonzero(labels == 0)
    chosen = rng.choice(negatives, size=min(N_SIMULATED, len(negatives)), replace=False)
    simulated = simulated_diffuse(patches, chosen, rng)
    key = pd.MultiIndex.from_frame(meta[["participant_id", "lesion_id"]])
    scored = run[run["method"] == REFERENCE]
    # The benchmark's own folds: a test patient without any scored lesion is still no training patient.
    folds = patient_folds(meta.drop(columns="evaluable"), int(scored["fold"].max()), split_seed)
    rows = []
    for fold, tested in scored.groupby("fold"):
        if not set(tested["participant_id"]) <= set(folds[fold - 1]):
            raise ValueError(f"fold {fold} of the run is not the benchmark's fold for split seed {split_seed}")
        test = key.get_indexer(pd.MultiIndex.from_frame(tested[["participant_id", "lesion_id"]]))
        train = np.isfinite(labels) & ~np.isin(patients, folds[fold - 1])
        y = labels[train].astype(int)
        for name, features in FEATURE_VARIANTS.items():
            model = LogisticRegression(max_iter=1000).fit(features(readout[train]), y)
            rows.append(tested.assign(method=name, rim_probability=model.predict_proba(features(readout[test]))[:, 1]))
        boosted = HistGradientBoostingClassifier(max_depth=3, learning_rate=0.05, max_iter=200, random_state=seed)
        boosted.fit(readout[train], y)
        rows.append(tested.assign(method=BOOSTED, rim_probability=boosted.predict_proba(readout[test])[:, 1]))
        model = LogisticRegression(max_iter=1000).fit(profile[train], y)
        rows.append(tested.assign(method=PROFILE, rim_probability=model.predict_proba(profile[test])[:, 1]))
        extra = simulated[~np.isin(patients[chosen], folds[fold - 1])]  # training patients' lesions only
        model = LogisticRegression(max_iter=1000).fit(np.vstack([readout[train], extra]),
                                                      np.concatenate([y, np.zeros(len(extra), dtype=int)]))
        rows.append(tested.assign(method=SIMULATED, rim_probability=model.predict_proba(readout[test])[:, 1]))
    return pd.concat(rows, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a classification.py --out folder holding readout_logistic")
    parser.add_argument("--work", type=Path, required=True, help="that run's --work folder")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated negatives and the trees (default 0)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    split_seed, _, run, meta, patches = load_run(parser, args.results, args.work, REFERENCE)
    variants = variant_predictions(patches, meta, run, split_seed, args.seed)
    predictions = with_reproduced_reference(parser, args.work, variants, REFERENCE_VARIANT, run, REFERENCE)
    command = "python benchmarks/readout_variants.py " + " ".join(sys.argv[1:] if argv is None else argv)
    order = [*FEATURE_VARIANTS, BOOSTED, PROFILE, SIMULATED]
    lines = ["# Classification benchmark: variants of the read-out regression (diffuse paramagnetic lesions)", "",
             f"Command: `{command}`", "",
             "Pooled out-of-fold PR AUC against the true class, per fold, and the paired difference from "
             f"the reference (patient-bootstrap 95 % CI, {args.bootstrap} resamples). Variants: see the "
             "script's docstring; the methods of the run follow.", "",
             "| variant or method | pooled PR AUC | per fold | minus the reference [95 % CI] |", "|---|---|---|---|",
             *report_rows(predictions, order, REFERENCE_VARIANT, args.bootstrap, split_seed)]
    write_page("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
