"""The venous tree: medullary veins radiating from the ventricles, cortical and deep veins.

Veins are paramagnetic (deoxyhaemoglobin) and the main confounder of rim reading. Tubes are
centre lines in subject (y) mm with a radius, drawn once per subject.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import SubjectAnatomy
from .params import AnatomyParams
from .placement import inside_box, placement_maps


@dataclass(frozen=True)
class Tube:
    """A vein: centre line (N, 3) in subject mm and its radius in mm."""

    points_y_mm: np.ndarray
    radius_mm: float


def bent_line(start: np.ndarray, direction: np.ndarray, length_mm: float, bend_mm: float,
              rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """A smooth curve from ``start`` along ``direction`` with a random quadratic bend."""
    direction = direction / (np.linalg.norm(direction) + 1e-12)
    side = np.cross(direction, rng.normal(size=3))
    side /= np.linalg.norm(side) + 1e-12
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start + t * length_mm * direction + (t ** 2) * bend_mm * side


def draw_vein_tree(rng: np.random.Generator, subject: SubjectAnatomy, anatomy: AnatomyParams,
                   box_mni: np.ndarray | None) -> list[Tube]:
    """Draw the subject's veins (only those starting inside ``box_mni`` when given)."""
    maps = placement_maps()
    lines_mni: list[np.ndarray] = []   # (N, 3) centre lines in MNI mm, moved to y at the end
    radii: list[float] = []
    kinds = (("medullary_vein", anatomy.n_medullary_veins, anatomy.medullary_length_mm,
              anatomy.vein_radius_mm, False),
             ("cortical_vein", anatomy.n_cortical_veins, anatomy.cortical_length_mm,
              anatomy.cortical_vein_radius_mm, True))
    for kind, count, length_range, radius_range, tangential in kinds:
        pool, normals = maps.candidates[kind], maps.normals[kind]
        picks = rng.choice(len(pool), size=count, replace=False)
        for i in picks:
            direction = normals[i]
            if tangential:
                direction = np.cross(direction, rng.normal(size=3))
            line = bent_line(pool[i], direction, rng.uniform(*length_range),
                             rng.uniform(-4, 4), rng)
            radius = rng.uniform(*radius_range)
            if inside_box(pool[i][None], box_mni)[0]:
                lines_mni.append(line)
                radii.append(radius)
    for side in (1.0, -1.0):  # internal cerebral and thalamostriate veins
        icv = np.array([[side * 2.5, 2.0, 14.0], [side * 2.5, -15.0, 13.0],
                        [side * 2.0, -32.0, 8.0], [side * 0.5, -42.0, 4.0]])
        thalamostriate = np.array([[side * 17.0, -12.0, 20.0], [side * 11.0, -4.0, 17.0],
                                   [side * 3.0, 2.0, 14.0]])
        for line in (icv, thalamostriate):
            lines_mni.append(line + rng.normal(scale=1.0, size=line.shape))
            radii.append(rng.uniform(*anatomy.deep_vein_radius_mm))
    # one call for all points (the map is pointwise, and each call has a fixed cost)
    lines_y = np.split(subject.mni_to_y(np.concatenate(lines_mni).T).T,
                       np.cumsum([len(line) for line in lines_mni])[:-1])
    return [Tube(line, radius) for line, radius in zip(lines_y, radii)]
