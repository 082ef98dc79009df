"""Classification benchmark: our model, its ablations, the baselines and the oracle, side by side.

    python benchmarks/classification.py --jobs 16 --nprocs 16 --device auto   # paper-sized (88 patients, 5 folds)
    bash benchmarks/run_paper_sized.sh                       # the same on the GPU machine, results under $OUT/results
    python benchmarks/classification.py --subjects 24 --size small --folds 3 --methods asym,radiomics,oracle
    python benchmarks/classification.py --quick --out /tmp/bench   # tiny, for CI (never overwrites results/)

What it does, once for all methods:
1. writes a synthetic cohort (``bids_rim.synth.generate_cohort``, ``realistic`` difficulty; in
   ``--jobs`` processes when the generator offers it) and runs the product's own participant
   level on it (``bids_rim.cli.run.main``, no inference, ``--nprocs`` subjects at once);
2. gathers the patches with the rater's annotations as labels (``load_training_set``): this is
   what a user would train on, rater errors included;
3. matches every pipeline lesion to its true lesion (the truth centroid inside the lesion label
   map, else the nearest pipeline centroid within 4 mm) to get its TRUE class and the oracle's
   decision variable;
4. draws ONE patient-level K-fold split (``patient_folds``, fixed seed) and cross-validates
   every method on it: each (method, fold) is one task, trained by ``train_member`` on the
   rater's labels of the training patients with the seed ``cross_validate`` would give that
   fold, in ``--jobs`` worker processes (so the numbers do not depend on the number of jobs);
   every lesion of the test patients that has a true lesion is then predicted and scored
   against its TRUE class (with ``--label-one-in K`` each fold keeps the rater labels of only
   one in K of its training patients, the rest serving as unlabelled pretraining data);
5. the two observers (the oracle on ``observed_rim_cnr`` and the plain image-contrast observer on
   ``observed_cnr``) get a logistic calibration and a max-F1 threshold fitted on the same
   training patients (with true labels: they are ceilings, not products);
6. the reference ``readout_logistic``, a logistic regression on asym's parameter-free rim
   read-out (edge/core/ring medians and their contrast-to-noise ratios) fitted to the rater's
   labels of the same training patients, says how much the network's learned features add to
   the numbers they are given (``readout_logistic_outlines``: the same on the read-out of three
   outlines, the lesion mask eroded, as given and dilated by one voxel);
7. metrics from ``bids_rim.training.metrics`` with patient bootstrap 95 % CIs, written as
   ``classification.md``, ``classification.tsv``, per-lesion predictions and ROC/PR plots,
   after every finished method, so that a run cut short keeps what it finished and names the
   methods it did not (``--time-budget`` stops it cleanly, never silently). The finished folds of
   a method that did not finish them all go to ``classification_partial_predictions.tsv``, and the
   page compares them with every method's PR AUC on the same folds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEM = "classification"
PARTIAL_PREDICTIONS = f"{STEM}_partial_predictions.tsv"  # finished folds of methods that did not finish them all
MATCH_DISTANCE_MM = 4.0
HEADLINE_METRICS = ("pr_auc", "roc_auc", "partial_roc_auc_fpr0.1", "f1", "sensitivity", "specificity",
                    "balanced_accuracy", "mcc", "ece", "count_icc", "prl4_kappa")
OBSERVERS = {  # name -> (truth column it ranks by, description)
    "oracle": ("observed_rim_cnr", "ideal observer on each lesion's true rim CNR (synthetic truth; the ceiling)"),
    "contrast_observer": ("observed_cnr", ("plain shell-minus-core contrast of the noisy QSM over its noise "
                                          "(synthetic truth; fooled by veins and bright neighbours)")),
}
METHOD_DESCRIPTIONS = {
    "asym": "ours: asym QSM net with FLAIR FiLM, self-supervised pretraining and SupCon (default TrainConfig)",
    "asym_no_pretrain": "ablation: asym without pretraining (pretrain_epochs=0)",
    # How FLAIR conditions QSM, each against asym_no_pretrain (spatial FiLM at P/2): pretraining is
    # held off in all four, as its effect is mixed (docs/training.md) and it costs half of the training time.
    "asym_no_pretrain_film_channel": ("ablation: asym_no_pretrain with channel FiLM (pooled FLAIR) "
                                      "instead of spatial FiLM"),
    "asym_no_pretrain_gated_xattn": ("ablation: asym_no_pretrain with gated cross-attention (QSM voxels attend to "
                                     "pooled FLAIR) instead of spatial FiLM"),
    "asym_no_pretrain_film_two_stages": "ablation: asym_no_pretrain with spatial FiLM at P/2 and at P/4",
    "asym_pretrain_masked": "ablation: asym pretrained only by masked QSM reconstruction conditioned on FLAIR",
    "asym_pretrain_cross_modal": ("ablation: asym pretrained only by the cross-modal terms (FLAIR→QSM predictor, "
                                  "variance/covariance, InfoNCE)"),
    "asym_no_supcon": "ablation: asym without the contrastive term (supcon_weight=0, fixed)",
    "asym_fixed_readout": ("ablation: asym whose linear read-out path stays the logistic regression it starts "
                           "as (the network learns only what the read-out misses)"),
    "asym_readout_fallback": ("ablation: asym kept only where it beats, on the inner validation patients, the "
                              "regression on the read-out that it starts as (else that regression)"),
    "asym_small_head": ("ablation: asym with an MLP head of 8 hidden units instead of 48 (less room to add "
                        "to the read-out what few rim+ lesions support)"),
    "asym_readout_outlines": ("variant: asym whose read-out also reads the lesion mask eroded and dilated by one "
                              "voxel (21 numbers instead of 7; readout_outlines=3)"),
    "asym_head_penalty": ("variant: asym whose MLP head pays 0.1 · mean(head logit²) in fine-tuning, so the "
                          "network stays near the regression it starts as unless the training lesions pay for "
                          "the move (head_logit_penalty=0.1)"),
    "asym_outlines_head_penalty": "variant: asym_head_penalty with the read-out of three outlines (readout_outlines=3)",
    "asym_simulated_diffuse": ("variant: asym fine-tuned with a quarter of its rim− training patches made diffusely "
                               "paramagnetic (uniform 5–45 ppb inside the lesion), the start regression likewise "
                               "(simulated_diffuse_fraction=0.25)"),
    "asym_no_flair": "ablation: no FLAIR (arch qsm_only: the asym QSM path, FLAIR ignored)",
    "asym_early_fusion": ("ablation: symmetric early fusion (conditioning input_stack: [qsm, flair, mask] stacked "
                          "into asym's QSM stem, no FLAIR conditioning; same trunk, read-out, pretraining and SupCon)"),
    "early_fusion": ("baseline: an off-the-shelf early-fusion network (MONAI 3D ResNet-18, widened 0.25, on the "
                     "stacked channels; no read-out, no pretraining)"),
    "rimnet": "baseline: RimNet-style two-branch CNN",
    "qsmrimnet": "baseline: QSMRim-Net-style CNN with radiomic rim features",
    "radiomics": "baseline: hand-crafted rim features + random forest",
    **{name: description for name, (_, description) in OBSERVERS.items()},
    "readout_logistic": ("reference: logistic regression (rater labels) on asym's parameter-free rim read-out "
                         "(medians and contrast-to-noise ratios); what the network's learned features add to"),
    "readout_logistic_outlines": ("reference: readout_logistic on the read-out of three outlines (the lesion mask "
                                  "eroded, as given and dilated by one voxel; asym_readout_outlines's read-out)"),
}
READOUT_OUTLINES = {"readout_logistic": 1, "readout_logistic_outlines": 3}
UNTRAINED_METHODS = (*OBSERVERS, *READOUT_OUTLINES)  # fitted in the main process, no network
ALL_METHODS = tuple(METHOD_DESCRIPTIONS)
LOG_FORMAT = "%(asctime)s | %(name)s | %(message)s"
LOGGER = logging.getLogger("benchmarks.classification")  # outside bids_rim: its CLI adds a handler there


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that shapes one benchmark run (written into the results)."""

    subjects: int
    sites: int
    size: str
    seed: int
    folds: int
    patch_size: int
    patch_spacing_mm: float
    methods: tuple[str, ...]
    quick: bool
    bootstrap_resamples: int
    training_seed: int | None = None  # None: ``seed``; the cohort, split and bootstrap always follow ``seed``
    label_one_in: int = 1  # K > 1: each fold keeps the rater labels of one in K of its training patients
    lesion_outline: str = "given"  # the participant level's --lesion-outline
    qsm_noise_scale: float = 1.0  # ≠ 1 only for a noise study: the sites' QSM noise is scaled

    @property
    def task_seed(self) -> int:
        """Seed of the trained methods (each fold adds 100 × fold, as ``cross_validate`` does)."""
        return self.seed if self.training_seed is None else self.training_seed


@dataclass(frozen=True)
class Execution:
    """How a run is executed: its speed, not its numbers (every training task has its own seed).

    ``jobs`` worker processes generate the cohort and train the (method, fold) tasks, each with
    ``threads`` torch threads; ``nprocs`` subjects go through the participant level at once;
    ``device`` is ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``; ``time_budget_s`` (from
    the start of the run) stops the training stage and names what did not finish.
    """

    jobs: int = 1
    nprocs: int = 2
    threads: int = 1
    device: str = "cpu"
    time_budget_s: float | None = None


@dataclass
class StageClock:
    """Wall and CPU seconds of each stage (CPU includes finished child processes)."""

    wall_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def cpu_now() -> float:
        """CPU seconds used so far by this process and its reaped children."""
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def record(self, stage: str, wall_started: float, cpu_started: float) -> None:
        self.wall_s[stage] = time.perf_counter() - wall_started
        self.cpu_s[stage] = self.cpu_now() - cpu_started
        LOGGER.info("stage %s: %.0f s wall, %.0f CPU s", stage, self.wall_s[stage], self.cpu_s[stage])


# ----------------------------------------------------------------------------- cohort


def generate(settings: BenchmarkSettings, bids_dir: Path, jobs: int) -> dict:
    """The synthetic cohort, in ``jobs`` processes when ``generate_cohort`` has a ``jobs`` option.

    Without it the generator runs serially (logged and written into the results): the benchmark
    does not re-implement the generator's internals to parallelise it.
    """
    from bids_rim.synth import generate_cohort

    options = {"n_subjects": settings.subjects, "n_sites": settings.sites, "difficulty": "realistic",
               "size": settings.size, "seed": settings.seed, "progress": False}
    if settings.qsm_noise_scale != 1.0:
        options["qsm_noise_scale"] = settings.qsm_noise_scale
    parallel = "jobs" in inspect.signature(generate_cohort).parameters
    if parallel:
        options["jobs"] = jobs
    elif jobs > 1:
        LOGGER.warning("generate_cohort has no 'jobs' option: generating the %d subjects serially", settings.subjects)
    summary = asdict(generate_cohort(bids_dir, **options))
    summary["generation_jobs"] = jobs if parallel else 1
    return summary


def check_work_folder(settings: BenchmarkSettings, work: Path) -> None:
    """Record what shapes the cohort and patches in ``work``; refuse to reuse a folder made differently."""
    shape = {"subjects": settings.subjects, "sites": settings.sites, "size": settings.size, "seed": settings.seed,
             "patch_size": settings.patch_size, "patch_spacing_mm": settings.patch_spacing_mm}
    if settings.lesion_outline != "given":  # folders made before the option have no such key
        shape["lesion_outline"] = settings.lesion_outline
    if settings.qsm_noise_scale != 1.0:
        shape["qsm_noise_scale"] = settings.qsm_noise_scale
    path = work / "benchmark_work.json"
    if path.exists() and json.loads(path.read_text()) != shape:
        raise ValueError(f"{work}: made for {json.loads(path.read_text())}, not {shape}; choose another --work")
    if not path.exists() and any(work.iterdir()):
        raise ValueError(f"{work}: not empty and not a benchmark work folder; choose another --work")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shape))


def prepare_cohort(settings: BenchmarkSettings, execution: Execution, work: Path,
                   clock: StageClock) -> tuple[Path, Path, dict]:
    """Write the cohort and run the participant level once (both reused when ``work`` already has them)."""
    from bids_rim.cli.exit_codes import EXIT_INTERRUPTED, EXIT_TERMINATED
    from bids_rim.cli.run import main as bids_rim_main

    bids_dir, output_dir = work / "bids", work / "derivatives"
    check_work_folder(settings, work)
    summary_path = work / "cohort_summary.json"
    if not summary_path.exists():
        wall, cpu = time.perf_counter(), clock.cpu_now()
        summary = generate(settings, bids_dir, execution.jobs)
        clock.record("cohort generation", wall, cpu)
        summary["generation_s"], summary["generation_cpu_s"] = clock.wall_s["cohort generation"], \
            clock.cpu_s["cohort generation"]
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
    summary = json.loads(summary_path.read_text())
    record_path = work / "participant_level.json"
    if not record_path.exists():
        wall, cpu = time.perf_counter(), clock.cpu_now()
        # The generated cohort is valid BIDS (the synth tests run the validator on it); skipping
        # the check here saves minutes at 88 subjects and the validator's binary on GPU machines.
        code = bids_rim_main([str(bids_dir), str(output_dir), "participant", "--skip-bids-validation",
                              "-d", str(bids_dir / "derivatives" / "lesion_masks"), "--work-dir", str(work / "work"),
                              "--no-inference", "--nprocs", str(execution.nprocs), "--omp-nthreads", "1",
                              "--seed", str(settings.seed),
                              "--patch-size", str(settings.patch_size),
                              "--patch-spacing", str(settings.patch_spacing_mm),
                              "--lesion-outline", settings.lesion_outline])
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):  # stopped: no record, so the next run redoes it
            raise KeyboardInterrupt
        clock.record("participant level", wall, cpu)
        expected = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
        done = {p.name for p in output_dir.glob("sub-*") if any(p.rglob("*_desc-lesions_patches.npz"))}
        record = {"seconds": clock.wall_s["participant level"], "cpu_seconds": clock.cpu_s["participant level"],
                  "nprocs": execution.nprocs, "exit_code": code or 0, "failed": [s for s in expected if s not in done],
                  "environment": numeric_environment()}
        if not done:
            raise RuntimeError(f"{bids_dir}: the participant level produced no patches (exit code {code})")
        record_path.write_text(json.dumps(record))
    record = json.loads(record_path.read_text())
    summary["participant_level_s"] = record["seconds"]
    summary["participant_level_cpu_s"] = record.get("cpu_seconds", float("nan"))
    summary["participant_level_nprocs"] = record.get("nprocs", 2)
    summary["participant_level_failed"] = record["failed"]
    summary["participant_level_environment"] = record.get("environment")
    return bids_dir, output_dir, summary


TruthColumn = Callable[[pd.DataFrame], pd.Series]  # a session's truth table -> one number per true lesion


def matched_truth(output_dir: Path, bids_dir: Path, meta: pd.DataFrame,
                  columns: Mapping[str, TruthColumn]) -> pd.DataFrame:
    """Numbers from the synthetic truth for every pipeline lesion (rows aligned with ``meta``).

    A pipeline lesion receives the true lesions whose centroid lies in its label map (else the
    nearest pipeline centroid within 4 mm), with the product's own annotation matcher; of several
    true lesions it takes each column's maximum (so a 0/1 column says "any of them"). Lesions
    with no true lesion keep NaN and are not evaluated.
    """
    import nibabel as nib

    from bids_rim.bidsio.training_data import match_annotations

    truth_dir = bids_dir / "sourcedata" / "synth_truth"
    result = pd.DataFrame(np.nan, index=meta.index, columns=list(columns))
    for (participant, session), rows in meta.groupby(["participant_id", "session_id"]):
        prefix = participant if session == "n/a" else f"{participant}_{session}"
        anat = output_dir / participant / ("" if session == "n/a" else session) / "anat"
        table = pd.read_csv(anat / f"{prefix}_desc-lesions_table.tsv", sep="\t", na_values="n/a")
        label_map = nib.load(anat / f"{prefix}_space-QSM_desc-lesions_dseg.nii.gz")
        truth_path = truth_dir / f"{prefix}_truth.tsv"
        if not truth_path.exists():
            raise FileNotFoundError(f"{truth_path}: no synthetic truth for this session")
        truth = pd.read_csv(truth_path, sep="\t", na_values="n/a")
        for column, of_truth in columns.items():
            points = truth[["x_mm", "y_mm", "z_mm"]].assign(rim=of_truth(truth).astype(float))
            matched = match_annotations(table, label_map, points, max_distance_mm=MATCH_DISTANCE_MM)
            matched.index = table["lesion_id"].to_numpy()
            result.loc[rows.index, column] = matched.reindex(rows["lesion_id"].to_numpy()).to_numpy()
    return result


def truth_of_lesions(output_dir: Path, bids_dir: Path, meta: pd.DataFrame) -> pd.DataFrame:
    """True class (``true_label``: rim+ when any true lesion it holds is) and the observers' scores
    of every pipeline lesion, as ``matched_truth`` matches them."""
    columns: dict[str, TruthColumn] = {"true_label": lambda truth: truth["class"] == "rim+"}
    columns.update({column: (lambda truth, column=column: truth[column]) for column, _ in OBSERVERS.values()})
    return matched_truth(output_dir, bids_dir, meta, columns)


def lesion_map_dice(output_dir: Path, bids_dir: Path, meta: pd.DataFrame) -> pd.Series:
    """Dice of the pipeline's QSM-space lesion map with the true lesion map, per session.

    A check on the participant level itself: if its lesions do not lie on the true lesions
    (e.g. a failed FLAIR-to-QSM registration), no classifier can be judged fairly.
    """
    import nibabel as nib

    dice = {}
    for participant, session in meta[["participant_id", "session_id"]].drop_duplicates().itertuples(index=False):
        prefix = participant if session == "n/a" else f"{participant}_{session}"
        anat = output_dir / participant / ("" if session == "n/a" else session) / "anat"
        pipeline = np.asarray(nib.load(anat / f"{prefix}_space-QSM_desc-lesions_dseg.nii.gz").dataobj) > 0
        truth_path = bids_dir / "sourcedata" / "synth_truth" / f"{prefix}_desc-truth_lesions.nii.gz"
        truth = np.asarray(nib.load(truth_path).dataobj) > 0
        if truth.shape != pipeline.shape:
            raise ValueError(f"{truth_path}: grid {truth.shape} differs from the pipeline's QSM grid {pipeline.shape}")
        total = pipeline.sum() + truth.sum()
        dice[prefix] = float(2 * (pipeline & truth).sum() / total) if total else float("nan")
    return pd.Series(dice, name="dice")


# ----------------------------------------------------------------------------- methods


def method_config(method: str, settings: BenchmarkSettings):
    """The TrainConfig of a trained network or radiomics model (``None`` for the untrained methods)."""
    from bids_rim.training.config import TrainConfig

    if method in UNTRAINED_METHODS:
        return None
    base = TrainConfig(folds=settings.folds, seed=settings.task_seed, patch_size=settings.patch_size,
                       patch_spacing_mm=settings.patch_spacing_mm, train_final_model=False,
                       bootstrap_resamples=settings.bootstrap_resamples)
    if settings.quick:  # tiny models and epochs: CI checks that the code runs, not how well
        base = replace(base, width=4, pretrain_epochs=1, finetune_epochs=2, batch_size=16,
                       early_fusion_widen_factor=0.125, patience=2)
    variants = {
        "asym": {},
        "asym_no_pretrain": {"pretrain_epochs": 0},
        "asym_no_pretrain_film_channel": {"pretrain_epochs": 0, "conditioning": "film_channel"},
        "asym_no_pretrain_gated_xattn": {"pretrain_epochs": 0, "conditioning": "gated_xattn"},
        "asym_no_pretrain_film_two_stages": {"pretrain_epochs": 0, "film_stages": (0, 1)},
        "asym_pretrain_masked": {"pretrain_objectives": ("masked",)},
        "asym_pretrain_cross_modal": {"pretrain_objectives": ("predictor", "variance", "infonce")},
        "asym_no_supcon": {"supcon_weight": 0.0, "learn_supcon_weight": False},
        "asym_fixed_readout": {"train_readout_logit": False},
        "asym_readout_fallback": {"readout_fallback": True},
        "asym_small_head": {"head_width": 8},
        "asym_readout_outlines": {"readout_outlines": 3},
        "asym_head_penalty": {"head_logit_penalty": 0.1},
        "asym_outlines_head_penalty": {"readout_outlines": 3, "head_logit_penalty": 0.1},
        "asym_simulated_diffuse": {"simulated_diffuse_fraction": 0.25},
        "asym_no_flair": {"arch": "qsm_only"},
        "asym_early_fusion": {"conditioning": "input_stack"},
        "early_fusion": {"arch": "early_fusion"},
        "rimnet": {"arch": "rimnet"},
        "qsmrimnet": {"arch": "qsmrimnet"},
        "radiomics": {"arch": "radiomics"},
    }
    return replace(base, **variants[method])


@dataclass(frozen=True)
class FoldTask:
    """One learned method trained on one fold's training patients and scored on its test patients.

    ``withheld_patients`` are training patients whose rater labels the task does not see: their
    lesions are pretrained on, never fine-tuned on (``--label-one-in``).
    """

    method: str
    fold: int  # 1-based, as in cross_validate
    test_patients: tuple[str, ...]
    withheld_patients: tuple[str, ...] = ()


def withheld_label_patients(meta: pd.DataFrame, folds: list[list[str]], label_one_in: int, seed: int
                            ) -> list[list[str]]:
    """Per fold, the training patients whose rater labels are withheld: all but one in ``label_one_in``.

    Simulates a site with many more unlabelled lesions than labelled ones, the case pretraining is
    for. The kept patients are one of ``label_one_in`` groups of the fold's labelled training
    patients balanced in rim+ lesions, rim− lesions and sites (``balanced_patient_groups``, seed
    ``seed + fold``), so each fold keeps a representative labelled subset.
    """
    from bids_rim.training.crossval import balanced_patient_groups

    if label_one_in == 1:
        return [[] for _ in folds]
    labelled = meta[meta["label"].notna()]
    withheld = []
    for fold, test_patients in enumerate(folds, start=1):
        training = labelled[~labelled["participant_id"].isin(test_patients)]
        kept = balanced_patient_groups(training, label_one_in, seed + fold)[0]
        withheld.append(sorted(set(training["participant_id"]) - set(kept)))
    return withheld


def without_labels_of(meta: pd.DataFrame, patients) -> pd.DataFrame:
    """``meta`` with the rater labels of ``patients`` removed (NaN): what a task trained without them sees."""
    return meta.assign(label=meta["label"].where(~meta["participant_id"].isin(list(patients))))


def save_training_data(patches: np.ndarray, meta: pd.DataFrame, evaluable: np.ndarray, folder: Path) -> Path:
    """Patches (``.npy``, memory-mapped by the workers) and lesion table, written once for every task.

    Both are written atomically: the workers of another run on the same work folder keep reading
    the files they opened (the same content, as the work folder fixes the cohort).
    """
    from bids_rim.bidsio.derivatives import atomic_write_with

    def write_patches(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a path would get ".npy" appended
            np.save(handle, patches)

    atomic_write_with(folder / "patches.npy", write_patches)
    atomic_write_with(folder / "meta.pkl", meta.assign(evaluable=evaluable).to_pickle)
    return folder


def _worker_setup(threads: int) -> None:
    """Each worker: fixed torch threads, deterministic cuDNN (same numbers whatever the number of jobs)."""
    import torch

    torch.set_num_threads(threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _worker_logging() -> None:
    """Workers log warnings only, in the main format: 40 tasks' epoch lines would bury the progress log."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S")


def run_fold_task(task: FoldTask, config, data_folder: Path, device_name: str, threads: int) -> dict:
    """Train one (method, fold) with ``train_member`` and predict the fold's evaluable test lesions.

    The seed is the one ``cross_validate`` gives this fold (``config.seed + 100 * fold``), so the
    member equals the one a sequential ``cross_validate`` would train.
    """
    from bids_rim.training.crossval import member_probabilities, train_member
    from bids_rim.training.inference import resolve_device

    _worker_setup(threads)
    device = resolve_device(device_name)
    wall, cpu = time.perf_counter(), time.process_time()
    patches = np.load(data_folder / "patches.npy", mmap_mode="r")
    meta = pd.read_pickle(data_folder / "meta.pkl")
    patients = meta["participant_id"].to_numpy()
    train_patients = sorted(set(patients) - set(task.test_patients))
    training_meta = without_labels_of(meta.drop(columns="evaluable"), task.withheld_patients)
    member = train_member(patches, training_meta, train_patients, config, device,
                          seed=config.seed + 100 * task.fold, name=f"{task.method} fold {task.fold}/{config.folds}")
    rows = np.flatnonzero(np.isin(patients, task.test_patients) & meta["evaluable"].to_numpy())
    probabilities = member_probabilities(member, config, np.asarray(patches[rows]), device)
    predictions = pd.DataFrame({"row": rows, "fold": task.fold, "rim_probability": probabilities,
                                "threshold": member.threshold})
    return {"task": task, "predictions": predictions, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu, "device": str(device)}


def logistic_out_of_fold(features: np.ndarray, fit_labels: np.ndarray, fittable: np.ndarray, meta: pd.DataFrame,
                         folds: list[list[str]], evaluable: np.ndarray,
                         withheld: list[list[str]] | None = None) -> pd.DataFrame:
    """Per fold, a logistic regression on ``features`` (lesions × k) fitted to ``fit_labels`` of the
    training patients' ``fittable`` lesions (less the fold's ``withheld`` patients); it predicts the
    test patients' ``evaluable`` lesions.

    The max-F1 threshold is chosen on the same training lesions (there is no inner validation
    split here). No class weights: the probabilities keep the training prevalence.
    """
    from sklearn.linear_model import LogisticRegression

    from bids_rim.training.calibration import choose_threshold

    patients = meta["participant_id"].to_numpy()
    features = np.asarray(features, dtype=float).reshape(len(meta), -1)
    finite = np.isfinite(features).all(axis=1)
    parts = []
    for fold, test_patients in enumerate(folds, start=1):
        in_test = np.isin(patients, test_patients)
        kept = ~np.isin(patients, withheld[fold - 1]) if withheld else True
        train = np.flatnonzero(fittable & finite & ~in_test & kept)
        test = np.flatnonzero(evaluable & finite & in_test)
        model = LogisticRegression(max_iter=1000).fit(features[train], fit_labels[train].astype(int))
        threshold = choose_threshold(model.predict_proba(features[train])[:, 1], fit_labels[train])
        parts.append(pd.DataFrame({"row": test, "fold": fold,
                                   "rim_probability": model.predict_proba(features[test])[:, 1],
                                   "threshold": threshold}))
    return pd.concat(parts, ignore_index=True)


def evaluate_observer(scores: np.ndarray, true_labels: np.ndarray, meta: pd.DataFrame, folds: list[list[str]],
                      evaluable: np.ndarray) -> pd.DataFrame:
    """An observer's score turned into a probability by a logistic fit on the training patients.

    The fit and the max-F1 threshold use the training patients' TRUE labels: the observers are
    ceilings (they know the truth), so nothing about them is learned from the rater.
    """
    return logistic_out_of_fold(scores, true_labels, evaluable, meta, folds, evaluable)


def evaluate_readout_logistic(patches: np.ndarray, meta: pd.DataFrame, folds: list[list[str]],
                              evaluable: np.ndarray, withheld: list[list[str]] | None = None,
                              outlines: int = 1) -> pd.DataFrame:
    """The read-out reference: fitted to the RATER's labels of the training patients, like the
    trained methods (the same lesions they train on, less each fold's ``withheld`` patients),
    scored on the same test lesions. ``outlines``: the read-out of the mask as given (1) or also
    eroded and dilated (3)."""
    from bids_rim.models.asym import rim_readout_of_patches

    rater = meta["label"].to_numpy(dtype=float)
    labelled = np.isfinite(rater)
    return logistic_out_of_fold(rim_readout_of_patches(patches, outlines=outlines), np.nan_to_num(rater), labelled,
                                meta, folds, evaluable, withheld)


# ----------------------------------------------------------------------------- metrics and output


def summarise(predictions: pd.DataFrame, settings: BenchmarkSettings) -> pd.DataFrame:
    """One row per method and metric: pooled out-of-fold estimate and patient-bootstrap 95 % CI."""
    from bids_rim.training.metrics import all_metrics, bootstrap_ci

    rows = []
    for method, part in predictions.groupby("method", sort=False):
        arrays = (part["participant_id"].to_numpy(), part["true_label"].to_numpy().astype(int),
                  part["rim_probability"].to_numpy(), part["threshold"].to_numpy())
        estimate = all_metrics(*arrays)
        intervals = bootstrap_ci(*arrays, n_resamples=settings.bootstrap_resamples, seed=settings.seed)
        for metric, value in estimate.items():
            low, high = intervals.get(metric, (np.nan, np.nan))
            rows.append({"method": method, "metric": metric, "estimate": value, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def plot_curves(predictions: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Pooled out-of-fold ROC and PR curves of every method on one figure each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    paths = []
    for kind in ("roc", "pr"):
        figure, axis = plt.subplots(figsize=(6, 5), dpi=110)
        for method, part in predictions.groupby("method", sort=False):
            labels, scores = part["true_label"].astype(int), part["rim_probability"]
            style = {"color": "k", "lw": 2} if method == "oracle" else {"lw": 1.2}
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
            else:
                precision, recall, _ = precision_recall_curve(labels, scores)
                x, y = recall, precision
            axis.plot(x, y, label=method, drawstyle="steps-post" if kind == "pr" else "default", **style)
        prevalence = float(predictions.drop_duplicates("row")["true_label"].mean())
        if kind == "roc":
            axis.plot([0, 1], [0, 1], ls=":", color="grey")
            axis.axvline(0.1, ls="--", color="grey", lw=0.8)
            axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (true labels, out of fold)")
        else:
            axis.axhline(prevalence, ls=":", color="grey", label=f"chance ({prevalence:.2f})")
            axis.set(xlabel="recall", ylabel="precision", title="Precision-recall (true labels, out of fold)")
        axis.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
        figure.tight_layout()
        path = out_dir / f"{STEM}_{kind}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def git_commit() -> str:
    """The code's commit (``-dirty`` when the tree has changes); ``BIDS_RIM_COMMIT`` names it where there is no git."""
    if os.environ.get("BIDS_RIM_COMMIT"):
        return f"{os.environ['BIDS_RIM_COMMIT']} (from BIDS_RIM_COMMIT)"
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                                   text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        described = ""
    return described or "unknown (no git repository here; set BIDS_RIM_COMMIT)"


#: Libraries whose version can change the participant level or the models' numbers (torch is named
#: on its own). Two runs pair lesion by lesion only on one participant level; another CPU (numpy,
#: ITK and torch pick SIMD code paths by CPU) or other versions of these can move a patch's values
#: in the last digits.
NUMERIC_LIBRARIES = ("antspyx", "numpy", "scipy", "scikit-learn", "nibabel", "monai")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        model_lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        model_lines = []
    return model_lines[0].split(":", 1)[1].strip() if model_lines else (platform.processor() or platform.machine())


def numeric_environment() -> dict[str, str]:
    """The CPU model and the installed version of each of ``NUMERIC_LIBRARIES`` ("not installed" where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    environment = {"cpu": cpu_model()}
    for name in NUMERIC_LIBRARIES:
        try:
            environment[name] = version(name)
        except PackageNotFoundError:
            environment[name] = "not installed"
    return environment


def _environment_text(environment: Mapping[str, str]) -> str:
    return ", ".join(f"{name} {value}" for name, value in environment.items())


def participant_level_provenance(recorded: Mapping[str, str] | None, current: Mapping[str, str]) -> str:
    """A sentence for a reused participant level not (known to be) made on this run's CPU and libraries; else ""."""
    if recorded is None:
        return ("The run that made the participant level did not record its CPU and library versions, so they "
                "may differ from this run's.")
    changed = {name: f"{recorded.get(name, 'not recorded')} (now {value})" for name, value in current.items()
               if recorded.get(name) != value}
    if not changed:
        return ""
    return ("The participant level was made on another CPU or with other libraries than this run's: "
            f"{_environment_text(changed)}.")


def machine_description(execution: Execution | None = None) -> str:
    """CPU, cores, load, training device (when ``execution`` is given; a GPU by name), OS, Python, torch,
    the numeric libraries and git commit of this run."""
    import torch

    from bids_rim.config import usable_cpus

    environment = numeric_environment()
    training_device = ""
    if execution is not None:
        device = execution.device
        if device.startswith("cuda"):
            index = torch.device(device).index or 0
            properties = torch.cuda.get_device_properties(index)
            device = f"{device} = {properties.name} ({properties.total_memory / 2**30:.0f} GiB)"
        training_device = f"training device {device}; "
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libraries = {name: value for name, value in environment.items() if name != "cpu"}
    usable, machine = usable_cpus(), os.cpu_count()
    cpus = f"{usable} logical CPUs" + ("" if usable == machine else f" of the machine's {machine}") + " usable"
    return (f"{environment['cpu']}; {cpus} (load average {os.getloadavg()[0]:.1f} at "
            f"the start); {memory_gib:.0f} GiB RAM; {training_device}{platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; torch {torch.__version__}; {_environment_text(libraries)}; "
            f"bids_rim git {git_commit()}")


def _cell(table: pd.DataFrame, method: str, metric: str) -> str:
    row = table[(table["method"] == method) & (table["metric"] == metric)]
    if row.empty or not np.isfinite(row["estimate"].iloc[0]):
        return "n/a"
    estimate, low, high = row[["estimate", "ci_low", "ci_high"]].iloc[0]
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _value(table: pd.DataFrame, method: str, metric: str, column: str = "estimate") -> float:
    row = table[(table["method"] == method) & (table["metric"] == metric)]
    return float(row[column].iloc[0]) if not row.empty else float("nan")


def interpretation(table: pd.DataFrame, noise_study: bool = False) -> str:
    """Plain sentences of what the PR AUCs say, against the issue's goals; nothing softened.

    A noise study (``--qsm-noise-scale``) is not the benchmark's cohort, so its page reports the
    same differences without judging the goals.
    """
    methods = list(dict.fromkeys(table["method"]))
    sentences = ["This is a noise study, not the benchmark's cohort: the issue's goals are not judged here."
                 ] if noise_study else []
    baselines = [m for m in ("rimnet", "qsmrimnet", "radiomics", "early_fusion") if m in methods]
    if "asym" in methods:
        ours = _value(table, "asym", "pr_auc")
        if baselines:
            best = max(baselines, key=lambda m: _value(table, m, "pr_auc"))
            margin = ours - _value(table, best, "pr_auc")
            separated = _value(table, "asym", "pr_auc", "ci_low") > _value(table, best, "pr_auc", "ci_high")
            goal = margin >= 0.05 and separated
            sentences.append(
                f"asym reaches a PR AUC of {ours:.3f}; the best baseline is {best} at "
                f"{_value(table, best, 'pr_auc'):.3f} (difference {margin:+.3f}); the intervals "
                f"{'do not overlap' if separated else 'overlap'}."
                + ("" if noise_study else f" The goal (asym ahead by ≥ 0.05 with non-overlapping intervals) is "
                                          f"{'met' if goal else 'NOT met'}."))
        if "oracle" in methods:
            gap = _value(table, "oracle", "pr_auc") - ours
            sentences.append(f"The oracle reaches {_value(table, 'oracle', 'pr_auc'):.3f}, {gap:.3f} above asym"
                             + ("." if noise_study else
                                f"; the goal (within 0.05 of the oracle) is {'met' if gap <= 0.05 else 'NOT met'}."))
        if "readout_logistic" in methods:
            delta = ours - _value(table, "readout_logistic", "pr_auc")
            sentences.append(f"asym is {delta:+.3f} PR AUC from a logistic regression on its own rim read-out "
                             f"numbers: that is what its learned QSM/FLAIR features add.")
        ablations = ("asym_no_pretrain", "asym_pretrain_masked", "asym_pretrain_cross_modal", "asym_no_supcon",
                     "asym_no_flair", "asym_early_fusion")
        for ablation in ablations:
            if ablation in methods:
                delta = ours - _value(table, ablation, "pr_auc")
                sentences.append(f"Against {ablation} the full model differs by {delta:+.3f} PR AUC"
                                 f"{' (the ablated variant is better)' if delta < 0 else ''}.")
    if "oracle" in methods and "contrast_observer" in methods:
        sentences.append("The plain image-contrast observer reaches "
                         f"{_value(table, 'contrast_observer', 'pr_auc'):.3f}: "
                         f"the gap to the oracle is what veins, blooming and bright neighbours cost a naive reader.")
    prevalence = _value(table, methods[0], "prevalence") if methods else float("nan")
    at_chance = [m for m in methods if m not in OBSERVERS and _value(table, m, "pr_auc", "ci_low") <= prevalence]
    if at_chance:
        sentences.append(f"The PR AUC interval of {', '.join(at_chance)} reaches down to chance: on this cohort "
                         f"{'it has' if len(at_chance) == 1 else 'they have'} not shown that "
                         f"{'it' if len(at_chance) == 1 else 'they'} "
                         f"learned the rim.")
    sentences.append(f"Chance PR AUC is the prevalence, {prevalence:.3f}. With this many patients the "
                     f"bootstrap intervals are wide; differences inside them are not evidence.")
    return " ".join(sentences)


def run_section(run: RunRecord) -> list[str]:
    """How the run was executed and how long each stage took (wall and CPU seconds)."""
    execution, summary, clock = run.execution, run.summary, run.clock
    stages = {"cohort generation": (summary.get("generation_s"), summary.get("generation_cpu_s")),
              "participant level": (summary.get("participant_level_s"), summary.get("participant_level_cpu_s")),
              **{stage: (clock.wall_s[stage], clock.cpu_s.get(stage)) for stage in clock.wall_s
                 if stage not in ("cohort generation", "participant level")}}
    cached = [stage for stage in ("cohort generation", "participant level") if stage not in clock.wall_s]
    provenance = (participant_level_provenance(summary.get("participant_level_environment"), numeric_environment())
                  if "participant level" in cached else "")
    return [
        "## Run",
        "",
        f"{execution.jobs} worker process(es) (cohort generation: {summary.get('generation_jobs', 1)}; training: one "
        f"(method, fold) task each, {execution.threads} torch thread(s), seeded per task as `cross_validate` seeds "
        f"the fold, so the numbers do not depend on the number of jobs); participant level "
        f"`--nprocs {summary.get('participant_level_nprocs', execution.nprocs)} --omp-nthreads 1`; training device "
        f"`{execution.device}`"
        + (f"; time budget {execution.time_budget_s:.0f} s" if execution.time_budget_s is not None else "") + ".",
        "",
        "| stage | wall (s) | CPU (s) |",
        "|---|---|---|",
        *(f"| {stage} | {_seconds(wall)} | {_seconds(cpu)} |" for stage, (wall, cpu) in stages.items()),
        "",
        *([f"({', '.join(cached)} reused from the work folder: times are those of the run that made them.)", ""]
          if cached else []),
        *([provenance, ""] if provenance else []),
        "Training and prediction per method, summed over its folds (the folds of all methods share the workers):",
        "",
        "| method | wall (s) | CPU (s) |",
        "|---|---|---|",
        *(f"| {method} | {_seconds(run.method_wall_s[method])} | {_seconds(run.method_cpu_s.get(method))} |"
          for method in run.method_wall_s),
        "",
    ]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.0f}"


def ece_above_interval(table: pd.DataFrame) -> list[str]:
    """Methods whose ECE estimate lies below its own bootstrap interval (ECE's small-sample upward bias)."""
    ece = table[table["metric"] == "ece"]
    return ece.loc[ece["estimate"] < ece["ci_low"], "method"].tolist()


def write_markdown(path: Path, table: pd.DataFrame, run: RunRecord, plots: list[Path]) -> None:
    """The results page: setup, labels, cohort, table with CIs, timings and what the numbers say."""
    settings, summary, command, label_report = run.settings, run.summary, run.command, run.labels
    methods = list(dict.fromkeys(table["method"]))
    above = ece_above_interval(table)
    header = "| method | " + " | ".join(HEADLINE_METRICS) + " | time (s) |"
    paper_sized = (settings.subjects, settings.sites, settings.size, settings.folds, settings.patch_size,
                   settings.label_one_in, settings.qsm_noise_scale, set(settings.methods)
                   ) == (88, 3, "full", 5, 32, 1, 1.0, set(ALL_METHODS))
    lines = [
        f"# Classification benchmark{' (QUICK: CI smoke run, numbers meaningless)' if settings.quick else ''}",
        "",
        *([] if paper_sized or settings.quick else
          [("**This is NOT the paper-sized run** (88 patients, 3 sites, full size, 5 folds, every method): it is a "
           "smaller configuration that fits the time available; read its intervals accordingly."), ""]),
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; seed {settings.seed}"
        + ("" if settings.training_seed is None else f" (trained methods: training seed {settings.training_seed})")
        + ("" if settings.label_one_in == 1 else f"; rater labels of one in {settings.label_one_in} training patients"),
        f"- Machine: {run.machine}",
        (f"- Settings: {settings.subjects} subjects, {settings.sites} sites, size `{settings.size}`, "
        f"{settings.folds}-fold patient-level cross-validation (one split for every method), patches "
        f"{settings.patch_size}³ at {settings.patch_spacing_mm} mm or the QSM's own voxel size where coarser, "
        f"{settings.bootstrap_resamples} bootstrap resamples over patients"
        + ("." if settings.lesion_outline == "given" else
           "; lesion borders redrawn at half the FLAIR contrast (`--lesion-outline refined`).")),
        *([] if settings.qsm_noise_scale == 1.0 else
          [(f"- **NOISE STUDY, NOT A BENCHMARK**: every site's QSM noise is scaled by {settings.qsm_noise_scale:g} "
            "(`--qsm-noise-scale`); the cohort is otherwise the same draw as at the realistic noise.")]),
        "",
        "## Labels",
        "",
        ("Every model is **trained on the rater's annotations** (`derivatives/rim_annotations`, rater errors "
        "included), as a user would train on their own annotations. Every method, the oracle included, is "
        "**evaluated against the TRUE class** from the synthetic truth (`sourcedata/synth_truth`), so the "
        "numbers measure what is real, not agreement with the rater."),
        (f"Evaluated lesions: {label_report['evaluated']} of {label_report['pipeline_lesions']} pipeline lesions "
        f"({label_report['true_rim_positive']} truly rim+) in {label_report['evaluated_patients']} patients; "
        f"{label_report['no_truth']} pipeline lesions had no true lesion within {MATCH_DISTANCE_MM:g} mm and "
        f"{label_report['outside_folds']} lesions belong to patients without any rater label (never tested). "
        f"{label_report['annotated_matched']} pipeline lesions received a rater label. "
        f"Rater vs truth on the evaluated lesions: {label_report['rater_unlabelled']} not annotated, rater "
        f"sensitivity {label_report['rater_sensitivity']:.3f}, specificity {label_report['rater_specificity']:.3f}."),
        "",
        *([] if settings.label_one_in == 1 else [
            (f"**Labels withheld (`--label-one-in {settings.label_one_in}`):** each fold keeps the rater labels of "
             f"one in {settings.label_one_in} of its training patients (a group balanced in rim+ lesions, rim− "
             "lesions and sites); the other training patients' lesions are unlabelled, as at a site with many "
             "more unlabelled lesions than labelled: the pretrained methods learn from their patches, nothing is "
             "fine-tuned or fitted on their labels. Per fold, labelled training patients / lesions (rim+) and "
             "unlabelled training lesions: "
             + "; ".join(f"fold {fold}: {n['patients']} / {n['lesions']} ({n['rim_positive']}) and "
                         f"{n['unlabelled_lesions']}"
                         for fold, n in enumerate(label_report["training_labels"], start=1)) + "."),
            ""]),
        "## Cohort",
        "",
        f"`realistic` difficulty: {summary['n_lesions']} true lesions, {summary['n_rim_positive']} rim+ "
        f"(prevalence {summary['lesion_prevalence']:.3f}); the generator's own **oracle PR AUC over the whole "
        f"cohort is {summary['oracle_pr_auc']:.3f}** (image-contrast observer "
        f"{summary['image_contrast_pr_auc']:.3f}). "
        + (f"**The participant level failed for {len(summary['participant_level_failed'])} subject(s) "
           f"({', '.join(summary['participant_level_failed'])}); they are left out of everything below.**"
           if summary["participant_level_failed"] else "It succeeded for every subject."),
        "",
        f"Participant-level lesions vs the true lesions (Dice of the QSM-space label maps, per session): median "
        f"{summary['lesion_map_dice']['median']:.2f} (range {summary['lesion_map_dice']['min']:.2f}-"
        f"{summary['lesion_map_dice']['max']:.2f}); "
        + (f"**{len(summary['lesion_map_dice']['below_0.5'])} session(s) below 0.5** "
           f"({', '.join(summary['lesion_map_dice']['below_0.5'])}): there the pipeline's lesions do not lie on the "
           f"true ones (the rater's masks are drawn on FLAIR, so this points at the FLAIR-to-QSM alignment) and "
           f"those lesions mostly drop out of the evaluation for lack of a true match."
           if summary["lesion_map_dice"]["below_0.5"] else "no session below 0.5."),
        "",
        "## Results (pooled out-of-fold, estimate [95 % CI])",
        "",
        header,
        "|" + "---|" * (len(HEADLINE_METRICS) + 2),
        *(f"| {m} | " + " | ".join(_cell(table, m, k) for k in HEADLINE_METRICS)
          + f" | {run.method_wall_s.get(m, float('nan')):.0f} |" for m in methods),
        "",
        *([f"- **Not finished ({run.unfinished_reason}): {', '.join(run.pending)}**"] if run.pending else []),
        *(f"- **{m} FAILED** and is missing from the table: {reason}" for m, reason in run.failures.items()),
        "",
        *partial_section(run),
        "Methods: " + "; ".join(f"**{m}** {METHOD_DESCRIPTIONS[m]}" for m in methods) + ".",
        ("Time is the training and prediction of the method, summed over its folds (they run in parallel). "
        "Threshold-based metrics use each fold's own threshold (validation patients for models, training "
        "patients for the observers and readout_logistic). count_icc and prl4_kappa compare per-patient rim+ "
        "counts with the truth."),
        *([] if not above else [
            (f"The ece interval lies wholly above the estimate for {', '.join(above)}: ECE is biased upward in "
             "small samples (every bin adds its noise as an absolute value, and bootstrap resamples repeat "
             "patients), so for a well-calibrated method the resampled values are all larger. Read that interval "
             "as the size of the sampling noise (docs/training.md, What the numbers mean).")]),
        "",
        *run_section(run),
        "## What the numbers say",
        "",
        interpretation(table, noise_study=settings.qsm_noise_scale != 1.0),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    path.write_text("\n".join(lines))


def label_report(meta: pd.DataFrame, truth: pd.DataFrame, evaluable: np.ndarray, in_folds: np.ndarray,
                 folds: list[list[str]], withheld: list[list[str]]) -> dict:
    """Counts of what was evaluated, how the rater's labels compare with the truth, and per fold the
    labelled training lesions the trained methods saw (fewer with ``--label-one-in``)."""
    evaluated = evaluable & in_folds
    patients, annotated_rows = meta["participant_id"], meta["label"].notna()
    training_labels = []
    for test_patients, withheld_patients in zip(folds, withheld):
        training = ~patients.isin(test_patients)
        kept = training & annotated_rows & ~patients.isin(withheld_patients)
        training_labels.append({"patients": int(patients[kept].nunique()), "lesions": int(kept.sum()),
                                "rim_positive": int((meta["label"][kept] == 1).sum()),
                                "unlabelled_lesions": int((training & ~kept).sum())})
    rater, true = meta["label"].to_numpy()[evaluated], truth["true_label"].to_numpy()[evaluated]
    annotated = ~np.isnan(rater)
    positives, negatives = annotated & (true == 1), annotated & (true == 0)
    return {
        "pipeline_lesions": len(meta), "evaluated": int(evaluated.sum()),
        "annotated_matched": int(meta["label"].notna().sum()),
        "evaluated_patients": int(meta.loc[evaluated, "participant_id"].nunique()),
        "true_rim_positive": int((true == 1).sum()), "no_truth": int((~evaluable).sum()),
        "outside_folds": int((evaluable & ~in_folds).sum()), "rater_unlabelled": int((~annotated).sum()),
        "rater_sensitivity": float((rater[positives] == 1).mean()) if positives.any() else float("nan"),
        "rater_specificity": float((rater[negatives] == 0).mean()) if negatives.any() else float("nan"),
        "training_labels": training_labels,
    }


# ----------------------------------------------------------------------------- driver


def write_outputs(out_dir: Path, predictions: pd.DataFrame, table: pd.DataFrame, run: RunRecord) -> None:
    """Metrics TSV, per-lesion predictions, ROC/PR plots and the results page."""
    table.to_csv(out_dir / f"{STEM}.tsv", sep="\t", index=False, float_format="%.4f")
    predictions.drop(columns="row").to_csv(out_dir / f"{STEM}_predictions.tsv", sep="\t", index=False,
                                           float_format="%.5f")
    plots = plot_curves(predictions, out_dir)
    write_markdown(out_dir / f"{STEM}.md", table, run, plots)


def task_order(tasks: list[FoldTask], configs: dict) -> list[FoldTask]:
    """Radiomics first, then the longest tasks first: networks that pretrain, then the others.

    Radiomics takes seconds per fold, so it goes first: a ``--time-budget`` then never cuts the
    cheapest baseline for want of a worker. Among the networks, the longest first balance the
    workers. A network pretrains when its config asks for it AND it has the two encoders that
    pretraining needs (RimNet, QSMRim-Net and early fusion keep ``pretrain_epochs`` but never
    pretrain).
    """
    from bids_rim.models import get_model
    from bids_rim.training.pretrain import supports_pretraining

    pretrains = {method: config.arch != "radiomics" and config.pretrain_epochs > 0
                 and bool(config.pretrain_objectives)
                 and supports_pretraining(get_model(config.arch, **config.model_kwargs()))
                 for method, config in configs.items()}

    def cost_rank(task: FoldTask) -> tuple[int, int, str, int]:
        return (configs[task.method].arch != "radiomics", not pretrains[task.method], task.method, task.fold)

    return sorted(tasks, key=cost_rank)


def run_tasks(tasks: list[FoldTask], configs: dict, data_folder: Path, execution: Execution, deadline: float | None,
              on_result) -> list[FoldTask]:
    """Run every task (in ``execution.jobs`` spawned workers when above 1) and hand each result to ``on_result``.

    Results are handed over as they finish. At the deadline the workers are terminated and the
    unfinished tasks are returned (with one job a running task is not interrupted: the deadline
    is checked between tasks). A task that raises reaches ``on_result`` as ``{"task", "error"}``.
    """
    arguments = {task: (task, configs[task.method], data_folder, execution.device, execution.threads)
                 for task in tasks}
    if execution.jobs == 1:
        for index, task in enumerate(tasks):
            if deadline is not None and time.perf_counter() > deadline:
                return tasks[index:]
            try:
                on_result(run_fold_task(*arguments[task]))
            except Exception as error:  # noqa: BLE001 -- reported per method, the others go on
                on_result({"task": task, "error": f"{type(error).__name__}: {error}"})
        return []
    context = multiprocessing.get_context("spawn")  # CUDA and torch threads are not fork-safe
    # leaving the block terminates the workers; they log warnings only (the main process logs each finished task)
    with context.Pool(execution.jobs, initializer=_worker_logging) as pool:
        pending = {pool.apply_async(run_fold_task, arguments[task]): task for task in tasks}
        while pending:
            finished = [handle for handle in pending if handle.ready()]
            for handle in finished:
                task = pending.pop(handle)
                try:
                    on_result(handle.get())
                except Exception as error:  # noqa: BLE001 -- reported per method, the others go on
                    on_result({"task": task, "error": f"{type(error).__name__}: {error}"})
            if not finished:
                if deadline is not None and time.perf_counter() > deadline:
                    LOGGER.warning("time budget reached: stopping %d unfinished task(s)", len(pending))
                    return list(pending.values())
                time.sleep(0.5)
        pool.close()
        pool.join()
    return []


def folds_of_incomplete_methods(finished: Mapping[str, list[dict]],
                                complete: Collection[str]) -> dict[str, pd.DataFrame]:
    """Per method that finished some of its folds but not all (cut by ``--time-budget`` or failed in
    another fold): the predictions of the folds it finished, by fold and row.

    They are not pooled with the complete methods (fewer test patients are not comparable with a
    pooled out-of-fold estimate), but an hour of training should not be thrown away either.
    """
    return {method: pd.concat([result["predictions"] for result in results]).sort_values(["fold", "row"])
            .reset_index(drop=True)
            for method, results in finished.items() if results and method not in complete}


def fold_pr_aucs(predictions: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
    """PR AUC against the true class of every method (rows) in each of ``folds`` (columns); NaN
    where a method has no predictions for that fold or the fold lacks one of the classes."""
    from sklearn.metrics import average_precision_score

    def pr_auc(part: pd.DataFrame) -> float:
        labels = part["true_label"].astype(int)
        return float(average_precision_score(labels, part["rim_probability"])) if labels.nunique() == 2 else np.nan

    table = {method: {fold: pr_auc(part[part["fold"] == fold]) if (part["fold"] == fold).any() else np.nan
                      for fold in folds}
             for method, part in predictions.groupby("method", sort=False)}
    return pd.DataFrame.from_dict(table, orient="index", columns=folds)


def partial_section(run: RunRecord) -> list[str]:
    """The page's account of the finished folds of incomplete methods, beside every method's PR AUC on
    the same folds (the only fair comparison for them)."""
    if run.partial_folds is None:
        return []
    table = run.partial_folds
    return [
        f"Finished folds of the incomplete method(s) {', '.join(run.partial_methods)} are kept in "
        f"[{PARTIAL_PREDICTIONS}]({PARTIAL_PREDICTIONS}), not in the table above (fewer test patients are not "
        "comparable with a pooled estimate). PR AUC against the true class in those folds, every method:",
        "",
        "| method | " + " | ".join(f"fold {fold}" for fold in table.columns) + " |",
        "|---|" + "---|" * len(table.columns),
        *(f"| {method} | " + " | ".join("–" if np.isnan(value) else f"{value:.3f}" for value in row) + " |"
          for method, row in table.iterrows()),
        "",
        "Training wall time of those folds: " + "; ".join(
            f"{method} " + ", ".join(f"fold {fold} {seconds:.0f} s" for fold, seconds in sorted(fold_s.items()))
            for method, fold_s in run.partial_fold_wall_s.items()) + ".",
        "",
    ]


class IncompleteRun(RuntimeError):
    """Results were written, but without some methods (failed or unfinished); the page names them."""


@dataclass
class RunRecord:
    """What the results page needs besides the metrics: setup, provenance, timings, what is missing."""

    settings: BenchmarkSettings
    execution: Execution
    summary: dict
    command: str
    labels: dict
    machine: str
    clock: StageClock
    method_wall_s: dict[str, float] = field(default_factory=dict)
    method_cpu_s: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    unfinished_reason: str = "run still going or cut short"
    partial_methods: list[str] = field(default_factory=list)
    partial_folds: pd.DataFrame | None = None  # per method (rows) and kept fold (columns): PR AUC
    partial_fold_wall_s: dict[str, dict[int, float]] = field(default_factory=dict)  # incomplete method: fold: s

    @property
    def pending(self) -> list[str]:
        return [m for m in self.settings.methods if m not in self.method_wall_s and m not in self.failures]


def run_benchmark(settings: BenchmarkSettings, execution: Execution, out_dir: Path, work: Path,
                  command: str) -> pd.DataFrame:
    """The whole benchmark; returns the long metrics table (also written to ``out_dir``)."""
    import torch

    from bids_rim.bidsio.derivatives import atomic_write_with
    from bids_rim.bidsio.training_data import load_training_set
    from bids_rim.training.crossval import patient_folds
    from bids_rim.training.inference import resolve_device

    started = time.perf_counter()
    deadline = None if execution.time_budget_s is None else started + execution.time_budget_s
    torch.set_num_threads(execution.threads)
    execution = replace(execution, device=str(resolve_device(execution.device)))  # fail early, record what ran
    machine = machine_description(execution)
    clock = StageClock()
    bids_dir, output_dir, summary = prepare_cohort(settings, execution, work, clock)
    wall, cpu = time.perf_counter(), clock.cpu_now()
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t", dtype=str)
    data = load_training_set(output_dir, participants, bids_dir / "derivatives" / "rim_annotations")
    meta = data.meta.reset_index(drop=True)
    truth = truth_of_lesions(output_dir, bids_dir, meta)
    dice = lesion_map_dice(output_dir, bids_dir, meta)
    summary["lesion_map_dice"] = {"median": float(dice.median()), "min": float(dice.min()), "max": float(dice.max()),
                                  "below_0.5": [name for name, value in dice.items() if value < 0.5]}
    evaluable = truth["true_label"].notna().to_numpy()
    folds = patient_folds(meta, settings.folds, settings.seed)
    in_folds = meta["participant_id"].isin([p for fold in folds for p in fold]).to_numpy()
    LOGGER.info("%d lesions, %d evaluable; folds %s", len(meta), int((evaluable & in_folds).sum()), folds)
    withheld = withheld_label_patients(meta, folds, settings.label_one_in, settings.seed)
    data_folder = save_training_data(data.patches, meta, evaluable, work / "training_data")
    clock.record("patches and truth", wall, cpu)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PARTIAL_PREDICTIONS).unlink(missing_ok=True)  # an earlier run's, into the same folder
    run = RunRecord(settings, execution, summary, command,
                    label_report(meta, truth, evaluable, in_folds, folds, withheld), machine, clock)
    predictions, tables = [], []

    def identify(method: str, part: pd.DataFrame) -> pd.DataFrame:
        """``part`` with the method's name, each lesion's identity, its rater label and its true class."""
        part.insert(0, "method", method)
        rows = part["row"].to_numpy()
        part["participant_id"] = meta["participant_id"].to_numpy()[rows]
        part["lesion_id"] = meta["lesion_id"].to_numpy()[rows]
        part["rater_label"] = meta["label"].to_numpy()[rows]
        part["true_label"] = truth["true_label"].to_numpy()[rows].astype(int)
        return part

    def finish_method(method: str, part: pd.DataFrame) -> None:
        predictions.append(identify(method, part))
        tables.append(summarise(part, settings))
        # Written after every method, so that a long run cut short still leaves what it finished.
        write_outputs(out_dir, pd.concat(predictions, ignore_index=True), pd.concat(tables, ignore_index=True), run)
        LOGGER.info("method %s done (%.0f s of training, summed over folds)", method, run.method_wall_s[method])

    for method in (m for m in settings.methods if m in UNTRAINED_METHODS):
        wall, cpu = time.perf_counter(), time.process_time()
        if method in OBSERVERS:
            scores = truth[OBSERVERS[method][0]].to_numpy()
            part = evaluate_observer(scores, truth["true_label"].to_numpy(), meta, folds, evaluable)
        else:
            part = evaluate_readout_logistic(data.patches, meta, folds, evaluable, withheld, READOUT_OUTLINES[method])
        run.method_wall_s[method], run.method_cpu_s[method] = time.perf_counter() - wall, time.process_time() - cpu
        finish_method(method, part)

    configs = {m: method_config(m, settings) for m in settings.methods if m not in UNTRAINED_METHODS}
    tasks = task_order([FoldTask(m, fold, tuple(patients), tuple(withheld[fold - 1])) for m in configs
                        for fold, patients in enumerate(folds, start=1)], configs)
    finished: dict[str, list[dict]] = {m: [] for m in configs}

    def on_result(result: dict) -> None:
        method = result["task"].method
        if method in run.failures:
            return
        if "error" in result:
            LOGGER.error("method %s fold %d failed: %s", method, result["task"].fold, result["error"])
            run.failures[method] = f"fold {result['task'].fold}: {result['error']}"
            return
        LOGGER.info("%s fold %d: %.0f s wall, %.0f CPU s on %s", method, result["task"].fold, result["wall_s"],
                    result["cpu_s"], result["device"])
        finished[method].append(result)
        if len(finished[method]) == len(folds):
            run.method_wall_s[method] = sum(r["wall_s"] for r in finished[method])
            run.method_cpu_s[method] = sum(r["cpu_s"] for r in finished[method])
            part = pd.concat([r["predictions"] for r in finished[method]]).sort_values(["fold", "row"])
            finish_method(method, part.reset_index(drop=True))

    LOGGER.info("training %d (method, fold) tasks in %d job(s) on %s", len(tasks), execution.jobs, execution.device)
    wall, cpu = time.perf_counter(), clock.cpu_now()
    unfinished = run_tasks(tasks, configs, data_folder, execution, deadline, on_result)
    clock.record("training", wall, cpu)
    if unfinished:
        run.unfinished_reason = (f"stopped at the time budget of {execution.time_budget_s:.0f} s with "
                                 f"{len(unfinished)} of {len(tasks)} (method, fold) tasks unfinished")
    partial = {method: identify(method, part) for method, part in folds_of_incomplete_methods(
        finished, run.method_wall_s).items()}
    if partial:
        partial_predictions = pd.concat(partial.values(), ignore_index=True)
        atomic_write_with(out_dir / PARTIAL_PREDICTIONS, lambda path: partial_predictions.drop(columns="row").to_csv(
            path, sep="\t", index=False, float_format="%.5f"))
        run.partial_folds = fold_pr_aucs(pd.concat([partial_predictions, *predictions], ignore_index=True),
                                         sorted({int(f) for f in partial_predictions["fold"]}))
        run.partial_methods = list(partial)
        run.partial_fold_wall_s = {method: {result["task"].fold: result["wall_s"] for result in finished[method]}
                                   for method in partial}
    if not predictions:
        raise RuntimeError(f"no method finished: failures {run.failures}; {run.unfinished_reason}"
                           + (f"; finished folds of {run.partial_methods} in {out_dir / PARTIAL_PREDICTIONS}"
                              if partial else ""))
    table = pd.concat(tables, ignore_index=True)
    write_outputs(out_dir, pd.concat(predictions, ignore_index=True), table, run)
    if run.failures or run.pending:
        raise IncompleteRun(f"results written without method(s) {[*run.failures, *run.pending]}: "
                           f"failures {run.failures}; unfinished: {run.unfinished_reason if run.pending else 'none'}")
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=88, help="patients in the synthetic cohort (default 88)")
    parser.add_argument("--sites", type=int, default=3, help="scanner sites in the cohort (default 3)")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="volume size of the synthetic sessions (default full)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="seed of the cohort, the participant level, the fold split, the bootstrap and (unless "
                             "--training-seed) the trained methods")
    parser.add_argument("--training-seed", type=int,
                        help="seed of the trained methods only: on the same --work folder, cohort and split, "
                             "several training seeds show how much a method moves with its initialisation alone")
    parser.add_argument("--label-one-in", type=int, default=1, metavar="K",
                        help="keep the rater labels of one in K of each fold's training patients (balanced in rim+ "
                             "and rim− lesions and sites); the others' lesions stay as unlabelled pretraining data, "
                             "as at a site with many more unlabelled lesions than labelled (default 1: every label "
                             "kept)")
    parser.add_argument("--folds", type=int, default=5, help="patient-level cross-validation folds (default 5)")
    parser.add_argument("--patch-size", type=int, default=32, help="patch edge in voxels (default 32)")
    parser.add_argument("--patch-spacing", type=float, default=1.0,
                        help="patch voxel size in mm, or the QSM's own where coarser (default 1.0)")
    parser.add_argument("--lesion-outline", choices=("given", "refined"), default="given",
                        help="the participant level's --lesion-outline: the rater's borders as given, or redrawn "
                             "at half the FLAIR contrast (default given)")
    parser.add_argument("--qsm-noise-scale", type=float, default=1.0, metavar="FACTOR",
                        help="a noise study, not a benchmark: multiply every site's QSM noise by FACTOR (same cohort "
                             "draw otherwise), to measure how much of a method's distance to the oracle is noise "
                             "(default 1)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset of: {', '.join(ALL_METHODS)}")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples over patients")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes for the cohort and for the (method, fold) training tasks")
    parser.add_argument("--nprocs", type=int,
                        help="subjects the participant level runs at once (default max(2, --jobs))")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch threads per training process")
    parser.add_argument("--device", default="auto", help="training device: auto (CUDA when present), cpu, cuda[:N]")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop training this many seconds after the start; unfinished methods are named in the "
                             "results and the exit code is 3")
    parser.add_argument("--quick", action="store_true",
                        help="tiny cohort and models for CI (8 small subjects, 2 folds, 16³ patches at 2 mm); "
                             "requires --out")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--work", type=Path, help="cohort and participant-level outputs (reused when present; "
                                                  "default a temporary folder)")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    if args.quick and args.out is None:
        parser.error("--quick needs --out (quick results must not overwrite benchmarks/results)")
    if args.quick:
        args.subjects, args.sites, args.size, args.folds = 8, 2, "small", 2
        args.patch_size, args.patch_spacing, args.bootstrap = 16, 2.0, min(args.bootstrap, 100)
    if min(args.jobs, args.threads, args.nprocs or 1, args.label_one_in) < 1:
        parser.error("--jobs, --threads, --nprocs and --label-one-in must be at least 1")
    if not args.qsm_noise_scale > 0:
        parser.error(f"--qsm-noise-scale must be > 0, got {args.qsm_noise_scale}")
    args.methods = methods
    args.nprocs = args.nprocs or max(2, args.jobs)
    return args


def _stream_handler(name: str | None = None) -> logging.Handler:
    """A stderr handler in the benchmark's log format."""
    handler = logging.StreamHandler()
    handler.set_name(name)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    return handler


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The root handler is named as the bids_rim CLI names its own, so that the participant level
    # replaces it instead of adding a second one (every bids_rim line was printed twice).
    logging.getLogger().addHandler(_stream_handler("bids_rim"))
    logging.getLogger().setLevel(logging.INFO)
    # Own handler, no propagation: the participant CLI adds a root handler that would print warnings twice.
    LOGGER.addHandler(_stream_handler())
    LOGGER.propagate = False
    settings = BenchmarkSettings(args.subjects, args.sites, args.size, args.seed, args.folds, args.patch_size,
                                 args.patch_spacing, args.methods, args.quick, args.bootstrap, args.training_seed,
                                 args.label_one_in, args.lesion_outline, args.qsm_noise_scale)
    execution = Execution(args.jobs, args.nprocs, args.threads, args.device, args.time_budget)
    command = "python benchmarks/classification.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out_dir = args.out or RESULTS_DIR
    try:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=True)
            run_benchmark(settings, execution, out_dir, args.work, command)
        else:
            with tempfile.TemporaryDirectory(prefix="bids_rim_bench_") as work:
                run_benchmark(settings, execution, out_dir, Path(work), command)
    except IncompleteRun as error:
        LOGGER.error("%s", error)
        print(out_dir / f"{STEM}.md")
        return 3
    print(out_dir / f"{STEM}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
