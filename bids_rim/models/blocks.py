"""Building blocks shared by the networks: pre-activation residual blocks, squeeze-excitation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Fixed input scaling, part of every network so a model file is self-contained: QSM in units of
# 20 ppb (a typical rim contrast), FLAIR relative to normal-appearing white matter, mask as is.
_INPUT_SCALE = (50.0, 1.0, 1.0)
_INPUT_OFFSET = (0.0, -1.0, 0.0)
# QSM beyond ±100 ppb (veins ≈ 300 ppb, dipole blooming, calcification) is compressed smoothly:
# ``c · tanh(x / c)`` with c = 5 units leaves rims (15–50 ppb, 0.75–2.5 units) nearly linear but
# stops a vein from dominating the per-sample GroupNorm statistics of the first layers.
QSM_SOFT_LIMIT = 5.0


def scale_inputs(x: torch.Tensor) -> torch.Tensor:
    """Patches (B, 3, ...) with channels qsm_ppm, flair_nawm, lesion_mask → network units.

    3-D patches come back in channels-last layout (NDHWC), and the convolutions after them keep
    it: oneDNN's 3-D convolutions of few channels run faster so. A pretraining step of 32
    patches of 32³ went from about 1.0 s to 0.8 s on 2 CPU threads. The arithmetic is the same,
    summed in another order: the 88-patient training run's validation PR AUC per epoch stayed
    within 0.011 of the run before the change (benchmarks/results/training_time.md).
    """
    scale = x.new_tensor(_INPUT_SCALE).view(1, 3, *([1] * (x.dim() - 2)))
    offset = x.new_tensor(_INPUT_OFFSET).view(1, 3, *([1] * (x.dim() - 2)))
    scaled = x * scale + offset
    qsm = QSM_SOFT_LIMIT * torch.tanh(scaled[:, :1] / QSM_SOFT_LIMIT)
    scaled = torch.cat([qsm, scaled[:, 1:]], dim=1)
    return scaled.contiguous(memory_format=torch.channels_last_3d) if scaled.dim() == 5 else scaled


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 8 groups that divide ``channels`` (stable with batches of a few lesions)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class SqueezeExcite(nn.Module):
    """Channel re-weighting from globally pooled features (Hu et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Conv3d(channels, hidden, 1), nn.GELU(), nn.Conv3d(hidden, channels, 1),
            nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class PreActResBlock(nn.Module):
    """Pre-activation residual block (norm → GELU → conv, twice), optionally strided and with SE.

    A 1×1×1 strided projection carries the skip path when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, squeeze_excite: bool = False) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.act = nn.GELU()
        self.squeeze_excite = SqueezeExcite(out_channels) if squeeze_excite else nn.Identity()
        self.skip = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        out = self.conv2(self.act(self.norm2(out)))
        return self.skip(x) + self.squeeze_excite(out)


def stem(in_channels: int, width: int) -> nn.Sequential:
    """Patchify to half resolution (2×2×2 stride-2 conv), then one residual block.

    Starting at half resolution keeps a 32³ patch cheap on CPU; a 1 mm rim still spans
    the 2×2×2 receptive field of the first layer.
    """
    return nn.Sequential(nn.Conv3d(in_channels, width, 2, stride=2, bias=False), PreActResBlock(width, width))


def light_stem(in_channels: int, width: int) -> nn.Sequential:
    """A cheap stem for a conditioning image: patchify to half resolution, then a depthwise 3×3×3 conv.

    About a twentieth of :func:`stem`'s cost; enough for FLAIR, whose lesion contrast is smooth
    and which only modulates the QSM path.
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, width, 2, stride=2, bias=False), group_norm(width), nn.GELU(),
        nn.Conv3d(width, width, 3, padding=1, groups=width, bias=False), group_norm(width), nn.GELU(),
    )


def _cube_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation of (B, 1, D, H, W) by a (2r+1)³ cube (outside the patch counts as 0).

    A cube is separable: three 1-D running maxima, each the maximum of 2r+1 shifted views.
    Element-wise maxima are far cheaper on CPU than ``max_pool3d``, which dominated the time.
    """
    for axis in (2, 3, 4):
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (4 - axis)] = pad[2 * (4 - axis) + 1] = radius
        padded = F.pad(x, pad)
        size = x.shape[axis]
        out = padded.narrow(axis, 0, size)
        for shift in range(1, 2 * radius + 1):
            out = torch.maximum(out, padded.narrow(axis, shift, size))
        x = out
    return x


class LesionRegionPool(nn.Module):
    """Average features over the whole patch, the lesion's edge band and its core; concatenated.

    A rim is a thin shell at the lesion edge: a global average dilutes it with the whole 32³
    context (veins, other lesions, background). Pooling over regions taken from the lesion mask
    channel hands the classifier the shell-versus-core comparison that human readers make.
    Regions are built at half resolution (2×2×2 blocks of the patch, cheap): core = blocks
    entirely inside the lesion; edge band = blocks within one block (≈ 2 voxels) of any lesion
    voxel, minus the core. They are then averaged down to the feature grid. Output: (B, 3 · C).
    """

    def regions(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 2, P/2, P/2, P/2) weights: edge band and core, from a (B, 1, P, P, P) 0/1 mask."""
        fraction = F.avg_pool3d(mask, 2)
        core = (fraction > 0.999).to(mask.dtype)
        near = _cube_max((fraction > 0).to(mask.dtype), 1)
        return torch.cat([near - core, core], dim=1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = F.adaptive_avg_pool3d(self.regions((mask > 0.5).to(features.dtype)), features.shape[2:])
        pooled = torch.einsum("bcdhw,brdhw->brc", features, weights) / weights.sum((2, 3, 4))[..., None].clamp_min(1e-3)
        return torch.cat([features.mean((2, 3, 4)), pooled.flatten(1)], dim=1)


def _cross_erode(mask: torch.Tensor) -> torch.Tensor:
    """Binary erosion of (B, 1, D, H, W) by the 6-neighbourhood cross (outside the patch counts as inside)."""
    padded = F.pad(mask, (1, 1, 1, 1, 1, 1), value=1.0)
    out = mask
    for axis in (2, 3, 4):
        for shift in (0, 2):
            view = padded
            for other in (2, 3, 4):
                view = view.narrow(other, shift if other == axis else 1, mask.shape[other])
            out = torch.minimum(out, view)
    return out


class RimReadout(nn.Module):
    """Parameter-free read-out of the QSM input at patch resolution: the comparison a reader makes.

    A rim is 0.7–2 mm thick: after the stem's 2×2×2 patchify it shares its feature voxels with
    the lesion core and the white matter around it. This read-out takes the network's QSM input
    (20 ppb units) before any downsampling. Edge = the one-voxel layer inside the lesion border
    (6-neighbourhood), core = the rest of the lesion, ring = the one-voxel layer outside.
    Medians, not means: one vein crossing a thin layer moves its mean but not its median (the
    soft limit is monotone, so the medians are those of the ppm values, limited). Returns
    median(edge) − median(core), median(edge), median(core), median(ring) − median(core) and the
    fraction of edge voxels more than 10 ppb (0.5 units) above the core median; an empty region
    counts as 0 (the NAWM level).

    With ``noise_normalised`` two contrast-to-noise ratios follow: the edge−core and ring−core
    differences over their own noise, ``1.2533 · σ · sqrt(1/n₁ + 1/n₂)`` (the standard error of a
    difference of two medians of n₁ and n₂ voxels of noise σ). σ is the robust standard deviation
    (1.4826 × median absolute deviation) of the patch's QSM more than three voxels outside the
    lesion's bounding box, outside-brain zeros left out, on every second voxel. A lesion too small
    to have a core is compared with the NAWM level, which is not measured in that lesion: its core
    counts as one voxel, so that such lesions (8 % of the benchmark's) need a contrast several
    times the noise to stand out. A 10 ppb difference means little on a small lesion of a noisy
    scan and much on a large lesion of a quiet one; the raw differences cannot tell these apart.
    On the 40-patient benchmark a logistic regression on the read-out rose from 0.374 to 0.560
    PR AUC with them (docs/training.md).

    With ``outlines=3`` the same numbers are read out three times: on the lesion mask as given,
    eroded and dilated by one voxel (6-neighbourhood; an erosion that would leave nothing keeps
    the mask), 3 × 5 or 3 × 7 numbers, the as-given ones first. The rater's or the segmenter's
    outline is off by a voxel or two, and a 1 mm rim is one voxel: read on the wrong layer it
    reads as core or as white matter. The noise σ is measured once, around the mask as given.
    """

    RIM_LEVEL = 0.5  # 10 ppb in network units
    MEDIAN_NOISE_FACTOR = 1.2533  # SD of a median of n Gaussian values ≈ 1.2533 σ / sqrt(n)
    BACKGROUND_DISTANCE = 3  # voxels between the lesion's box and the voxels that measure the noise
    MIN_BACKGROUND = 64  # sampled voxels needed to measure the noise away from the lesion
    # 1 ppb, the floor of σ and of a difference's noise: a patch without texture (a test pattern)
    # must not divide by zero, and no median difference is known better than that (correlated
    # noise, partial volume). On the 40-patient benchmark σ is 17-35 ppb and the floor never binds.
    MIN_NOISE = 0.05

    OUTLINES = (1, 3)

    def __init__(self, noise_normalised: bool = True, outlines: int = 1) -> None:
        super().__init__()
        if outlines not in self.OUTLINES:
            raise ValueError(f"outlines must be one of {self.OUTLINES}, got {outlines}")
        self.noise_normalised = noise_normalised
        self.outlines = outlines
        self.n_features = (7 if noise_normalised else 5) * outlines

    @classmethod
    def noise_sd(cls, qsm: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
        """Robust SD (B,) of the QSM input outside the lesion's box, outside-brain zeros left out.

        The box is the lesion's bounding box grown by ``BACKGROUND_DISTANCE`` voxels (built from
        per-axis profiles: a 3-D dilation costs more than the rest of the read-out). Where it
        leaves fewer than ``MIN_BACKGROUND`` sampled voxels (a lesion filling the patch), every
        sampled voxel outside the lesion itself is used.
        """
        sample = (slice(None), 0, slice(None, None, 2), slice(None, None, 2), slice(None, None, 2))
        reach = 2 * cls.BACKGROUND_DISTANCE + 1
        near = torch.ones_like(lesion)
        for axis in (2, 3, 4):
            profile = lesion.amax(dim=[d for d in (1, 2, 3, 4) if d != axis])  # (B, P)
            grown = F.max_pool1d(profile[:, None], reach, stride=1, padding=cls.BACKGROUND_DISTANCE)[:, 0]
            shape = [len(profile), 1, 1, 1, 1]
            shape[axis] = profile.shape[1]
            near = near * grown.view(shape)
        values, in_brain = qsm[sample], qsm[sample] != 0
        keep = (near[sample] < 0.5) & in_brain
        too_few = keep.flatten(1).sum(1) < cls.MIN_BACKGROUND
        keep = torch.where(too_few.view(-1, 1, 1, 1), (lesion[sample] < 0.5) & in_brain, keep)
        values = torch.where(keep, values, torch.full_like(values, float("nan"))).flatten(1)
        median = values.nanmedian(dim=1, keepdim=True).values
        mad = (values - median).abs().nanmedian(dim=1).values
        return torch.nan_to_num(1.4826 * mad, nan=cls.MIN_NOISE).clamp_min(cls.MIN_NOISE)

    def forward(self, qsm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lesion = (mask > 0.5).to(qsm.dtype)
        sigma = self.noise_sd(qsm, lesion) if self.noise_normalised else None
        numbers = [self._read_out(qsm, lesion, sigma)]
        if self.outlines == 3:
            eroded = _cross_erode(lesion)
            emptied = eroded.sum((1, 2, 3, 4), keepdim=True) == 0
            numbers.append(self._read_out(qsm, torch.where(emptied, lesion, eroded), sigma))
            numbers.append(self._read_out(qsm, 1 - _cross_erode(1 - lesion), sigma))
        return torch.cat(numbers, dim=1)

    def _read_out(self, qsm: torch.Tensor, lesion: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        """The 5 or 7 numbers (B, n) of one outline ``lesion`` (B, 1, D, H, W, 0/1)."""
        # Every region lies within one voxel of a lesion voxel: the medians need only the batch's
        # lesion bounding box plus one voxel (about a twentieth of a 32³ patch for a typical lesion).
        crop = [slice(None), slice(None)]
        for axis in (2, 3, 4):
            present = torch.nonzero(lesion.amax(dim=[d for d in range(5) if d != axis])).flatten()
            if len(present):
                crop.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
            else:
                crop.append(slice(None))
        qsm, lesion = qsm[tuple(crop)], lesion[tuple(crop)]
        core = _cross_erode(lesion)
        edge = lesion - core
        ring = 1 - _cross_erode(1 - lesion) - lesion

        def median_over(region: torch.Tensor) -> torch.Tensor:
            values = torch.where(region > 0.5, qsm, torch.full_like(qsm, float("nan"))).flatten(1)
            return torch.nan_to_num(values.nanmedian(dim=1).values, nan=0.0)

        edge_median, core_median, ring_median = median_over(edge), median_over(core), median_over(ring)
        edge_count = edge.sum((1, 2, 3, 4))
        above = ((qsm > core_median.view(-1, 1, 1, 1, 1) + self.RIM_LEVEL).to(qsm.dtype) * edge).sum((1, 2, 3, 4))
        fraction = above / edge_count.clamp_min(1.0)
        numbers = [edge_median - core_median, edge_median, core_median, ring_median - core_median, fraction]
        if sigma is not None:
            core_count, ring_count = core.sum((1, 2, 3, 4)), ring.sum((1, 2, 3, 4))
            for difference, count in ((numbers[0], edge_count), (numbers[3], ring_count)):
                spread = torch.sqrt(1.0 / count.clamp_min(1.0) + 1.0 / core_count.clamp_min(1.0))
                noise = self.MEDIAN_NOISE_FACTOR * sigma * spread
                numbers.append(difference / noise.clamp_min(self.MIN_NOISE))
        return torch.stack(numbers, dim=1)


def mlp_head(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Small classifier head: Linear → GELU → Dropout → Linear to one logit."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
