"""An analytic brain phantom for the preproc tests, and checks that it is what it claims.

The phantom is defined in continuous world space (RAS mm, anatomy centred at the origin) and
rendered on any grid, so a FLAIR on an oblique grid and displaced by a known rigid transform is
exact: FLAIR world point p shows the anatomy of QSM world point inv(qsm_to_flair) @ p.
Anatomy: an ellipsoidal brain (semi-axes 38, 42, 34 mm) with a 4 mm grey-matter rim, two
ventricles, a scalp shell (FLAIR only), and spherical lesions, some with a paramagnetic rim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

BRAIN_SEMI_AXES_MM = np.array([38.0, 42.0, 34.0])
GM_THICKNESS_MM = 4.0
VENTRICLES = [((-7.0, 0.0, 0.0), (4.0, 14.0, 6.0)), ((7.0, 0.0, 0.0), (4.0, 14.0, 6.0))]
#: Deep grey-matter nuclei (paramagnetic on QSM): they break the phantom's symmetry for registration.
DEEP_GM = [((-18.0, 6.0, -2.0), (5.0, 9.0, 6.0)), ((16.0, 2.0, -4.0), (5.0, 7.0, 5.0))]
RIM_PPM = 0.06
RIM_HALF_WIDTH_MM = 1.0
FLAIR_LEVELS = {"wm": 1.0, "gm": 1.25, "deep_gm": 1.15, "csf": 0.3, "lesion": 1.9, "scalp": 0.8}
MAGNITUDE_LEVELS = {"wm": 0.8, "gm": 1.0, "deep_gm": 0.55, "csf": 1.2, "lesion": 0.95}
QSM_LEVELS = {"wm": -0.02, "gm": 0.02, "deep_gm": 0.08, "csf": 0.0, "lesion_core": 0.0}


@dataclass(frozen=True)
class Lesion:
    centre_mm: tuple[float, float, float]
    radius_mm: float
    rim: bool


DEFAULT_LESIONS = (
    Lesion((-20.0, 10.0, 8.0), 5.0, True),
    Lesion((20.0, -12.0, 4.0), 4.5, False),
    Lesion((10.0, 22.0, -10.0), 4.0, True),
    Lesion((-14.0, -22.0, -6.0), 5.0, False),
    Lesion((2.0, -4.0, 18.0), 3.5, False),
)


def grid_affine(shape, spacing_mm, rotation=np.eye(3), centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of a grid of ``shape`` voxels, ``spacing_mm`` each, rotated, centred at ``centre_mm``."""
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.broadcast_to(spacing_mm, 3).astype(float))
    centre_vox = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = np.asarray(centre_mm) - affine[:3, :3] @ centre_vox
    return affine


def world_points(affine: np.ndarray, shape, voxel_offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1) + np.asarray(voxel_offset, float)[:, None]
    return (affine[:3, :3] @ ijk + affine[:3, 3:]).T


def partial_volume(render):
    """Average an image renderer over 2×2×2 sub-voxel points, as a scanner integrates a voxel."""
    def averaged(self, affine, shape, *args, **kwargs):
        offsets = [(a, b, c) for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)]
        total = sum(render(self, affine, shape, *args, voxel_offset=o, **kwargs) for o in offsets)
        data = total / len(offsets)
        return nib.Nifti1Image(data.astype(np.float32), affine)
    return averaged


@dataclass
class Phantom:
    lesions: tuple[Lesion, ...] = DEFAULT_LESIONS
    noise_sd: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    # --- anatomy, as functions of world points (N, 3) in the phantom's own frame ---
    @staticmethod
    def brain_radius(points):
        return np.sqrt(np.sum((points / BRAIN_SEMI_AXES_MM) ** 2, axis=1))

    def depth_mm(self, points):
        """Approximate depth below the brain surface (radial, in mm along the smallest axis)."""
        return (1.0 - self.brain_radius(points)) * BRAIN_SEMI_AXES_MM.min()

    @staticmethod
    def deep_gm(points):
        inside = np.zeros(len(points), bool)
        for centre, axes in DEEP_GM:
            inside |= np.sum(((points - centre) / axes) ** 2, axis=1) <= 1.0
        return inside

    @staticmethod
    def ventricles(points):
        inside = np.zeros(len(points), bool)
        for centre, axes in VENTRICLES:
            inside |= np.sum(((points - centre) / axes) ** 2, axis=1) <= 1.0
        return inside

    def lesion_labels(self, points):
        labels = np.zeros(len(points), np.int32)
        for n, lesion in enumerate(self.lesions, start=1):
            labels[np.linalg.norm(points - lesion.centre_mm, axis=1) <= lesion.radius_mm] = n
        return labels

    def rim(self, points):
        rim = np.zeros(len(points), bool)
        for lesion in self.lesions:
            if lesion.rim:
                distance = np.linalg.norm(points - lesion.centre_mm, axis=1)
                rim |= np.abs(distance - lesion.radius_mm) <= RIM_HALF_WIDTH_MM
        return rim

    # --- images ---
    def _noise(self, n):
        return self._rng.normal(0.0, self.noise_sd, n) if self.noise_sd else 0.0

    @partial_volume
    def flair(self, affine, shape, qsm_to_flair=np.eye(4), bias=None, voxel_offset=(0, 0, 0)):
        p = self._to_anatomy(affine, shape, qsm_to_flair, voxel_offset)
        brain = self.brain_radius(p) <= 1.0
        values = np.zeros(len(p))
        scalp = (self.brain_radius(p) > 1.15) & (self.brain_radius(p) <= 1.3)
        values[scalp] = FLAIR_LEVELS["scalp"]
        values[brain] = FLAIR_LEVELS["wm"]
        values[brain & (self.depth_mm(p) < GM_THICKNESS_MM)] = FLAIR_LEVELS["gm"]
        values[brain & self.deep_gm(p)] = FLAIR_LEVELS["deep_gm"]
        values[brain & self.ventricles(p)] = FLAIR_LEVELS["csf"]
        values[self.lesion_labels(p) > 0] = FLAIR_LEVELS["lesion"]
        values = np.where(values > 0, values + self._noise(len(p)), 0.0)
        data = values.reshape(shape)
        if bias is not None:
            data = data * bias(world_points(affine, shape, voxel_offset)).reshape(shape)
        return data

    def qsm(self, affine, shape, masked=True):
        """Susceptibility (ppm) at voxel centres; masked to the brain (0 outside) by default."""
        p = world_points(affine, shape)
        brain = self.brain_radius(p) <= 1.0
        values = np.full(len(p), QSM_LEVELS["wm"])
        values[self.depth_mm(p) < GM_THICKNESS_MM] = QSM_LEVELS["gm"]
        values[self.deep_gm(p)] = QSM_LEVELS["deep_gm"]
        values[self.ventricles(p)] = QSM_LEVELS["csf"]
        values[self.lesion_labels(p) > 0] = QSM_LEVELS["lesion_core"]
        values[self.rim(p) & brain] = RIM_PPM
        values = values + self._noise(len(p)) * 0.1
        if masked:
            values[~brain] = 0.0
        return nib.Nifti1Image(values.reshape(shape).astype(np.float32), affine)

    @partial_volume
    def magnitude(self, affine, shape, voxel_offset=(0, 0, 0)):
        """GRE magnitude: tissue contrast of its own (iron-rich deep grey matter dark), a dark skull
        and a scalp outside it; not masked."""
        p = world_points(affine, shape, voxel_offset)
        brain = self.brain_radius(p) <= 1.0
        radius = self.brain_radius(p)
        values = np.where(radius <= 1.3, 0.5, 0.0)  # scalp
        values[(radius > 1.0) & (radius <= 1.12)] = 0.05  # skull: dark on GRE
        values[brain] = MAGNITUDE_LEVELS["wm"]
        values[brain & (self.depth_mm(p) < GM_THICKNESS_MM)] = MAGNITUDE_LEVELS["gm"]
        values[brain & self.deep_gm(p)] = MAGNITUDE_LEVELS["deep_gm"]
        values[brain & self.ventricles(p)] = MAGNITUDE_LEVELS["csf"]
        values[self.lesion_labels(p) > 0] = MAGNITUDE_LEVELS["lesion"]
        values = values + np.abs(self._noise(len(p)))
        return values.reshape(shape)

    def brain_mask(self, affine, shape):
        p = world_points(affine, shape)
        return nib.Nifti1Image((self.brain_radius(p) <= 1.0).reshape(shape).astype(np.uint8), affine)

    def labels(self, affine, shape, qsm_to_flair=np.eye(4)):
        p = self._to_anatomy(affine, shape, qsm_to_flair)
        return nib.Nifti1Image(self.lesion_labels(p).reshape(shape), affine)

    def lesion_mask(self, affine, shape, qsm_to_flair=np.eye(4)):
        labels = self.labels(affine, shape, qsm_to_flair)
        return nib.Nifti1Image((np.asarray(labels.dataobj) > 0).astype(np.uint8), affine)

    @staticmethod
    def _to_anatomy(affine, shape, qsm_to_flair, voxel_offset=(0, 0, 0)):
        """World points of a FLAIR-space grid mapped back into the phantom (QSM) frame."""
        p = world_points(affine, shape, voxel_offset)
        inverse = np.linalg.inv(qsm_to_flair)
        return p @ inverse[:3, :3].T + inverse[:3, 3]


QSM_SHAPE = (48, 48, 48)
QSM_SPACING_MM = 2.0


def qsm_grid():
    return grid_affine(QSM_SHAPE, QSM_SPACING_MM), QSM_SHAPE


# --- checks of the phantom itself ---

def test_phantom_lesions_lie_in_white_matter_and_rims_are_paramagnetic():
    phantom = Phantom()
    affine, shape = qsm_grid()
    centres = np.array([lesion.centre_mm for lesion in phantom.lesions])
    radii = np.array([lesion.radius_mm for lesion in phantom.lesions])
    assert np.all(phantom.depth_mm(centres) - radii > GM_THICKNESS_MM)
    assert not phantom.ventricles(centres).any()
    assert not phantom.deep_gm(centres).any()
    qsm = np.asarray(phantom.qsm(affine, shape).dataobj)
    assert np.isclose(qsm.max(), QSM_LEVELS["deep_gm"])
    assert np.isclose(np.sort(np.unique(qsm))[-2], RIM_PPM)
    labels = np.asarray(phantom.labels(affine, shape).dataobj)
    assert set(np.unique(labels)) == set(range(len(phantom.lesions) + 1))


def test_phantom_flair_follows_known_transform():
    from bids_rim.preproc.transforms import rigid_matrix

    phantom = Phantom()
    transform = rigid_matrix((0, 0, 0), (10.0, 0, 0))
    affine, shape = qsm_grid()
    moved = np.asarray(phantom.lesion_mask(affine, shape, transform).dataobj)
    # A lesion at QSM x appears at FLAIR x + 10 mm, i.e. 5 voxels further along i.
    still = np.asarray(phantom.lesion_mask(affine, shape).dataobj)
    assert np.array_equal(moved[5:], still[:-5])
