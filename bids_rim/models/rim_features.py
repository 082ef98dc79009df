"""Hand-crafted lesion-level rim features computed from a patch (the radiomic part of the baselines).

The lesion is centred in the patch. The *shell* is a two-voxel ring just outside the lesion mask
(where a paramagnetic rim sits), the *core* the mask eroded by one voxel. Features, in order of
``FEATURE_NAMES`` (QSM values in ppm, as in the patch):
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RIM_THRESHOLD_PPM = 0.01  # a shell sector at least 10 ppb above NAWM counts as rim-like

FEATURE_NAMES = (
    "lesion_volume_voxels",
    "qsm_lesion_mean_ppm",
    "qsm_lesion_std_ppm",
    "qsm_core_mean_ppm",
    "qsm_shell_mean_ppm",
    "qsm_shell_minus_core_ppm",
    "qsm_shell_p90_ppm",
    "qsm_edge_mean_ppm",
    "shell_fraction_above_threshold",
    "shell_octant_coverage",
    "qsm_shell_min_octant_ppm",
    "flair_lesion_mean",
)


def _dilate(mask: torch.Tensor, voxels: int) -> torch.Tensor:
    return F.max_pool3d(mask, 2 * voxels + 1, stride=1, padding=voxels)


def _erode(mask: torch.Tensor, voxels: int) -> torch.Tensor:
    return 1 - _dilate(1 - mask, voxels)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def _octants(size: int, device: torch.device) -> torch.Tensor:
    """(8, P, P, P) one-hot of the octant (relative to the patch centre) of every voxel."""
    axis = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    index = ((grid[0] > 0).long() * 4 + (grid[1] > 0).long() * 2 + (grid[2] > 0).long())
    return F.one_hot(index, 8).permute(3, 0, 1, 2).float()


@torch.no_grad()
def rim_features(patches: torch.Tensor) -> torch.Tensor:
    """Rim features (B, len(FEATURE_NAMES)) of patches (B, 3, P, P, P)."""
    qsm, flair, mask = patches[:, 0:1], patches[:, 1:2], (patches[:, 2:3] > 0.5).float()
    core = _erode(mask, 1)
    edge = mask - core
    shell = _dilate(mask, 2) - mask
    shell_plus_edge = shell + edge
    shell_mean = _masked_mean(qsm, shell)
    core_mean = _masked_mean(qsm, core)
    lesion_mean = _masked_mean(qsm, mask)
    lesion_std = (_masked_mean(qsm**2, mask) - lesion_mean**2).clamp_min(0).sqrt()
    shell_values = torch.where(shell.bool(), qsm, torch.full_like(qsm, float("nan"))).flatten(1)
    shell_p90 = torch.nan_to_num(torch.nanquantile(shell_values, 0.9, dim=1), nan=0.0)
    above = _masked_mean((qsm > RIM_THRESHOLD_PPM).float(), shell_plus_edge)
    octants = _octants(patches.shape[-1], patches.device)[None]  # (1, 8, P, P, P)
    octant_weight = shell_plus_edge * octants
    octant_mean = (qsm * octant_weight).flatten(2).sum(2) / octant_weight.flatten(2).sum(2).clamp_min(1)
    octant_present = octant_weight.flatten(2).sum(2) > 0
    coverage = (((octant_mean > RIM_THRESHOLD_PPM) & octant_present).float().sum(1)
                / octant_present.float().sum(1).clamp_min(1))
    min_octant = torch.where(octant_present, octant_mean, torch.full_like(octant_mean, float("inf"))).min(1).values
    min_octant = torch.where(torch.isinf(min_octant), torch.zeros_like(min_octant), min_octant)
    return torch.stack(
        [
            mask.flatten(1).sum(1),
            lesion_mean,
            lesion_std,
            core_mean,
            shell_mean,
            shell_mean - core_mean,
            shell_p90,
            _masked_mean(qsm, edge),
            above,
            coverage,
            min_octant,
            _masked_mean(flair, mask),
        ],
        dim=1,
    )


rim_features.__doc__ += "\n" + "\n".join(f"    - ``{name}``" for name in FEATURE_NAMES)
__doc__ += "\n".join(f"- ``{name}``" for name in FEATURE_NAMES)
