"""A PNG montage of sample lesions: QSM beside FLAIR (resampled to QSM) for rim+ and mimics."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from .geometry import resample

HALF_WIDTH_MM = 11.0
QSM_WINDOW_PPB = (-70.0, 50.0)   # centred near normal white matter (about -30 ppb vs CSF)


def _patches(root: Path, truth_dir: Path, lesion) -> tuple[np.ndarray, np.ndarray]:
    """Axial QSM patch through a lesion centre and the FLAIR resampled onto it (truth motion)."""
    prefix = f"{lesion.participant_id}_{lesion.session_id}"
    anat = root / lesion.participant_id / lesion.session_id / "anat"
    qsm_img = nib.load(anat / f"{prefix}_Chimap.nii.gz")
    flair_img = nib.load(anat / f"{prefix}_FLAIR.nii.gz")
    registration = json.loads((truth_dir / f"{prefix}_registration.json").read_text())
    qsm = np.asarray(qsm_img.dataobj, dtype=np.float32)
    spacing = float(qsm_img.header.get_zooms()[0])
    centre = np.linalg.inv(qsm_img.affine) @ np.array([lesion.x_mm, lesion.y_mm, lesion.z_mm, 1])
    i, j, k = np.round(centre[:3]).astype(int)
    half = int(HALF_WIDTH_MM / spacing)
    box = (slice(max(0, i - half), i + half), slice(max(0, j - half), j + half), slice(k, k + 1))
    patch_affine = qsm_img.affine.copy()
    patch_affine[:3, 3] = qsm_img.affine[:3, :3] @ [b.start for b in box] + qsm_img.affine[:3, 3]
    patch_shape = tuple(b.stop - b.start for b in box[:2]) + (1,)
    flair = resample(np.asarray(flair_img.dataobj, dtype=np.float32), flair_img.affine,
                     patch_affine, patch_shape, np.asarray(registration["qsm_to_flair_ras"]))
    return qsm[box][:, :, 0], flair[:, :, 0]


def _pick_examples(truth: pd.DataFrame, per_kind: int) -> pd.DataFrame:
    """Per kind, lesions spread over a range, not only the best: rim+ by true rim CNR (clearest,
    typical, ...), mimics by volume (largest, middle, ...)."""
    plain = (truth["class"] == "rim-") & (truth["confounder"] == "none")
    kinds = {"rim+": truth["class"] == "rim+",
             "central vein (rim-)": plain & (truth["central_vein"] == 1),
             "edge vein (rim-)": truth["confounder"] == "edge_vein",
             "diffuse (rim-)": truth["confounder"] == "diffuse",
             "calcification (rim-)": truth["confounder"] == "calcification",
             "plain rim-": plain & (truth["central_vein"] == 0)}
    picks = []
    for kind, rows in kinds.items():
        key = "rim_cnr" if kind == "rim+" else "volume_mm3"
        ranked = truth[rows].sort_values(key, ascending=False)
        if ranked.empty:
            continue
        spread = np.unique(np.linspace(0, (len(ranked) - 1) * 0.6, per_kind).round().astype(int))
        chosen = ranked.iloc[spread].copy()
        chosen["kind"] = kind
        picks.append(chosen)
    return pd.concat(picks)


def write_montage(cohort_dir, png_path, per_kind: int = 3) -> Path:
    """Write the montage from a generated cohort (reads its files and truth tables)."""
    root = Path(cohort_dir)
    truth_dir = root / "sourcedata" / "synth_truth"
    tables = sorted(truth_dir.glob("*_truth.tsv"))
    if not tables:
        raise FileNotFoundError(f"{truth_dir}: no truth tables; is this a bids_rim-synth cohort?")
    truth = pd.concat(pd.read_csv(t, sep="\t") for t in tables)
    examples = _pick_examples(truth, per_kind)
    kinds = list(dict.fromkeys(examples["kind"]))
    fig, axes = plt.subplots(len(kinds), 2 * per_kind,
                             figsize=(1.7 * 2 * per_kind, 1.9 * len(kinds)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, kind in zip(axes, kinds):
        for column, (_, lesion) in enumerate(examples[examples["kind"] == kind].iterrows()):
            qsm_patch, flair_patch = _patches(root, truth_dir, lesion)
            row[2 * column].imshow(1000 * qsm_patch.T, origin="lower", cmap="gray",
                                   vmin=QSM_WINDOW_PPB[0], vmax=QSM_WINDOW_PPB[1],
                                   interpolation="nearest")
            row[2 * column + 1].imshow(flair_patch.T, origin="lower", cmap="gray",
                                       interpolation="nearest")
            detail = (f"{lesion.rim_contrast_ppb:.0f} ppb, CNR {lesion.rim_cnr:.1f}"
                      if lesion["class"] == "rim+" else f"{lesion.volume_mm3:.0f} mm3")
            row[2 * column].set_title(f"QSM {kind}\n{lesion.participant_id} #{lesion.lesion_id}"
                                      f" {detail}", fontsize=6)
            row[2 * column + 1].set_title("FLAIR", fontsize=6)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
