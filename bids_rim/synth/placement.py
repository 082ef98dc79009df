"""Where lesions and veins may sit: candidate maps derived once from the MNI template (2 mm)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .anatomy import load_mni_template, template_cache_path

STEP_MM = 2.0


@dataclass(frozen=True)
class PlacementMaps:
    """Candidate centres (MNI mm, (N, 3)) and their preferred orientation (unit vectors)."""

    candidates: dict[str, np.ndarray]
    normals: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def placement_maps() -> PlacementMaps:
    """Candidate positions per lesion location and per vein kind (cached next to the template)."""
    import nilearn

    path = template_cache_path(nilearn.__version__).replace(".npz", "_placement.npz")
    try:
        with np.load(path) as cached:
            names = [k[len("candidates_"):] for k in cached.files if k.startswith("candidates_")]
            return PlacementMaps({n: cached[f"candidates_{n}"] for n in names},
                                 {n: cached[f"normals_{n}"] for n in names})
    except (OSError, KeyError, ValueError):
        pass
    maps = _derive_placement_maps()
    try:  # write atomically: parallel test workers may race
        partial = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(partial, **{f"candidates_{n}": v for n, v in maps.candidates.items()},
                 **{f"normals_{n}": v for n, v in maps.normals.items()})
        os.replace(partial, path)
    except OSError:
        pass
    return maps


def _derive_placement_maps() -> PlacementMaps:
    """Candidate positions per lesion location and per vein kind, from the template."""
    t = load_mni_template()
    sl = (slice(None, None, 2),) * 3
    wm, gm, brain, vent = t.wm[sl], t.gm[sl], t.brain[sl], t.ventricles[sl]
    affine = t.affine.copy()
    affine[:3, :3] *= STEP_MM
    dist_vent = ndimage.distance_transform_edt(vent < 0.5) * STEP_MM
    dist_gm = ndimage.distance_transform_edt(gm < 0.5) * STEP_MM
    dist_out = ndimage.distance_transform_edt(brain > 0.5) * STEP_MM
    mni = (affine[:3, :3] @ np.indices(wm.shape).reshape(3, -1) + affine[:3, 3:4]).reshape(
        (3, *wm.shape))
    supra = mni[2] > -20
    masks = {
        "periventricular": (wm > 0.5) & (dist_vent >= 2) & (dist_vent <= 8),
        "juxtacortical": (wm > 0.5) & (dist_gm >= 1) & (dist_gm <= 3) & supra & (dist_out > 6),
        "deep_white_matter": (wm > 0.8) & (dist_vent > 10) & (dist_gm > 4) & supra,
        "infratentorial": (wm > 0.5) & (mni[2] < -22) & (dist_out > 4),
        "medullary_vein": (wm > 0.3) & (dist_vent > 0.5) & (dist_vent <= 2.5),
        "cortical_vein": (gm > 0.3) & (dist_out <= 3),
    }
    gradients = {
        "periventricular": _unit_gradient(dist_vent), "juxtacortical": _unit_gradient(-dist_gm),
        "medullary_vein": _unit_gradient(dist_vent), "cortical_vein": _unit_gradient(dist_out),
    }
    candidates, normals = {}, {}
    for name, mask in masks.items():
        idx = np.nonzero(mask)
        candidates[name] = mni[:, idx[0], idx[1], idx[2]].T.copy()
        if name in gradients:
            normals[name] = gradients[name][:, idx[0], idx[1], idx[2]].T.copy()
        else:
            normals[name] = np.zeros_like(candidates[name])
    return PlacementMaps(candidates, normals)


def _unit_gradient(volume: np.ndarray) -> np.ndarray:
    grad = np.stack(np.gradient(ndimage.gaussian_filter(volume.astype(float), 1.0)))
    return grad / (np.linalg.norm(grad, axis=0, keepdims=True) + 1e-9)


def inside_box(points_mni: np.ndarray, box_mni: np.ndarray | None, margin_mm: float = 0.0
               ) -> np.ndarray:
    """Boolean (N,) of points inside a (3, 2) MNI box shrunk by ``margin_mm`` (all if no box)."""
    if box_mni is None:
        return np.ones(len(points_mni), dtype=bool)
    return np.all((points_mni > box_mni[:, 0] + margin_mm) & (points_mni < box_mni[:, 1] - margin_mm),
                  axis=1)
