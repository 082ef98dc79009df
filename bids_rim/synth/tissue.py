"""Physical property maps (susceptibility, FLAIR signal, R2*, proton density) of a session."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import DEEP_NUCLEI, AnatomyMaps, SubjectAnatomy
from .geometry import smooth_random_field
from .params import TissueParams


@dataclass
class PropertyMaps:
    """Per-voxel tissue properties on the QSM grid; lesions and veins are painted into them."""

    chi_ppm: np.ndarray
    flair: np.ndarray            # FLAIR signal relative to WM
    r2star_hz: np.ndarray
    proton_density: np.ndarray


def build_property_maps(anat: AnatomyMaps, subject: SubjectAnatomy, tissue: TissueParams,
                        rng: np.random.Generator, voxel_mm: float) -> PropertyMaps:
    """Blend tissue classes by their partial volumes; deep nuclei override GM/WM."""
    chi = subject.chi_ppm
    texture = smooth_random_field(rng, anat.brain.shape, tissue.chi_texture_scale_mm / voxel_mm,
                                  tissue.chi_texture_sd_ppm)
    chi_map = anat.wm * chi["chi_wm_ppm"] + anat.gm * chi["chi_cortical_gm_ppm"]
    chi_map += (anat.wm + anat.gm) * texture
    flair = anat.wm * tissue.flair_wm + anat.gm * tissue.flair_gm + anat.csf * tissue.flair_csf
    r2 = anat.wm * tissue.r2star_wm_hz + anat.gm * tissue.r2star_gm_hz + anat.csf * tissue.r2star_csf_hz
    pd = (anat.wm * tissue.proton_density_wm + anat.gm * tissue.proton_density_gm
          + anat.csf * tissue.proton_density_csf)
    for (name, _, _, chi_name), frac in zip(DEEP_NUCLEI, anat.deep_nuclei.values()):
        frac = frac * anat.brain
        value = chi[chi_name]
        chi_map = chi_map * (1 - frac) + frac * value
        flair = flair * (1 - frac) + frac * tissue.flair_deep_gm
        r2 = r2 * (1 - frac) + frac * (tissue.r2star_gm_hz + tissue.r2star_per_ppm_iron_hz * max(value, 0))
        pd = pd * (1 - frac) + frac * tissue.proton_density_gm
    outside = 1.0 - anat.brain
    head = np.clip(anat.t1_head, 0, 2)
    flair += outside * 0.8 * head
    r2 += outside * 25.0
    pd += outside * 0.6 * head
    return PropertyMaps(chi_map.astype(np.float32), flair.astype(np.float32),
                        r2.astype(np.float32), pd.astype(np.float32))
