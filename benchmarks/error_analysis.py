"""Where does each method lose its lesions? The classification benchmark's errors, by what the truth says.

    python benchmarks/error_analysis.py RESULTS_DIR --work WORK [--out error_analysis.md]

RESULTS_DIR is the ``--out`` of one ``classification.py`` run and WORK its ``--work`` folder
(the synthetic cohort with its truth, and the participant-level outputs). The pooled PR AUC says
how far a method is from the oracle, not why. This script joins every scored lesion to the
synthetic truth (with the benchmark's own matcher) and splits the errors:

- **truly rim+ lesions by their noise-free rim contrast-to-noise ratio** (``rim_cnr``): a rim at
  CNR below 2 is hidden in the noise for every reader, the oracle included; one at CNR above 8
  is plain to see, and a method that misses it has not learned the rim;
- **truly rim− lesions by the mimic they carry** (an edge vein, a diffuse paramagnetic lesion,
  a calcification, or none): the mimics fool the plain image-contrast observer, and a learned
  model should see past them;
- **sites**, which differ in QSM voxel size and noise.

For the mimics it also gives each one's share of the false positives at the threshold and what
rejecting it perfectly would be worth (the PR AUC with that mimic's lesions scored below all others).

For each subgroup it gives a threshold-free ROC AUC (rim+ lesions of a CNR bin against every
rim− lesion; every rim+ lesion against the rim− lesions of one mimic) and the share called
rim+ at each fold's own threshold, all with patient-bootstrap 95 % intervals.

``--rank-shift A,B`` compares two methods of the run lesion by lesion: where does B rank each
lesion, against A, among its fold's test lesions? Split by what the truth AND the rater say, it
shows whether B's training moved the lesions the rater got wrong (an edge vein the rater called a
rim, a rim the rater missed) towards the rater's call, i.e. whether B learned the rater's errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

RIM_CNR_BINS = (-np.inf, 2.0, 4.0, 8.0, np.inf)  # noise-free rim CNR of a truly rim+ lesion
RIM_CNR_NAMES = ("CNR < 2", "CNR 2–4", "CNR 4–8", "CNR ≥ 8")
MIMICS = ("none", "edge_vein", "diffuse", "calcification")  # the generator's rim− confounders
NO_GROUP = -1  # code of a lesion outside the groups of a column (rim− lesions have no CNR bin)
RATER_GROUPS = (  # (name, true class, rater label, mimic or None for any) of the rank-shift table
    ("true rim+, rater rim+", 1, 1, None),
    ("true rim+, rater rim− (rater missed it)", 1, 0, None),
    *((f"true rim−, rater rim+, {mimic} (rater's false rim)", 0, 1, mimic) for mimic in MIMICS),
    *((f"true rim−, rater rim−, {mimic}", 0, 0, mimic) for mimic in MIMICS),
)


def _load_benchmark_script(stem: str):
    """A sibling benchmark script as a module (``benchmarks/`` is a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{stem}_benchmark", Path(__file__).resolve().parent / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def lesion_truth(work: Path, lesions: pd.DataFrame) -> pd.DataFrame:
    """Truth of each scored lesion (``participant_id``, ``lesion_id``): rim CNR, mimic, site.

    A pipeline lesion holding several true lesions takes the largest rim CNR and carries a mimic
    when any of them does (the first of ``MIMICS[1:]`` it holds, else ``none``).
    """
    benchmark = _load_benchmark_script("classification")
    bids_dir, output_dir = work / "bids", work / "derivatives"
    meta = lesions[["participant_id", "lesion_id"]].drop_duplicates().reset_index(drop=True)
    sessions = {p: sorted(d.name for d in (output_dir / p).glob("ses-*")) for p in meta["participant_id"].unique()}
    several = [p for p, found in sessions.items() if len(found) > 1]
    if several:
        raise ValueError(f"{output_dir}: {several[0]} has sessions {sessions[several[0]]}; the predictions name "
                         "no session, so only one session per patient can be matched")
    meta["session_id"] = [(sessions[p] or ["n/a"])[0] for p in meta["participant_id"]]
    columns = {"rim_cnr": lambda truth: truth["rim_cnr"].where(truth["class"] == "rim+")}
    columns.update({mimic: (lambda truth, mimic=mimic: truth["confounder"] == mimic) for mimic in MIMICS[1:]})
    truth = benchmark.matched_truth(output_dir, bids_dir, meta, columns)
    mimic = pd.Series("none", index=meta.index)
    for name in reversed(MIMICS[1:]):
        mimic[truth[name] == 1] = name
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t", dtype=str)
    site = meta["participant_id"].map(participants.set_index("participant_id")["site"])
    return meta.assign(rim_cnr=truth["rim_cnr"], mimic=mimic, site=site.fillna("n/a"))


def group_codes(scored: pd.DataFrame, sites: list[str]) -> np.ndarray:
    """Columns [CNR bin, mimic, site] as integer codes (``NO_GROUP`` where a lesion has none)."""
    positive = scored["true_label"].to_numpy() == 1
    cnr_bin = np.digitize(scored["rim_cnr"].to_numpy(dtype=float), RIM_CNR_BINS[1:-1])
    cnr_bin = np.where(positive & np.isfinite(scored["rim_cnr"].to_numpy(dtype=float)), cnr_bin, NO_GROUP)
    mimic = np.where(positive, NO_GROUP, scored["mimic"].map({m: i for i, m in enumerate(MIMICS)}).to_numpy())
    site = scored["site"].map({s: i for i, s in enumerate(sites)}).to_numpy()
    return np.column_stack([cnr_bin, mimic, site]).astype(int)


def subgroup_metrics(labels: np.ndarray, probabilities: np.ndarray, codes: np.ndarray, threshold: np.ndarray,
                     sites: list[str]) -> dict[str, float]:
    """Per subgroup: ROC AUC against the other class, share called rim+, and per site PR AUC (NaN where a
    subgroup or its comparison class is empty)."""
    called = probabilities >= threshold
    positive, negative = labels == 1, labels == 0
    result: dict[str, float] = {"pr_auc|all lesions": (float(average_precision_score(labels, probabilities))
                                                       if positive.any() and negative.any() else float("nan"))}

    def auc(rim_positive: np.ndarray, rim_negative: np.ndarray) -> float:
        if not rim_positive.any() or not rim_negative.any():
            return float("nan")
        chosen = rim_positive | rim_negative
        return float(roc_auc_score(rim_positive[chosen], probabilities[chosen]))

    for index, name in enumerate(RIM_CNR_NAMES):
        group = positive & (codes[:, 0] == index)
        result[f"auc|{name}"] = auc(group, negative)
        result[f"called|{name}"] = float(called[group].mean()) if group.any() else float("nan")
    false_positive = called & negative
    for index, name in enumerate(MIMICS):
        group = negative & (codes[:, 1] == index)
        result[f"auc|{name}"] = auc(positive, group)
        result[f"called|{name}"] = float(called[group].mean()) if group.any() else float("nan")
        result[f"fp_share|{name}"] = (float((false_positive & group).sum() / false_positive.sum())
                                      if false_positive.any() else float("nan"))
        # What rejecting this mimic perfectly would be worth: its lesions scored below every other.
        rejected = np.where(group, -1.0, probabilities)
        result[f"pr_auc_rejected|{name}"] = (float(average_precision_score(labels, rejected))
                                             if positive.any() and negative.any() else float("nan"))
    for index, name in enumerate(sites):
        at_site = codes[:, 2] == index
        has_both = positive[at_site].any() and negative[at_site].any()
        result[f"pr_auc|{name}"] = (float(average_precision_score(labels[at_site], probabilities[at_site]))
                                    if has_both else float("nan"))
    return result


def analyse(predictions: pd.DataFrame, truth: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    """Long table: method, subgroup statistic, estimate and patient-bootstrap 95 % CI."""
    from bids_rim.training.metrics import bootstrap_ci

    scored = predictions.merge(truth, on=["participant_id", "lesion_id"], how="left", validate="many_to_one")
    sites = sorted(scored["site"].unique())
    rows = []
    for method, part in scored.groupby("method", sort=False):
        labels = part["true_label"].to_numpy(dtype=int)
        probabilities = part["rim_probability"].to_numpy(dtype=float)
        codes = group_codes(part, sites)
        threshold = part["threshold"].to_numpy(dtype=float)
        estimate = subgroup_metrics(labels, probabilities, codes, threshold, sites)
        # The codes travel with their lesion through the patient resampling as extra columns.
        packed = np.column_stack([probabilities, threshold, codes])

        def resampled(_patients, drawn_labels, drawn, _threshold) -> dict[str, float]:
            return subgroup_metrics(drawn_labels, drawn[:, 0], drawn[:, 2:].astype(int), drawn[:, 1], sites)

        intervals = bootstrap_ci(part["participant_id"].to_numpy(), labels, packed, 0.5, n_resamples=n_resamples,
                                 seed=seed, metric_fn=resampled)
        rows += [{"method": method, "statistic": name, "estimate": value, "ci_low": intervals[name][0],
                  "ci_high": intervals[name][1]} for name, value in estimate.items()]
    return pd.DataFrame(rows)


def fold_percentile_ranks(predictions: pd.DataFrame) -> pd.Series:
    """Each lesion's percentile rank (0–100) among its fold's test lesions, per method (ties share
    their mean rank). A fold's ranks are what its own model decides, so they compare across methods
    even where two folds' probabilities are on different scales."""
    return predictions.groupby(["method", "fold"])["rim_probability"].rank(pct=True) * 100


def rank_shift(predictions: pd.DataFrame, truth: pd.DataFrame, first: str, second: str, n_resamples: int,
               seed: int) -> pd.DataFrame:
    """Per rater/truth group (``RATER_GROUPS``): lesions, mean fold percentile rank under ``first``
    and ``second``, and the mean shift ``second − first`` with a patient-bootstrap 95 % CI.

    The ranks are computed once on the whole run; the bootstrap resamples patients for the means
    only. Groups without lesions are left out of the table.
    """
    from bids_rim.training.metrics import bootstrap_ci

    missing = {first, second} - set(predictions["method"])
    if missing:
        raise ValueError(f"--rank-shift: the run has no method {sorted(missing)[0]}; "
                         f"it has {sorted(predictions['method'].unique())}")
    ranked = predictions.assign(rank=fold_percentile_ranks(predictions))
    key = ["participant_id", "lesion_id"]
    pair = ranked[ranked["method"] == first].merge(ranked[ranked["method"] == second], on=key, suffixes=("_a", "_b"),
                                                   validate="one_to_one")
    if len(pair) != (predictions["method"] == first).sum():
        raise ValueError(f"--rank-shift: {first} and {second} were not scored on the same lesions")
    pair = pair.merge(truth, on=key, how="left", validate="one_to_one")
    code = np.full(len(pair), NO_GROUP)
    for index, (_, true_class, rater, mimic) in enumerate(RATER_GROUPS):
        member = (pair["true_label_a"] == true_class) & (pair["rater_label_a"] == rater)
        if mimic is not None:
            member &= pair["mimic"] == mimic
        code[member.to_numpy()] = index
    values = np.column_stack([pair["rank_a"], pair["rank_b"], code])

    def means(_patients, _labels, drawn, _threshold) -> dict[str, float]:
        result = {}
        for index in range(len(RATER_GROUPS)):
            group = drawn[drawn[:, 2] == index]
            result[f"shift|{index}"] = float(np.mean(group[:, 1] - group[:, 0])) if len(group) else float("nan")
        return result

    labels = pair["true_label_a"].to_numpy(dtype=int)
    intervals = bootstrap_ci(pair["participant_id"].to_numpy(), labels, values, 0.5, n_resamples=n_resamples,
                             seed=seed, metric_fn=means)
    rows = []
    for index, (name, *_rest) in enumerate(RATER_GROUPS):
        group = values[values[:, 2] == index]
        if len(group):
            rows.append({"group": name, "lesions": len(group), "rank_first": float(group[:, 0].mean()),
                         "rank_second": float(group[:, 1].mean()), "shift": float(np.mean(group[:, 1] - group[:, 0])),
                         "ci_low": intervals[f"shift|{index}"][0], "ci_high": intervals[f"shift|{index}"][1]})
    return pd.DataFrame(rows)


def rank_shift_lines(shift: pd.DataFrame, first: str, second: str) -> list[str]:
    """The rank-shift section of the page."""
    lines = [f"## Rank shifts: {second} against {first}, by what the truth and the rater say", "",
             f"Each lesion's percentile rank (0–100) among its fold's test lesions under {first} and under {second}, "
             f"and the mean shift {second} − {first} (patient-bootstrap 95 % CI). Both methods were trained on the "
             "rater's labels: a model that learns the rater's errors moves the rater's false rims up and the rims "
             "the rater missed down.", "",
             f"| group (true class, rater's label, mimic) | lesions | mean rank, {first} | mean rank, {second} | "
             "shift |", "|---|---|---|---|---|"]
    for row in shift.itertuples():
        lines.append(f"| {row.group} | {row.lesions} | {row.rank_first:.1f} | {row.rank_second:.1f} | "
                     f"{row.shift:+.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}] |")
    return [*lines, ""]


def subgroup_sizes(predictions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, str]:
    """How many lesions each subgroup holds (the same for every method: one evaluation set)."""
    first = predictions[predictions["method"] == predictions["method"].iloc[0]]
    scored = first.merge(truth, on=["participant_id", "lesion_id"], how="left", validate="one_to_one")
    positive = scored["true_label"] == 1
    codes = group_codes(scored, sorted(scored["site"].unique()))
    sizes = {name: f"{int((codes[:, 0] == i).sum())} rim+" for i, name in enumerate(RIM_CNR_NAMES)}
    sizes.update({name: f"{int((codes[:, 1] == i).sum())} rim−" for i, name in enumerate(MIMICS)})
    for site, part in scored.groupby("site"):
        sizes[site] = f"{int(positive[part.index].sum())} of {len(part)}"
    sizes["all lesions"] = f"{int(positive.sum())} of {len(scored)}"
    return sizes


def true_outline_masks(work: Path, meta: pd.DataFrame, patches: np.ndarray, patch_spacing_mm: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The true outline of each stored patch's lesion, in exactly that patch (N, P, P, P), and the
    Dice of the pipeline's patch mask with it (NaN where no true lesion overlaps the pipeline lesion).

    The outline is the true lesion that overlaps the pipeline lesion most, read from the truth's
    label map (on the QSM grid) at the patch's own sample points. The grid is rebuilt from the
    pipeline's label map with the product's ``lesion_patch_grid``; the pipeline's mask read there
    must equal the stored mask channel, which checks that it is the grid the patches were cut on.
    """
    import nibabel as nib
    from scipy import ndimage

    from bids_rim.preproc.patches import lesion_patch_grid

    size = patches.shape[-1]
    outlines = np.zeros((len(meta), size, size, size), dtype=np.float32)
    dice = np.full(len(meta), np.nan)
    truth_dir = work / "bids" / "sourcedata" / "synth_truth"
    for (participant, session), rows in meta.groupby(["participant_id", "session_id"]):
        prefix = participant if session == "n/a" else f"{participant}_{session}"
        anat = work / "derivatives" / participant / ("" if session == "n/a" else session) / "anat"
        labels_image = nib.load(anat / f"{prefix}_space-QSM_desc-lesions_dseg.nii.gz")
        labels = np.asarray(labels_image.dataobj).astype(np.int32)
        truth = np.asarray(nib.load(truth_dir / f"{prefix}_desc-truth_lesions.nii.gz").dataobj).astype(np.int32)
        if truth.shape != labels.shape:
            raise ValueError(f"{truth_dir / prefix}_desc-truth_lesions.nii.gz: grid {truth.shape} is not the "
                             f"QSM grid {labels.shape} of {anat}")
        for row, lesion_id in zip(rows.index, rows["lesion_id"]):
            voxel, _, _ = lesion_patch_grid(labels, int(lesion_id), labels_image.affine, patch_size=size,
                                            spacing_mm=patch_spacing_mm)
            mask = ndimage.map_coordinates((labels == lesion_id).astype(np.float32), voxel, order=0,
                                           mode="constant", cval=0.0, prefilter=False).reshape(outlines.shape[1:])
            if not np.array_equal(mask > 0.5, patches[row, 2] > 0.5):
                raise ValueError(f"{participant} lesion {lesion_id}: the patch grid differs from the stored "
                                 "patch's; give the run's --patch-spacing")
            overlapping = truth[labels == lesion_id]
            ids, counts = np.unique(overlapping[overlapping > 0], return_counts=True)
            if not len(ids):
                continue
            outline = ndimage.map_coordinates((truth == ids[np.argmax(counts)]).astype(np.float32), voxel, order=0,
                                              mode="constant", cval=0.0, prefilter=False).reshape(mask.shape)
            outlines[row] = outline
            dice[row] = 2 * np.sum((mask > 0.5) & (outline > 0.5)) / (np.sum(mask > 0.5) + np.sum(outline > 0.5))
    return outlines, dice


PIPELINE_MASKS = "readout_logistic on the pipeline's masks"
TRUE_OUTLINES = "readout_logistic on the true outlines"
THREE_OUTLINES = "readout_logistic on three outlines (pipeline's mask eroded, as given, dilated)"


def outline_comparison(work: Path, predictions: pd.DataFrame, patch_spacing_mm: float
                       ) -> tuple[pd.DataFrame, dict]:
    """The read-out regression (``readout_logistic``) on the pipeline's lesion masks, on the true
    outlines, and on three outlines of the pipeline's mask (eroded, as given and dilated by one
    voxel: a read-out that a product could use, since it needs no truth), with the same patches,
    folds and rater labels, as predictions in the run's format.

    Both are scored on the run's test lesions that overlap a true lesion (the outline needs one).
    The pipeline-mask variant is the benchmark's ``readout_logistic`` itself: where the run has
    it, its predictions must come out the same, which this checks.
    """
    from bids_rim.models.asym import rim_readout_of_patches

    benchmark = _load_benchmark_script("classification")
    meta = pd.read_pickle(work / "training_data" / "meta.pkl").reset_index(drop=True)
    patches = np.load(work / "training_data" / "patches.npy", mmap_mode="r")
    outlines, dice = true_outline_masks(work, meta, patches, patch_spacing_mm)
    has_outline = np.isfinite(dice)
    one_method = predictions[predictions["method"] == predictions["method"].iloc[0]]
    folds = [sorted(part["participant_id"].unique()) for _, part in one_method.groupby("fold")]
    key = pd.MultiIndex.from_frame(meta[["participant_id", "lesion_id"]])
    scored = pd.MultiIndex.from_frame(one_method[["participant_id", "lesion_id"]])
    evaluable = key.isin(scored)
    rater = meta["label"].to_numpy(dtype=float)
    labelled = np.isfinite(rater)
    with_outlines = np.array(patches, dtype=np.float32)
    with_outlines[:, 2] = outlines
    # as given first (the pipeline-mask read-out), then eroded, dilated
    three = rim_readout_of_patches(patches, outlines=3)
    variants = {PIPELINE_MASKS: (three[:, : three.shape[1] // 3], labelled),
                TRUE_OUTLINES: (rim_readout_of_patches(with_outlines), labelled & has_outline),
                THREE_OUTLINES: (three, labelled)}
    true_label = one_method.set_index(["participant_id", "lesion_id"])["true_label"]
    parts = []
    for name, (features, fittable) in variants.items():
        part = benchmark.logistic_out_of_fold(features, np.nan_to_num(rater), fittable, meta, folds, evaluable)
        part["participant_id"] = meta["participant_id"].to_numpy()[part["row"]]
        part["lesion_id"] = meta["lesion_id"].to_numpy()[part["row"]]
        part["true_label"] = true_label.loc[list(zip(part["participant_id"], part["lesion_id"]))].to_numpy()
        parts.append(part.assign(method=name))
    reference = predictions[predictions["method"] == "readout_logistic"]
    if len(reference):
        ours = parts[0].merge(reference, on=["participant_id", "lesion_id"], suffixes=("", "_run"))
        if len(ours) != len(reference) or not np.allclose(ours["rim_probability"], ours["rim_probability_run"],
                                                          atol=1e-4):
            raise ValueError("the read-out regression on the pipeline's masks does not reproduce the run's "
                             "readout_logistic: were the run and this code made from the same read-out?")
    outlined = set(zip(meta["participant_id"][has_outline], meta["lesion_id"][has_outline]))
    both = pd.concat(parts, ignore_index=True)
    both = both[[pair in outlined for pair in zip(both["participant_id"], both["lesion_id"])]]
    counts = {"patch_dice_median": float(np.nanmedian(dice[evaluable])),
              "without_outline": int((evaluable & ~has_outline).sum()), "scored": int(len(both) // len(variants))}
    return both.drop(columns="row"), counts


def _interval(difference: tuple[float, float, float]) -> str:
    estimate, low, high = difference
    return f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"


def _table(results: pd.DataFrame, kind: str, groups: list[str], sizes: dict[str, str]) -> list[str]:
    lines = ["| method | " + " | ".join(f"{g} ({sizes[g]})" for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for method, part in results.groupby("method", sort=False):
        cells = part.set_index("statistic")
        values = []
        for group in groups:
            estimate, low, high = cells.loc[f"{kind}|{group}", ["estimate", "ci_low", "ci_high"]]
            values.append("n/a" if np.isnan(estimate) else f"{estimate:.2f} [{low:.2f}, {high:.2f}]")
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return lines


def report(results: pd.DataFrame, sizes: dict[str, str], sites: list[str], source: str, command: str,
           commit: str, outline: tuple[pd.DataFrame, dict] | None = None, shift_lines: list[str] | None = None
           ) -> str:
    """The markdown page (``source``: the run's results page, as a link relative to this one;
    ``outline``: the analysed outline comparison and its counts, when it was made; ``shift_lines``:
    the rank-shift section, when asked for)."""
    lines = ["# Classification benchmark: where the errors are", "",
             f"- Command: `{command}` (bids_rim git {commit})",
             f"- Predictions of the run in [{source}]({source}), joined to the synthetic truth. Intervals: "
             "patient-bootstrap 95 %.",
             "- The observers (oracle, contrast_observer) score each true lesion on its true outline; the other "
             "methods see the pipeline's lesion mask. A rim that the mask cuts off, or a rim+ lesion merged with "
             "a neighbour, is lost to them alone.",
             "", "## Truly rim+ lesions, by their noise-free rim contrast-to-noise ratio", "",
             "ROC AUC of the rim+ lesions of each bin against every rim− lesion (how often such a rim outranks a "
             "rim− lesion):", "", *_table(results, "auc", list(RIM_CNR_NAMES), sizes), "",
             "Share called rim+ at each fold's own threshold (sensitivity within the bin):", "",
             *_table(results, "called", list(RIM_CNR_NAMES), sizes), "",
             "## Truly rim− lesions, by the mimic they carry", "",
             "ROC AUC of every rim+ lesion against the rim− lesions with that mimic (how often a rim outranks "
             "such a mimic):", "", *_table(results, "auc", list(MIMICS), sizes), "",
             "Share called rim+ at each fold's own threshold (false-positive rate within the group):", "",
             *_table(results, "called", list(MIMICS), sizes), "",
             "Share of all false positives at the threshold that carry each mimic:", "",
             *_table(results, "fp_share", list(MIMICS), sizes), "",
             "What each mimic costs: the pooled PR AUC if that mimic's lesions were all scored below every "
             "other lesion, the rest unchanged (an upper bound of what rejecting that mimic is worth; compare "
             "with the PR AUC of all lesions under Sites):", "",
             *_table(results, "pr_auc_rejected", list(MIMICS), sizes), "",
             "## Sites", "", "PR AUC within each site (rim+ of lesions):", "",
             *_table(results, "pr_auc", ["all lesions", *sites], sizes), ""]
    if outline is not None:
        outline_results, counts = outline
        lines += ["## The lesion mask: the read-out on the pipeline's masks and on the true outlines", "",
                  "The same patches, folds and rater labels; only the mask channel that the read-out measures "
                  "the lesion's edge, core and ring by differs (the true outline: the true lesion that overlaps "
                  "the pipeline lesion most; three outlines: the read-out of the pipeline's mask eroded, as given "
                  "and dilated by one voxel, 21 numbers, which needs no truth). "
                  "Median Dice of the two masks in the patches: "
                  f"{counts['patch_dice_median']:.2f}. Scored: the {counts['scored']} test lesions that overlap a "
                  f"true lesion ({counts['without_outline']} left out that do not).", "",
                  *_table(outline_results, "pr_auc", ["all lesions"], sizes), "",
                  "Paired (same lesions, patient-bootstrap 95 % CI), against the pipeline's masks: true outlines "
                  f"{_interval(counts['true_outlines'])}; three outlines {_interval(counts['three_outlines'])}.",
                  "",
                  "ROC AUC of every rim+ lesion against the rim− lesions with each mimic:", "",
                  *_table(outline_results, "auc", list(MIMICS), sizes), ""]
    return "\n".join([*lines, *(shift_lines or [])])


def run_analysis_parser(description: str, page: str, results_help: str) -> argparse.ArgumentParser:
    """The options every analysis of one classification.py run takes: RESULTS, --work, --bootstrap,
    --seed and --out (default RESULTS/``page``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results", type=Path, help=results_help)
    parser.add_argument("--work", type=Path, required=True,
                        help="a --work folder of the run's cohort (bids/ with sourcedata/synth_truth, derivatives/)")
    parser.add_argument("--bootstrap", type=int, default=500, help="patient bootstrap resamples (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--out", type=Path, help=f"markdown file to write (default RESULTS/{page})")
    return parser


def read_run_predictions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[pd.DataFrame, str]:
    """The run's ``classification_predictions.tsv`` and the code's commit (read before anything is written
    into a tracked results folder); a missing file or truth folder is a usage error."""
    path = args.results / "classification_predictions.tsv"
    if not path.exists():
        parser.error(f"{path}: missing; is {args.results} a classification.py --out folder?")
    if not (args.work / "bids" / "sourcedata" / "synth_truth").is_dir():
        parser.error(f"{args.work}: no bids/sourcedata/synth_truth; give the run's --work folder")
    commit = _load_benchmark_script("classification").git_commit()
    return pd.read_csv(path, sep="\t"), commit


def main(argv: list[str] | None = None) -> int:
    parser = run_analysis_parser(__doc__.splitlines()[0], "error_analysis.md", "a classification.py --out folder")
    parser.add_argument("--outlines", action="store_true",
                        help="also fit the read-out regression on the true lesion outlines in the same patches "
                             "(needs WORK/training_data, which classification.py writes)")
    parser.add_argument("--patch-spacing", type=float, default=1.0,
                        help="the run's --patch-spacing in mm (default 1.0), to rebuild its patch grid")
    parser.add_argument("--rank-shift", metavar="A,B",
                        help="also compare two methods of the run lesion by lesion: B's fold percentile rank "
                             "minus A's, by true class, rater label and mimic (did B learn the rater's errors?)")
    args = parser.parse_args(argv)
    if args.rank_shift is not None and len(args.rank_shift.split(",")) != 2:
        parser.error(f"--rank-shift {args.rank_shift}: give two methods as A,B")
    predictions, commit = read_run_predictions(parser, args)
    truth = lesion_truth(args.work, predictions)
    results = analyse(predictions, truth, args.bootstrap, args.seed)
    out = args.out or args.results / "error_analysis.md"
    command = "python benchmarks/error_analysis.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sites = sorted(truth["site"].unique())
    source = os.path.relpath(args.results / "classification.md", out.parent)
    outline = None
    if args.outlines:
        outline_predictions, counts = outline_comparison(args.work, predictions, args.patch_spacing)
        paired = _load_benchmark_script("seed_spread").paired_difference
        counts["true_outlines"] = paired(outline_predictions, TRUE_OUTLINES, PIPELINE_MASKS, args.bootstrap, args.seed)
        counts["three_outlines"] = paired(outline_predictions, THREE_OUTLINES, PIPELINE_MASKS, args.bootstrap,
                                          args.seed)
        outline = (analyse(outline_predictions, truth, args.bootstrap, args.seed), counts)
    shift_lines = None
    if args.rank_shift is not None:
        first, second = args.rank_shift.split(",")
        shift = rank_shift(predictions, truth, first, second, args.bootstrap, args.seed)
        shift_lines = rank_shift_lines(shift, first, second)
    text = report(results, subgroup_sizes(predictions, truth), sites, source, command, commit, outline, shift_lines)
    out.write_text(text)
    results.to_csv(out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.5f", na_rep="n/a")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
