"""QSM-only baseline: the asymmetric network's QSM path with FLAIR switched off.

Keeping the same trunk makes the comparison with ``asym`` an ablation of FLAIR alone.
"""

from __future__ import annotations

from bids_rim.models.asym import AsymQsmFlairNet


def build_qsm_only(width: int = 12, dropout: float = 0.2, region_pool_stages: tuple[int, ...] = (0, 1),
                   rim_readout: bool = True, readout_logit: bool = True,
                   readout_cnr: bool = True, head_width: int | None = None,
                   readout_outlines: int = 1) -> AsymQsmFlairNet:
    """The QSM path of :class:`AsymQsmFlairNet` (``conditioning="none"``); FLAIR is ignored."""
    return AsymQsmFlairNet(width=width, conditioning="none", film_stages=(), dropout=dropout,
                           region_pool_stages=region_pool_stages, rim_readout=rim_readout,
                           readout_logit=readout_logit, readout_cnr=readout_cnr, head_width=head_width,
                           readout_outlines=readout_outlines)
