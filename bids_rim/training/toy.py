"""Toy lesion patches for unit tests: fast, labelled, with rims and mimics — NOT the realism cohort.

Each patch has the channels of the participant-level patch file (``qsm_ppm``, ``flair_nawm``,
``lesion_mask``) around one ovoid lesion centred in the patch. Rim+ lesions carry a thin
paramagnetic shell (+15…50 ppb) over most of their edge; rim- lesions are iso-intense, diffusely
paramagnetic, or have a vein (a thin paramagnetic tube) running past the edge — the classic
mimic. QSM noise is smoothed white noise of 5–10 ppb. The anatomy, physics (dipole blooming,
streaking) and registration errors of real data are out of scope: that is ``bids_rim.synth``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

RIM_PREVALENCE = 0.2


def _grid(size: int) -> np.ndarray:
    axis = np.arange(size) - (size - 1) / 2
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _toy_patch(size: int, rim: bool, rng: np.random.Generator) -> np.ndarray:
    grid = _grid(size).reshape(3, -1)
    rotated = (_random_rotation(rng) @ grid).reshape(3, size, size, size)
    radii = rng.uniform(0.15, 0.28, size=3) * size
    distance = np.sqrt(((rotated / radii[:, None, None, None]) ** 2).sum(0))  # 1 on the ovoid surface
    lesion = distance <= 1.0
    mean_radius = radii.mean()
    shell_depth = (distance - 1.0) * mean_radius  # ≈ voxels outside the edge

    noise_ppm = rng.uniform(0.005, 0.010)
    qsm = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 0.7)
    qsm = qsm / qsm.std() * noise_ppm
    flair = 1.0 + 0.05 * rng.normal(size=(size,) * 3)
    flair[lesion] += rng.uniform(0.6, 1.6)

    if rim:
        thickness = rng.uniform(0.8, 1.8)
        in_shell = (shell_depth > -1.0) & (shell_depth < thickness)
        # A rim covers at least two thirds of the edge: leave a random wedge open.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        cosine = np.tensordot(direction, rotated, axes=1) / np.maximum(np.linalg.norm(rotated, axis=0), 1e-6)
        covered = cosine < rng.uniform(0.4, 1.01)
        qsm[in_shell & covered] += rng.uniform(0.015, 0.05)
    else:
        kind = rng.choice(["iso", "diffuse", "vein"], p=[0.5, 0.2, 0.3])
        if kind == "diffuse":
            qsm[lesion] += rng.uniform(0.008, 0.02)
        elif kind == "vein":
            offset = rng.normal(size=3)
            offset = offset / np.linalg.norm(offset) * (mean_radius + rng.uniform(0.5, 1.5))
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            relative = grid.T - offset
            along = relative @ direction
            distance_to_line = np.linalg.norm(relative - along[:, None] * direction, axis=1).reshape((size,) * 3)
            qsm[distance_to_line < rng.uniform(0.6, 1.1)] += rng.uniform(0.03, 0.06)
        else:
            qsm[lesion] += rng.uniform(-0.006, 0.004)
    return np.stack([qsm, flair, lesion.astype(float)]).astype(np.float32)


def make_toy_patches(
    n_patients: int, lesions_per_patient: int, patch_size: int = 16, seed: int = 0
) -> tuple[np.ndarray, pd.DataFrame]:
    """Toy patches (N, 3, P, P, P) float32 and their metadata (participant_id, session_id, site, lesion_id, label).

    About 20 % of lesions are rim+; patients alternate between two sites. A unit-test fixture only.
    """
    if n_patients < 1 or lesions_per_patient < 1 or patch_size < 8:
        raise ValueError("make_toy_patches needs n_patients >= 1, lesions_per_patient >= 1, patch_size >= 8")
    rng = np.random.default_rng(seed)
    patches, rows = [], []
    for patient in range(n_patients):
        for lesion in range(lesions_per_patient):
            rim = bool(rng.random() < RIM_PREVALENCE)
            patches.append(_toy_patch(patch_size, rim, rng))
            rows.append({
                "participant_id": f"sub-{patient + 1:03d}",
                "session_id": "ses-01",
                "site": f"site-{patient % 2 + 1}",
                "lesion_id": lesion + 1,
                "label": float(rim),
            })
    return np.stack(patches), pd.DataFrame(rows)
