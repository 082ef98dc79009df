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
    """Blend tissue classes by their partial volumes; deep nuclei override GM/WM.

    Float32 throughout; the nuclei are blended inside their own boxes (outside them their
    fraction is 0 and the blend changes nothing).
    """
    chi = subject.chi_ppm
    texture = smooth_random_field(rng, anat.brain.shape, tissue.chi_texture_scale_mm / voxel_mm,
                                  tissue.chi_texture_sd_ppm)

    def mix(*terms: tuple[np.ndarray, float]) -> np.ndarray:
        out = terms[0][0] * np.float32(terms[0][1])
        for fraction, value in terms[1:]:
            out += fraction * np.float32(value)
        return out

    chi_map = mix((anat.wm, chi["chi_wm_ppm"]), (anat.gm, chi["chi_cortical_gm_ppm"]))
    texture *= anat.wm + anat.gm
    chi_map += texture
    del texture
    flair = mix((anat.wm, tissue.flair_wm), (anat.gm, tissue.flair_gm), (anat.csf, tissue.flair_csf))
    r2 = mix((anat.wm, tissue.r2star_wm_hz), (anat.gm, tissue.r2star_gm_hz),
             (anat.csf, tissue.r2star_csf_hz))
    pd = mix((anat.wm, tissue.proton_density_wm), (anat.gm, tissue.proton_density_gm),
             (anat.csf, tissue.proton_density_csf))
    for (name, _, _, chi_name), nucleus in zip(DEEP_NUCLEI, anat.deep_nuclei.values()):
        if nucleus is None:
            continue
        b = nucleus.box
        frac = nucleus.fraction * anat.brain[b]
        value = chi[chi_name]
        chi_map[b] = chi_map[b] * (1 - frac) + frac * value
        flair[b] = flair[b] * (1 - frac) + frac * tissue.flair_deep_gm
        r2[b] = r2[b] * (1 - frac) + frac * (tissue.r2star_gm_hz
                                             + tissue.r2star_per_ppm_iron_hz * max(value, 0))
        pd[b] = pd[b] * (1 - frac) + frac * tissue.proton_density_gm
    outside = 1.0 - anat.brain
    head = np.clip(anat.t1_head, 0, 2)
    head *= outside
    flair += np.float32(0.8) * head
    r2 += np.float32(25.0) * outside
    pd += np.float32(0.6) * head
    return PropertyMaps(chi_map, flair, r2, pd)
