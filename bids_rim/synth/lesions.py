"""MS lesions: drawing their truth (class, shape, place, confounders) and painting them.

Lesions live in subject mm (y) so that every session of a subject shows the same lesions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import SubjectAnatomy
from .params import LesionParams
from .placement import inside_box, placement_maps
from .vessels import Tube, bent_line


@dataclass
class Lesion:
    """True parameters of one lesion (contrasts relative to normal-appearing WM)."""

    lesion_id: int
    rim_positive: bool
    location: str
    centre_y_mm: np.ndarray
    axes_rotation: np.ndarray          # columns: lesion axes in subject mm (first = long axis)
    semi_axes_mm: np.ndarray
    shape_directions: np.ndarray       # (3, 3) unit vectors of the irregularity terms
    shape_amplitudes: np.ndarray
    flair_ratio: float
    core_chi_ppb: float
    rim_chi_ppb: float = 0.0
    rim_thickness_mm: float = 0.0
    rim_coverage: float = 0.0
    gap_direction: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    confounder: str = "none"           # none | diffuse | edge_vein | calcification
    central_vein: bool = False
    confluent_with: int = 0
    veins: list[Tube] = field(default_factory=list)
    calcification_y_mm: np.ndarray | None = None
    calcification_radius_mm: float = 0.0
    calcification_chi_ppm: float = 0.0

    @property
    def volume_mm3(self) -> float:
        """Nominal (ellipsoid) volume."""
        return float(4.0 / 3.0 * np.pi * np.prod(self.semi_axes_mm))


def draw_lesions(rng: np.random.Generator, subject: SubjectAnatomy, n_rim_positive: int,
                 n_rim_negative: int, params: LesionParams, chi_vein_ppm: tuple[float, float],
                 chi_calc_ppm: tuple[float, float], box_mni: np.ndarray | None) -> list[Lesion]:
    """Draw the lesions of one subject (rim+ first in a random order of ids)."""
    maps = placement_maps()
    classes = [True] * n_rim_positive + [False] * n_rim_negative
    rng.shuffle(classes)
    usable_by_location = {name: np.flatnonzero(inside_box(maps.candidates[name], box_mni,
                                                          margin_mm=8.0))
                          for name in params.location_weights}
    # a cropped field of view may hold no candidate of a location (small size: infratentorial)
    locations = [name for name, usable in usable_by_location.items() if len(usable)]
    weights = np.array([params.location_weights[k] for k in locations])
    lesions: list[Lesion] = []
    for index, rim_positive in enumerate(classes):
        location = locations[rng.choice(len(locations), p=weights / weights.sum())]
        pool, normals = maps.candidates[location], maps.normals[location]
        pick = rng.choice(usable_by_location[location])
        centre_mni = pool[pick]
        normal = normals[pick] if np.any(normals[pick]) else rng.normal(size=3)
        volume = _draw_volume(rng, params, rim_positive)
        lesion = _draw_shape(rng, index + 1, rim_positive, location, subject, centre_mni, normal,
                             volume, params)
        _draw_contrast(rng, lesion, params, chi_vein_ppm, chi_calc_ppm)
        lesions.append(lesion)
    _make_confluent_pairs(rng, lesions, params)
    return lesions


def _draw_volume(rng: np.random.Generator, params: LesionParams, rim_positive: bool) -> float:
    median = params.volume_median_mm3 * (params.rim_positive_volume_factor if rim_positive else 1)
    volume = median * np.exp(params.volume_log_sd * rng.normal())
    return float(np.clip(volume, *params.volume_range_mm3))


def _draw_shape(rng, lesion_id, rim_positive, location, subject, centre_mni, normal_mni, volume,
                params) -> Lesion:
    elong = rng.uniform(*params.elongation)
    short = (volume / (4.0 / 3.0 * np.pi * elong)) ** (1.0 / 3.0)
    semi_axes = np.array([short * elong, short * rng.uniform(0.85, 1.0), short])
    centre_y = subject.mni_to_y(centre_mni[:, None])[:, 0]
    long_axis = normal_mni * subject.scale
    long_axis /= np.linalg.norm(long_axis)
    other = np.cross(long_axis, rng.normal(size=3))
    other /= np.linalg.norm(other)
    rotation = np.stack([long_axis, other, np.cross(long_axis, other)], axis=1)
    if location == "periventricular":  # push the lesion away so it touches, not fills, the ventricle
        centre_y = centre_y + long_axis * semi_axes[0] * 0.5
    shape_dirs = rng.normal(size=(3, 3))
    shape_dirs /= np.linalg.norm(shape_dirs, axis=1, keepdims=True)
    return Lesion(lesion_id, rim_positive, location, centre_y, rotation, semi_axes, shape_dirs,
                  rng.uniform(-1, 1, size=3) * params.shape_irregularity,
                  float(rng.uniform(*params.flair_ratio_to_wm)), 0.0,
                  gap_direction=_unit(rng.normal(size=3)))


def _draw_contrast(rng, lesion: Lesion, params: LesionParams, chi_vein_ppm, chi_calc_ppm) -> None:
    if lesion.rim_positive:
        lesion.core_chi_ppb = float(rng.uniform(*params.rim_core_chi_ppb))
        lesion.rim_chi_ppb = float(rng.uniform(*params.rim_chi_ppb))
        # a rim is an edge: never thicker than 40 % of the lesion's short semi-axis
        lesion.rim_thickness_mm = float(min(rng.uniform(*params.rim_thickness_mm),
                                            0.4 * lesion.semi_axes_mm.min()))
        lesion.rim_coverage = float(rng.uniform(*params.rim_coverage))
    else:
        draw = rng.uniform()
        if draw < params.diffuse_fraction_of_rim_negative:
            lesion.confounder = "diffuse"
            lesion.core_chi_ppb = float(rng.uniform(*params.diffuse_chi_ppb))
        else:
            lesion.core_chi_ppb = float(rng.uniform(*params.rim_negative_chi_ppb))
            if draw < params.diffuse_fraction_of_rim_negative + params.edge_vein_fraction_of_rim_negative:
                lesion.confounder = "edge_vein"
                lesion.veins.append(_edge_vein(rng, lesion, chi_vein_ppm))
            elif rng.uniform() < params.calcification_fraction / (
                    1 - params.diffuse_fraction_of_rim_negative - params.edge_vein_fraction_of_rim_negative):
                lesion.confounder = "calcification"
                lesion.calcification_y_mm = lesion.centre_y_mm + lesion.axes_rotation @ (
                    rng.uniform(-0.4, 0.4, size=3) * lesion.semi_axes_mm)
                lesion.calcification_radius_mm = float(rng.uniform(0.8, 1.8))
                lesion.calcification_chi_ppm = float(rng.uniform(*chi_calc_ppm))
    if rng.uniform() < params.central_vein_fraction:
        lesion.central_vein = True
        long_axis = lesion.axes_rotation[:, 0]
        half = lesion.semi_axes_mm[0] * 1.6
        line = bent_line(lesion.centre_y_mm - half * long_axis, long_axis, 2 * half,
                         rng.uniform(-1, 1), rng)
        lesion.veins.append(Tube(line, float(rng.uniform(0.3, 0.55))))


def _edge_vein(rng, lesion: Lesion, chi_vein_ppm) -> Tube:
    """A vein running along part of the lesion edge (the classic partial-rim mimic)."""
    rot, axes = lesion.axes_rotation, lesion.semi_axes_mm
    normal = _unit(rng.normal(size=3))
    u = _unit(np.cross(normal, rng.normal(size=3)))
    v = np.cross(normal, u)
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(-0.3, rng.uniform(2.0, 3.6), 24)
    points = []
    for a in angles:
        direction = np.cos(a) * u + np.sin(a) * v
        local = rot.T @ direction
        radius = 1.0 / np.sqrt(np.sum((local / axes) ** 2))
        points.append(lesion.centre_y_mm + direction * (radius + 0.3))
    return Tube(np.asarray(points), float(rng.uniform(0.35, 0.7)))


def _make_confluent_pairs(rng, lesions: list[Lesion], params: LesionParams) -> None:
    """Move a few rim- lesions so that they touch a neighbour (confluent lesions)."""
    for lesion in lesions:
        if lesion.rim_positive or rng.uniform() >= params.confluent_pair_fraction:
            continue
        partner = lesions[int(rng.integers(len(lesions)))]
        if partner is lesion:
            continue
        direction = _unit(rng.normal(size=3))
        shift = 0.8 * (partner.semi_axes_mm[1] + lesion.semi_axes_mm[1])
        offset = partner.centre_y_mm + direction * shift - lesion.centre_y_mm
        lesion.centre_y_mm = lesion.centre_y_mm + offset
        lesion.veins = [Tube(t.points_y_mm + offset, t.radius_mm) for t in lesion.veins]
        if lesion.calcification_y_mm is not None:
            lesion.calcification_y_mm = lesion.calcification_y_mm + offset
        lesion.confluent_with = partner.lesion_id
        partner.confluent_with = partner.confluent_with or lesion.lesion_id


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


@dataclass
class LesionFractions:
    """Partial-volume maps of one lesion inside a box of the grid."""

    box: tuple[slice, slice, slice]
    lesion: np.ndarray
    rim: np.ndarray              # rim fraction already multiplied by coverage


def lesion_fractions(lesion: Lesion, pose: np.ndarray, affine: np.ndarray,
                     shape: tuple[int, int, int]) -> LesionFractions | None:
    """Lesion and rim partial volumes on a grid (None when the lesion is outside it)."""
    voxel_mm = float(np.abs(np.linalg.det(affine[:3, :3])) ** (1 / 3))
    to_vox = np.linalg.inv(affine) @ pose
    centre_vox = to_vox[:3, :3] @ lesion.centre_y_mm + to_vox[:3, 3]
    reach = (lesion.semi_axes_mm.max() * 1.4 + 2.0) / voxel_mm
    lo = np.maximum(np.floor(centre_vox - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + reach).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ijk = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"))
    ijk = ijk.reshape(3, -1).astype(float)
    to_y = np.linalg.inv(pose) @ affine
    y = to_y[:3, :3] @ ijk + to_y[:3, 3:4]
    u = lesion.axes_rotation.T @ (y - lesion.centre_y_mm[:, None])
    rho = np.sqrt(np.sum((u / lesion.semi_axes_mm[:, None]) ** 2, axis=0)) + 1e-9
    norm_u = np.linalg.norm(u, axis=0) + 1e-9
    directions = u / norm_u
    bump = 1.0 + np.sum(lesion.shape_amplitudes[:, None] * np.cos(
        np.pi * (lesion.shape_directions @ directions)), axis=0)
    surface_radius = norm_u / rho * bump
    signed_mm = norm_u - surface_radius          # < 0 inside
    lesion_frac = np.clip(0.5 - signed_mm / voxel_mm, 0.0, 1.0)
    rim = np.zeros_like(lesion_frac)
    if lesion.rim_positive:
        upper = np.minimum(signed_mm + voxel_mm / 2, 0.0)
        lower = np.maximum(signed_mm - voxel_mm / 2, -lesion.rim_thickness_mm)
        rim = np.clip(upper - lower, 0.0, None) / voxel_mm
        direction_y = lesion.axes_rotation @ directions
        cos_gap = lesion.gap_direction @ direction_y
        threshold = 2 * lesion.rim_coverage - 1
        if lesion.rim_coverage < 0.98:
            rim *= np.clip((threshold - cos_gap) / 0.15 + 0.5, 0.0, 1.0)
    shape_box = tuple(hi - lo)
    return LesionFractions(box, lesion_frac.reshape(shape_box).astype(np.float32),
                           rim.reshape(shape_box).astype(np.float32))
