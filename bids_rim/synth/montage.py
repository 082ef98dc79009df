"""A PNG montage of sample lesions: QSM beside FLAIR (resampled to QSM) for rim+ and mimics."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .geometry import resample  # noqa: E402

HALF_WIDTH_MM = 14.0


def _pick_examples(truth: pd.DataFrame, per_kind: int) -> pd.DataFrame:
    kinds = {"rim+": truth["class"] == "rim+",
             "edge vein (rim-)": truth["confounder"] == "edge_vein",
             "diffuse (rim-)": truth["confounder"] == "diffuse",
             "calcification (rim-)": truth["confounder"] == "calcification",
             "plain rim-": (truth["class"] == "rim-") & (truth["confounder"] == "none")}
    picks = []
    for kind, rows in kinds.items():
        chosen = truth[rows].sort_values("volume_mm3", ascending=False).head(per_kind).copy()
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
    fig, axes = plt.subplots(len(examples), 2, figsize=(4.2, 2.1 * len(examples)))
    axes = np.atleast_2d(axes)
    for row, (_, lesion) in zip(axes, examples.iterrows()):
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
        box = (slice(max(0, i - half), i + half), slice(max(0, j - half), j + half), k)
        flair_on_qsm = resample(np.asarray(flair_img.dataobj, dtype=np.float32), flair_img.affine,
                                qsm_img.affine, qsm.shape,
                                np.asarray(registration["qsm_to_flair_ras"]))
        row[0].imshow(1000 * qsm[box].T, origin="lower", cmap="gray", vmin=-50, vmax=70)
        row[1].imshow(flair_on_qsm[box].T, origin="lower", cmap="gray")
        row[0].set_title(f"QSM [-50,70] ppb: {lesion.kind}", fontsize=7)
        row[1].set_title(f"FLAIR {prefix} lesion {lesion.lesion_id}", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
