"""generate_cohort: the whole synthetic cohort written as raw BIDS, derivatives and truth."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from bids_rim.config import usable_cpus

from .. import __version__
from .anatomy import SMALL_CROP_MNI, draw_subject_anatomy
from .bids_writer import write_json, write_nifti, write_tsv
from .lesions import draw_lesions
from .oracle import lesion_rim_cnr, oracle_pr_auc
from .params import get_params, with_qsm_noise_scaled
from .population import draw_participant, draw_sites
from .rater import missed_lesions, rater_mask, rater_rim_label
from .session import qsm_spacing, simulate_session
from .sidecars import (
    annotation_sidecar,
    dataset_description,
    flair_sidecar,
    mask_sidecar,
    participants_sidecar,
    qsm_sidecar,
    readme_text,
    rim_dseg_sidecar,
    rim_dseg_table,
    t2starw_sidecar,
    truth_columns,
)
from .vessels import draw_vein_tree


@dataclass
class CohortSummary:
    """Counts, prevalence and difficulty of a generated cohort."""

    out_dir: str
    difficulty: str
    size: str
    seed: int
    n_subjects: int
    n_sites: int
    n_sessions: int
    n_lesions: int
    n_rim_positive: int
    lesion_prevalence: float
    patients_with_rim_positive: float
    patients_with_4plus_rim_positive: float
    confounders: dict[str, int]
    oracle_pr_auc: float
    image_contrast_pr_auc: float
    seconds_per_session: float
    prl_count_model: dict = field(default_factory=dict)
    sites: list[dict] = field(default_factory=list)
    qsm_noise_scale: float = 1.0  # 1 unless the sites' QSM noise was scaled for a noise study

    def format(self) -> str:
        """Human-readable summary printed by the CLI."""
        mimics = ", ".join(f"{k} {v}" for k, v in sorted(self.confounders.items()))
        return (f"bids_rim synthetic cohort in {self.out_dir}\n"
                f"  {self.n_subjects} subjects x {self.n_sessions} session(s), {self.n_sites} site(s),"
                f" difficulty {self.difficulty}, size {self.size}, seed {self.seed}\n"
                f"  lesions {self.n_lesions}, rim+ {self.n_rim_positive}"
                f" ({100 * self.lesion_prevalence:.1f} % of lesions)\n"
                f"  patients with >=1 rim+ {100 * self.patients_with_rim_positive:.0f} %,"
                f" with >=4 rim+ {100 * self.patients_with_4plus_rim_positive:.0f} %\n"
                f"  confounders: {mimics}\n"
                f"  oracle PR AUC (reader-like ceiling) {self.oracle_pr_auc:.3f};"
                f" plain image shell-minus-core PR AUC {self.image_contrast_pr_auc:.3f}\n"
                f"  {self.seconds_per_session:.1f} s per session"
                + ("" if self.qsm_noise_scale == 1.0 else
                   f"\n  QSM noise scaled by {self.qsm_noise_scale:g} (a noise study, not a benchmark cohort)"))


def generate_cohort(out_dir, *, n_subjects: int = 8, n_sites: int = 2, n_sessions: int = 1,
                    difficulty: str = "realistic", size: str = "full", seed: int = 0,
                    progress: bool = True, jobs: int = 1, qsm_noise_scale: float = 1.0) -> CohortSummary:
    """Write a synthetic MS cohort (raw BIDS + derivatives + truth) to ``out_dir``.

    ``qsm_noise_scale`` multiplies the sites' QSM noise (:func:`with_qsm_noise_scaled`): a
    diagnostic of how much a method loses to noise, recorded in the summary; 1 for every cohort
    that is benchmarked.

    ``jobs`` > 1 simulates subjects in that many worker processes, 0 in one per usable CPU (at
    most one per subject; see :func:`worker_count`). Every subject draws from its own seed
    stream, so the files are the same bytes whatever ``jobs`` is.
    """
    if n_subjects < 1 or n_sites < 1 or n_sessions < 1:
        raise ValueError(f"{out_dir}: subjects, sites and sessions must be >= 1")
    if jobs < 0:
        raise ValueError(f"{out_dir}: jobs must be >= 0 (0: one per usable CPU), not {jobs}")
    if size not in ("full", "small"):
        raise ValueError(f"{out_dir}: size must be 'full' or 'small', not {size!r}")
    jobs = worker_count(jobs, n_subjects, size)
    params = get_params(difficulty)
    if qsm_noise_scale != 1.0:
        params = with_qsm_noise_scaled(params, qsm_noise_scale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root_seq = np.random.SeedSequence(seed)
    site_seq, *subject_seqs = root_seq.spawn(n_subjects + 1)
    sites = draw_sites(np.random.default_rng(site_seq), n_sites, params.sites)
    box = SMALL_CROP_MNI if size == "small" else None

    participants, truth_rows = [], []
    started = time.perf_counter()
    bar = tqdm(total=n_subjects, desc="bids_rim-synth", unit="subject", disable=not progress)
    tasks = [(out, number, subject_seq, sites[(number - 1) % n_sites], params, size, n_sessions, box)
             for number, subject_seq in enumerate(subject_seqs, start=1)]
    if jobs > 1:
        # spawn, not fork: callers (the benchmark) may already hold torch/CUDA threads
        threads = max(1, usable_cpus() // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            results = pool.map(_simulate_subject, *zip(*tasks))
            for person, rows in results:  # in subject order, whatever finishes first
                participants.append(person)
                truth_rows.extend(rows)
                bar.update(1)
    else:
        for task in tasks:
            person, rows = _simulate_subject(*task)
            participants.append(person)
            truth_rows.extend(rows)
            bar.update(1)
    bar.close()
    elapsed = (time.perf_counter() - started) / (n_subjects * n_sessions)
    _write_dataset_files(out, participants, params, qsm_noise_scale)
    summary = _summarise(out, participants, truth_rows, params, sites, size, seed, n_sessions,
                         elapsed, qsm_noise_scale)
    write_json(out / "sourcedata" / "synth_truth" / "cohort_summary.json",
               {k: v for k, v in asdict(summary).items() if k not in ("out_dir", "seconds_per_session")})
    return summary


#: Memory set aside per worker when ``jobs`` is 0 (peak RSS measured on 2026-12-01: 3.2 GB for a
#: full-size subject at 0.61 mm, 2.1 GB at 0.76 mm, 0.4 GB small).
WORKER_MEMORY_BYTES = {"full": 3.5 * 2 ** 30, "small": 0.5 * 2 ** 30}


def available_memory_bytes() -> float:
    """Memory free now (``MemAvailable``; free pages where /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def worker_count(jobs: int, n_subjects: int, size: str = "full") -> int:
    """Worker processes for ``jobs``, never more than the subjects. 0: one per usable CPU, as
    many as the available memory holds (``WORKER_MEMORY_BYTES``); an explicit count is kept."""
    if jobs == 0:
        jobs = min(usable_cpus(), int(available_memory_bytes() // WORKER_MEMORY_BYTES[size]))
    return max(1, min(jobs, n_subjects))


def _limit_threads(threads: int) -> None:
    """Worker initialiser: the workers share the CPUs, so each FFT and template sampling gets its share of threads
    (``threads.worker_threads`` reads ``OMP_NUM_THREADS``; thread counts do not change the
    bytes)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _simulate_subject(out: Path, number: int, subject_seq: np.random.SeedSequence, site, params, size: str,
                      n_sessions: int, box) -> tuple:
    """Draw one participant and write all their sessions; returns (participant, truth rows)."""
    draw_seq, *session_seqs = subject_seq.spawn(n_sessions + 1)
    rng = np.random.default_rng(draw_seq)
    person = draw_participant(rng, number, site, params.prl_counts, params.lesions)
    subject = draw_subject_anatomy(rng, params.anatomy, params.tissue)
    veins = draw_vein_tree(rng, subject, params.anatomy, box)
    lesions = draw_lesions(rng, subject, person.n_rim_positive, person.n_rim_negative,
                           params.lesions, params.tissue.chi_vein_ppm,
                           params.tissue.chi_calcification_ppm, box)
    rows = []
    for session_number, session_seq in enumerate(session_seqs, start=1):
        rows.extend(_write_session(out, person, subject, lesions, veins, params, size, session_number,
                                   np.random.default_rng(session_seq)))
    return person, rows


def _write_session(out: Path, person, subject, lesions, veins, params, size, session_number,
                   rng) -> list[dict]:
    sub, ses = person.participant_id, f"ses-{session_number:02d}"
    prefix = f"{sub}_{ses}"
    images = simulate_session(subject, lesions, veins, person.site, params, size, rng)
    spacing = qsm_spacing(person.site, size)
    cnr = lesion_rim_cnr(images.qsm_ppm, images.qsm_clean_ppm, images.qsm_background_ppm,
                         images.truth_labels, images.noise_model, spacing, rng,
                         images.vessel_fraction)
    anat = out / sub / ses / "anat"
    write_nifti(anat / f"{prefix}_FLAIR.nii.gz", images.flair, images.flair_affine, np.int16)
    slice_thickness_mm = float(np.linalg.norm(images.flair_affine[:3, 2]))
    write_json(anat / f"{prefix}_FLAIR.json", flair_sidecar(person.site, slice_thickness_mm))
    write_nifti(anat / f"{prefix}_Chimap.nii.gz", images.qsm_ppm, images.qsm_affine, np.float32)
    write_json(anat / f"{prefix}_Chimap.json", qsm_sidecar(person.site))
    write_nifti(anat / f"{prefix}_part-mag_T2starw.nii.gz", images.magnitude, images.qsm_affine,
                np.float32)
    write_json(anat / f"{prefix}_part-mag_T2starw.json", t2starw_sidecar(person.site, params))

    missed = missed_lesions(rng, lesions, params.rater)
    mask = rater_mask(rng, images.flair_lesion_fraction, images.flair_lesion_labels, missed,
                      params.rater)
    mask_dir = out / "derivatives" / "lesion_masks" / sub / ses / "anat"
    mask_name = f"{prefix}_space-FLAIR_label-lesion_mask"
    write_nifti(mask_dir / f"{mask_name}.nii.gz", mask, images.flair_affine, np.uint8)
    write_json(mask_dir / f"{mask_name}.json", mask_sidecar(sub, ses))

    rows, annotations = [], []
    dseg = np.zeros(images.truth_labels.shape, dtype=np.uint8)
    voxel_mm3 = spacing ** 3
    by_id = {lesion.lesion_id: lesion for lesion in lesions}
    boxes = ndimage.find_objects(images.truth_labels)
    for lesion_id, measures in cnr.items():
        lesion = by_id[lesion_id]
        box = boxes[lesion_id - 1]
        inside = images.truth_labels[box] == lesion_id
        voxels = np.argwhere(inside) + [s.start for s in box]
        centroid = images.qsm_affine[:3, :3] @ voxels.mean(axis=0) + images.qsm_affine[:3, 3]
        rater_rim = rater_rim_label(rng, lesion, measures["rim_cnr"], params.rater)
        is_missed = lesion_id in missed
        if not is_missed:
            annotations.append({"lesion_id": lesion_id, "x_mm": round(centroid[0], 2),
                                "y_mm": round(centroid[1], 2), "z_mm": round(centroid[2], 2),
                                "rim": rater_rim})
            dseg[box][inside] = 2 if rater_rim else 1
            if rater_rim:
                dseg[box][inside & (images.rim_fraction[box] >= 0.3)] = 3
        rows.append({"participant_id": sub, "session_id": ses, "lesion_id": lesion_id,
                     "class": "rim+" if lesion.rim_positive else "rim-",
                     "location": lesion.location,
                     "volume_mm3": round(len(voxels) * voxel_mm3, 1),
                     "rim_contrast_ppb": round(lesion.rim_chi_ppb, 2),
                     "rim_thickness_mm": round(lesion.rim_thickness_mm, 2),
                     "rim_coverage": round(lesion.rim_coverage, 3),
                     "core_contrast_ppb": round(lesion.core_chi_ppb, 2),
                     "confounder": lesion.confounder, "central_vein": int(lesion.central_vein),
                     "confluent_with": lesion.confluent_with,
                     "flair_ratio_to_wm": round(lesion.flair_ratio, 3),
                     **{k: round(v, 3) for k, v in measures.items()},
                     "rater_missed": int(is_missed), "rater_rim": rater_rim,
                     "x_mm": round(centroid[0], 2), "y_mm": round(centroid[1], 2),
                     "z_mm": round(centroid[2], 2)})
    rim_dir = out / "derivatives" / "rim_annotations" / sub / ses / "anat"
    table = pd.DataFrame(annotations, columns=["lesion_id", "x_mm", "y_mm", "z_mm", "rim"])
    write_tsv(rim_dir / f"{prefix}_desc-rim_annotations.tsv", table)
    write_json(rim_dir / f"{prefix}_desc-rim_annotations.json", annotation_sidecar())
    write_nifti(rim_dir / f"{prefix}_space-QSM_desc-rim_dseg.nii.gz", dseg, images.qsm_affine,
                np.uint8)
    write_tsv(rim_dir / f"{prefix}_space-QSM_desc-rim_dseg.tsv", rim_dseg_table())
    write_json(rim_dir / f"{prefix}_space-QSM_desc-rim_dseg.json", rim_dseg_sidecar(sub, ses))

    truth = out / "sourcedata" / "synth_truth"
    write_tsv(truth / f"{prefix}_truth.tsv", pd.DataFrame(rows, columns=truth_columns()))
    write_nifti(truth / f"{prefix}_desc-truth_lesions.nii.gz", images.truth_labels,
                images.qsm_affine, np.int16)
    write_json(truth / f"{prefix}_registration.json", {
        "qsm_to_flair_ras": np.round(images.qsm_to_flair_ras, 6).tolist(),
        "rotation_deg": round(images.rotation_deg, 4),
        "translation_mm": round(images.translation_mm, 4),
        "description": "maps a point in QSM world RAS mm to the same anatomical point in "
                       "FLAIR world RAS mm"})
    return rows


def _write_dataset_files(out: Path, participants, params, qsm_noise_scale: float) -> None:
    write_json(out / "dataset_description.json", dataset_description("raw", __version__))
    write_json(out / "derivatives" / "lesion_masks" / "dataset_description.json",
               dataset_description("lesion_masks", __version__))
    write_json(out / "derivatives" / "rim_annotations" / "dataset_description.json",
               dataset_description("rim_annotations", __version__))
    (out / "README").write_text(readme_text(params.difficulty, qsm_noise_scale))
    # BIDS has no suffix for a per-lesion table: the annotation TSVs are legitimately non-standard
    (out / "derivatives" / "rim_annotations" / ".bidsignore").write_text("*_desc-rim_annotations.*\n")
    table = pd.DataFrame([{"participant_id": p.participant_id, "site": p.site.label, "age": p.age,
                           "sex": p.sex, "EDSS": p.edss, "disease_duration": p.disease_duration}
                          for p in participants])
    write_tsv(out / "participants.tsv", table)
    write_json(out / "participants.json", participants_sidecar())


def _summarise(out, participants, truth_rows, params, sites, size, seed, n_sessions, elapsed,
               qsm_noise_scale) -> CohortSummary:
    truth = pd.DataFrame(truth_rows, columns=truth_columns())
    first = truth[truth["session_id"] == "ses-01"]
    rim = first["class"] == "rim+"
    per_patient = first[rim].groupby("participant_id").size().reindex(
        [p.participant_id for p in participants], fill_value=0)
    confounders = first.loc[~rim, "confounder"].value_counts().to_dict()
    confounders["central_vein"] = int(first["central_vein"].sum())
    model = params.prl_counts
    return CohortSummary(
        out_dir=str(out), difficulty=params.difficulty, size=size, seed=seed,
        n_subjects=len(participants), n_sites=len(sites), n_sessions=n_sessions,
        n_lesions=len(first), n_rim_positive=int(rim.sum()),
        lesion_prevalence=float(rim.mean()) if len(first) else float("nan"),
        patients_with_rim_positive=float((per_patient >= 1).mean()),
        patients_with_4plus_rim_positive=float((per_patient >= 4).mean()),
        confounders={k: int(v) for k, v in confounders.items()},
        oracle_pr_auc=oracle_pr_auc(truth["class"] == "rim+", truth["observed_rim_cnr"]),
        image_contrast_pr_auc=oracle_pr_auc(truth["class"] == "rim+", truth["observed_cnr"]),
        seconds_per_session=elapsed,
        prl_count_model={"formula": "n_rim+ ~ NegBin(mean mu, size k); log mu = intercept + "
                                    "edss_coef*(EDSS-3) + site_coef[site]",
                         "intercept": model.intercept, "edss_coef": model.edss_coef,
                         "site_coefs": {s.label: model.site_coefs[s.index % len(model.site_coefs)]
                                        for s in sites},
                         "dispersion_size": model.dispersion_size},
        sites=[asdict(s) for s in sites], qsm_noise_scale=qsm_noise_scale)
