"""Tests of bids_rim.synth: what the written images show, measured from the volumes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from bids_rim.synth import generate_cohort

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_cohort(out, n_subjects=6, n_sites=2, size="small", seed=11, progress=False)
    return out


def _sessions(root: Path):
    for qsm in sorted(root.glob("sub-*/ses-*/anat/*_Chimap.nii.gz")):
        yield qsm.name.replace("_Chimap.nii.gz", ""), qsm.parent


def _shell_core(qsm, labels, lesion_id, spacing):
    """Shell-minus-core median (ppm) of a lesion, leaving out obvious veins (> 100 ppb) and the
    voxel around them, as a reader does."""
    inside = labels == lesion_id
    depth = ndimage.distance_transform_edt(inside) * spacing
    inside &= ~ndimage.binary_dilation(qsm > 0.1)
    shell, core = inside & (depth <= 1.5), inside & (depth > 1.5)
    if not core.any() or not shell.any():
        return None
    return float(np.median(qsm[shell]) - np.median(qsm[core]))


def test_rim_positive_lesions_have_a_brighter_edge_than_core(cohort):
    contrasts = {0: [], 1: []}
    for prefix, anat in _sessions(cohort):
        qsm_img = nib.load(anat / f"{prefix}_Chimap.nii.gz")
        qsm = qsm_img.get_fdata()
        labels = np.asarray(nib.load(cohort / "sourcedata" / "synth_truth" /
                                     f"{prefix}_desc-truth_lesions.nii.gz").dataobj)
        sub, ses = prefix.split("_")
        table = pd.read_csv(cohort / "derivatives" / "rim_annotations" / sub / ses / "anat" /
                            f"{prefix}_desc-rim_annotations.tsv", sep="\t")
        for row in table.itertuples():
            value = _shell_core(qsm, labels, row.lesion_id, qsm_img.header.get_zooms()[0])
            if value is not None:
                contrasts[row.rim].append(1000 * value)
    assert len(contrasts[1]) >= 3
    assert np.median(contrasts[1]) > 5.0
    assert np.median(contrasts[1]) > np.median(contrasts[0]) + 5.0


def test_counts_and_prevalence_fall_in_range(cohort):
    n_lesions, n_rim = [], 0
    for prefix, anat in _sessions(cohort):
        labels = np.asarray(nib.load(cohort / "sourcedata" / "synth_truth" /
                                     f"{prefix}_desc-truth_lesions.nii.gz").dataobj)
        n_lesions.append(len(np.unique(labels[labels > 0])))
        sub, ses = prefix.split("_")
        dseg = np.asarray(nib.load(cohort / "derivatives" / "rim_annotations" / sub / ses / "anat" /
                                   f"{prefix}_space-QSM_desc-rim_dseg.nii.gz").dataobj)
        n_rim += len(np.unique(labels[(dseg >= 2) & (labels > 0)]))
    assert all(3 <= n <= 80 for n in n_lesions)
    assert 0.02 <= n_rim / sum(n_lesions) <= 0.3


def test_mimics_are_present(cohort):
    """Some rim- lesions are paramagnetic as a whole, some carry a bright vein (>100 ppb)."""
    diffuse = veins = 0
    for prefix, anat in _sessions(cohort):
        qsm = nib.load(anat / f"{prefix}_Chimap.nii.gz").get_fdata() * 1000
        labels = np.asarray(nib.load(cohort / "sourcedata" / "synth_truth" /
                                     f"{prefix}_desc-truth_lesions.nii.gz").dataobj)
        nawm = np.median(qsm[(labels == 0) & (qsm != 0)])
        sub, ses = prefix.split("_")
        table = pd.read_csv(cohort / "derivatives" / "rim_annotations" / sub / ses / "anat" /
                            f"{prefix}_desc-rim_annotations.tsv", sep="\t")
        for row in table[table.rim == 0].itertuples():
            values = qsm[labels == row.lesion_id]
            diffuse += np.median(values) > nawm + 10
            veins += values.max() > 100
    assert diffuse >= 1 and veins >= 1


def test_flair_and_qsm_are_misaligned_in_world_space(cohort):
    offsets = []
    for prefix, anat in _sessions(cohort):
        sub, ses = prefix.split("_")
        mask_img = nib.load(cohort / "derivatives" / "lesion_masks" / sub / ses / "anat" /
                            f"{prefix}_space-FLAIR_label-lesion_mask.nii.gz")
        labels_img = nib.load(cohort / "sourcedata" / "synth_truth" /
                              f"{prefix}_desc-truth_lesions.nii.gz")
        flair_c = mask_img.affine[:3, :3] @ np.argwhere(np.asarray(mask_img.dataobj)).mean(0) + mask_img.affine[:3, 3]
        qsm_c = (labels_img.affine[:3, :3] @ np.argwhere(np.asarray(labels_img.dataobj) > 0).mean(0)
                 + labels_img.affine[:3, 3])
        offsets.append(np.linalg.norm(flair_c - qsm_c))
    assert max(offsets) > 1.0


def test_sidecars_and_participants_describe_the_images(cohort):
    """The FLAIR's SliceThickness is its voxel size across slices; EDSS is never written as -0.0."""
    for prefix, anat in _sessions(cohort):
        flair = nib.load(anat / f"{prefix}_FLAIR.nii.gz")
        sidecar = json.loads((anat / f"{prefix}_FLAIR.json").read_text())
        assert sidecar["SliceThickness"] == pytest.approx(flair.header.get_zooms()[2], abs=1e-3), prefix
    participants = (cohort / "participants.tsv").read_text()
    assert "EDSS" in participants.splitlines()[0] and "\t-0.0" not in participants


def test_a_zero_edss_is_written_without_a_sign():
    """Rounding a small negative draw gives -0.0, which participants.tsv would spell "-0.0"."""
    import math

    from bids_rim.synth.params import get_params
    from bids_rim.synth.population import draw_participant, draw_sites

    params = get_params("realistic")
    site = draw_sites(np.random.default_rng(0), 1, params.sites)[0]
    rng = np.random.default_rng(5)
    zeros = [person.edss for person in (draw_participant(rng, number, site, params.prl_counts, params.lesions)
                                        for number in range(1, 400)) if person.edss == 0]
    assert zeros and all(math.copysign(1.0, edss) == 1.0 for edss in zeros)


def test_qsm_is_in_ppm_with_plausible_spread(cohort):
    """The small crop lies inside the brain; QSM spread is tissue + noise, in ppm (not ppb)."""
    prefix, anat = next(_sessions(cohort))
    qsm = nib.load(anat / f"{prefix}_Chimap.nii.gz").get_fdata()
    assert 0.002 < np.std(qsm[qsm != 0]) < 0.1
    assert json.loads((anat / f"{prefix}_Chimap.json").read_text())["Units"] == "ppm"


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_bytes_serial_or_parallel(tmp_path):
    for name, jobs in (("a", 1), ("b", 2)):
        generate_cohort(tmp_path / name, n_subjects=2, size="small", seed=3, progress=False, jobs=jobs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_a_larger_cohort_begins_with_the_smaller_one_of_the_same_seed(tmp_path):
    """Each subject draws from its own seed (and its site from its number), so the benchmark can
    pair a 40-patient run with the first 40 patients of an 88-patient run of the same seed."""
    for name, n_subjects in (("two", 2), ("three", 3)):
        generate_cohort(tmp_path / name, n_subjects=n_subjects, n_sites=3, size="small", seed=3, progress=False)
    two, three = _digest(tmp_path / "two"), _digest(tmp_path / "three")
    subject_files = [name for name in two if "sub-" in name]  # images, sidecars, annotations and truth
    assert len(subject_files) > 10 and all(three[name] == two[name] for name in subject_files)
    assert any(name.startswith("sub-003/") for name in three)


def test_jobs_zero_means_one_worker_per_usable_cpu_and_never_more_than_subjects(monkeypatch):
    from bids_rim.synth import cohort
    from bids_rim.synth.cohort import usable_cpus, worker_count

    monkeypatch.setattr(cohort, "available_memory_bytes", lambda: 1e15)
    assert worker_count(0, 1000) == usable_cpus()
    assert worker_count(0, 1) == 1
    assert worker_count(3, 2) == 2
    assert worker_count(1, 5) == 1
    # the automatic count also leaves each full-size worker its memory; an explicit one is kept
    monkeypatch.setattr(cohort, "available_memory_bytes",
                        lambda: 1.5 * cohort.WORKER_MEMORY_BYTES["full"])
    assert worker_count(0, 1000, "full") == 1
    assert worker_count(4, 1000, "full") == 4
    assert 0 < cohort.WORKER_MEMORY_BYTES["small"] < cohort.WORKER_MEMORY_BYTES["full"]
    with pytest.raises(ValueError, match="jobs"):
        generate_cohort(Path("unused"), n_subjects=1, jobs=-1, progress=False)


@pytest.mark.parametrize("sub", ["", "derivatives/lesion_masks", "derivatives/rim_annotations"])
def test_bids_validator_finds_no_error(cohort, sub):
    result = subprocess.run([str(VALIDATOR), "--format", "json", str(cohort / sub)], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads(result.stdout)  # a validator that crashed writes no report
    errors = [issue for issue in report["issues"]["issues"] if issue.get("severity") == "error"]
    assert errors == []
    subjects = sorted(folder.name.removeprefix("sub-") for folder in (cohort / sub).glob("sub-*"))
    assert len(subjects) > 1 and sorted(report["summary"]["subjects"]) == subjects  # it read the dataset


def test_cli_as_a_user_types_it(tmp_path):
    exe = Path(sys.executable).parent / "bids_rim-synth"
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False).stdout
    for option in ("--subjects", "--sites", "--sessions", "--difficulty", "--size", "--seed",
                   "--montage"):
        assert option in help_text
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(exe), str(tmp_path / "c"), "--subjects", "1", "--size", "small",
                          "--seed", "4", "--montage", str(tmp_path / "m.png")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "oracle PR AUC" in run.stdout
    assert (tmp_path / "m.png").stat().st_size > 1000
    bad = subprocess.run([str(exe), str(tmp_path / "d"), "--subjects", "0"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "--subjects" in bad.stderr
    bad = subprocess.run([str(exe), str(tmp_path / "d"), "--jobs", "-1"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "--jobs" in bad.stderr
    again = subprocess.run([str(exe), str(tmp_path / "c"), "--subjects", "2", "--size", "small"],
                           capture_output=True, text=True, check=False)  # over the cohort just written
    assert again.returncode == 2 and f"{tmp_path / 'c'}: not empty" in again.stderr
    assert sorted(path.name for path in (tmp_path / "c").glob("sub-*")) == ["sub-001"]


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_other_difficulties_with_two_sessions(tmp_path, difficulty):
    """Both sessions are written, show the same lesions, and differ in head pose and noise."""
    summary = generate_cohort(tmp_path / "c", n_subjects=1, n_sessions=2, difficulty=difficulty,
                              size="small", seed=5, progress=False)
    assert summary.n_sessions == 2 and summary.difficulty == difficulty
    truth = tmp_path / "c" / "sourcedata" / "synth_truth"
    ids = [set(pd.read_csv(truth / f"sub-001_ses-0{k}_truth.tsv", sep="\t").lesion_id)
           for k in (1, 2)]
    # the same lesions; a few at the edge of the small crop move in or out with the head pose
    assert len(ids[0]) > 0 and len(ids[0] & ids[1]) >= 0.8 * max(len(ids[0]), len(ids[1]))
    affines = [nib.load(tmp_path / "c" / "sub-001" / f"ses-0{k}" / "anat" /
                        f"sub-001_ses-0{k}_Chimap.nii.gz").affine for k in (1, 2)]
    assert not np.allclose(affines[0], affines[1])


def test_local_noise_redraws_match_the_full_image_noise():
    """The oracle's local noise redraws have the SD of the noise of the whole reconstruction."""
    from bids_rim.synth.qsm import DipoleModel, NoiseModel, local_noise_realisations

    shape, spacing, lam = (48, 48, 48), 1.0, 0.02
    rng = np.random.default_rng(0)
    model = DipoleModel(shape, spacing, lam)
    mask = np.ones(shape, dtype=np.float32)
    sigma = np.full(shape, 0.01, dtype=np.float32)
    full = [model.invert(rng.standard_normal(shape).astype(np.float32) * sigma, mask)
            for _ in range(4)]
    centre = (slice(20, 28),) * 3
    full_sd = np.std([f[centre] for f in full])
    local = local_noise_realisations(NoiseModel(sigma, mask, spacing, lam, model.contrast_kept),
                                     centre, 16, rng)
    assert abs(np.std(local) / full_sd - 1) < 0.15


def test_threaded_sampling_gives_the_same_values_as_one_thread():
    """Template sampling is split between threads outside tests; the split must not change a bit."""
    from scipy import ndimage

    from bids_rim.synth.threads import sample_linear

    rng = np.random.default_rng(0)
    volume = rng.random((20, 24, 18)).astype(np.float32)
    points = rng.uniform(-2, 25, size=(3, 37, 5, 3)).astype(np.float32)
    one = sample_linear(volume, points, threads=1)
    assert one.shape == (37, 5, 3) and one.dtype == np.float32
    np.testing.assert_array_equal(one, sample_linear(volume, points, threads=3))
    np.testing.assert_array_equal(one, ndimage.map_coordinates(volume, points, order=1, cval=0.0,
                                                               prefilter=False, output=np.float32))


def test_drawn_rim_counts_follow_the_issue_prevalence():
    """Over many drawn patients (two sites, no images): ~10 % of lesions rim+, ~50 % of
    patients with >= 1 and ~20 % with >= 4 (issue 2)."""
    from bids_rim.synth.params import get_params
    from bids_rim.synth.population import draw_participant, draw_sites

    params = get_params()
    rng = np.random.default_rng(0)
    sites = draw_sites(rng, 2, params.sites)
    people = [draw_participant(rng, i, sites[i % 2], params.prl_counts, params.lesions)
              for i in range(3000)]
    rim = np.array([p.n_rim_positive for p in people])
    total = rim + np.array([p.n_rim_negative for p in people])
    assert 0.08 <= rim.sum() / total.sum() <= 0.12
    assert 0.42 <= np.mean(rim >= 1) <= 0.58
    assert 0.15 <= np.mean(rim >= 4) <= 0.27


def test_qsm_noise_scale_changes_the_noise_and_nothing_else(tmp_path):
    """A noise study's cohort is the same draw as the realistic one, only with less QSM noise:
    same lesions and labels, and images that differ by the same noise, scaled."""
    scales = (1.0, 0.5, 0.25)
    summaries = {scale: generate_cohort(tmp_path / str(scale), n_subjects=1, size="small", seed=6, progress=False,
                                        qsm_noise_scale=scale) for scale in scales}
    truth = {scale: pd.read_csv(tmp_path / str(scale) / "sourcedata" / "synth_truth" / "sub-001_ses-01_truth.tsv",
                                sep="\t") for scale in scales}
    same = ["lesion_id", "class", "volume_mm3", "rim_contrast_ppb", "core_contrast_ppb", "confounder",
            "shell_minus_core_ppb", "rim_shell_minus_core_ppb", "rater_missed", "x_mm"]
    pd.testing.assert_frame_equal(truth[1.0][same], truth[0.25][same])
    # The oracle's noise SD is that of a median difference, not linear in the noise, but it falls.
    assert (truth[0.25]["contrast_noise_sd_ppb"] < truth[1.0]["contrast_noise_sd_ppb"]).mean() > 0.8
    qsm = {scale: nib.load(next((tmp_path / str(scale)).glob("sub-001/ses-01/anat/*_Chimap.nii.gz"))).get_fdata()
           for scale in scales}
    brain = qsm[1.0] != 0
    # 0.5 and 0.25 of the same noise, each plus a constant (the CSF reference moves with the noise)
    half_noise, quarter_noise = qsm[1.0] - qsm[0.5], qsm[0.5] - qsm[0.25]
    assert 0.001 < np.std(half_noise[brain]) < 0.02  # ppm
    assert np.std(half_noise[brain] - 2 * quarter_noise[brain]) < 1e-3 * np.std(half_noise[brain])
    assert summaries[0.25].qsm_noise_scale == 0.25 and summaries[1.0].qsm_noise_scale == 1.0
    assert summaries[0.25].sites[0]["qsm_noise_ppb"] == pytest.approx(0.25 * summaries[1.0].sites[0]["qsm_noise_ppb"])
    assert "noise study" in (tmp_path / "0.25" / "README").read_text()
    assert "noise study" in summaries[0.25].format() and "noise study" not in summaries[1.0].format()
    with pytest.raises(ValueError, match="noise scale must be > 0"):
        generate_cohort(tmp_path / "bad", n_subjects=1, size="small", qsm_noise_scale=0.0, progress=False)
