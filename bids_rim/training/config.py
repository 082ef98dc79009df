"""The training configuration: one frozen dataclass with every knob, built once and passed down."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRETRAIN_OBJECTIVES = ("predictor", "variance", "infonce", "masked", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run (the defaults are the product's defaults).

    Pretraining objectives (any subset of ``PRETRAIN_OBJECTIVES``): ``predictor`` FLAIR→QSM
    embedding prediction with a stop-gradient; ``variance`` VICReg variance/covariance terms on
    both embeddings; ``infonce`` cross-modal contrastive; ``masked`` masked QSM reconstruction
    conditioned on FLAIR; ``mse`` the paper's plain (collapsible) MSE, kept for the ablation.
    """

    arch: str = "asym"
    conditioning: str = "film_spatial"
    film_stages: tuple[int, ...] = (0,)
    width: int = 12
    dropout: float = 0.2
    # Stages of the asym QSM path whose features are pooled over the lesion's edge band and core
    # (0 = P/2, 1 = P/4, 2 = P/8); see bids_rim.models.asym for why not only the deepest one.
    region_pool_stages: tuple[int, ...] = (0, 1)
    # A parameter-free median read-out of the QSM edge and core at patch resolution (RimReadout).
    rim_readout: bool = True
    # The read-out also reaches the logit linearly (training starts as a logistic regression on it).
    readout_logit: bool = True
    # Fine-tuning also moves that linear path; False keeps the logistic regression it starts as,
    # so that the network learns only what the read-out misses.
    train_readout_logit: bool = True
    # Early stopping also weighs the starting point (epoch 0: the regression on the read-out, or
    # the init_from model): training replaces it only if it beats it on the inner validation patients.
    readout_fallback: bool = False
    # The read-out also gives its edge and ring contrasts over their noise (RimReadout).
    readout_cnr: bool = True
    # Outlines the read-out reads the lesion on: 1 = the mask as given; 3 = also eroded and dilated
    # by one voxel (RimReadout). Recorded in the model file only when not 1, the layout of every
    # model file before it existed.
    readout_outlines: int = 1
    # Hidden units of the asym/qsm_only MLP head; None = 4 * width (the layout of every model file
    # so far, which therefore does not record it).
    head_width: int | None = None
    # Fine-tuning adds head_logit_penalty · mean(MLP head logit²) to the loss (asym and qsm_only):
    # the convolutional features move the logit away from the linear read-out path only where the
    # training lesions pay for it. 0.1 makes a shift of one logit unit on every lesion cost about
    # what the focal loss of a coin flip does (0.087). Training-only: not in the model file's kwargs.
    head_logit_penalty: float = 0.0
    # Probability that a rim− patch of a fine-tuning batch is made diffusely paramagnetic (a
    # uniform 5–45 ppb inside its lesion, bids_rim.training.augment); the start regression of the
    # read-out path also sees that share of rim− lesions so altered. Training-only.
    simulated_diffuse_fraction: float = 0.0
    early_fusion_widen_factor: float = 0.25
    radiomics_estimator: str = "random_forest"
    # self-supervised pretraining
    pretrain_epochs: int = 10
    pretrain_objectives: tuple[str, ...] = ("predictor", "variance", "infonce", "masked")
    pretrain_lr: float = 1e-3
    infonce_temperature: float = 0.1
    mask_ratio: float = 0.4
    # supervised fine-tuning
    finetune_epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "focal"  # focal | weighted_bce
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    supcon_temperature: float = 0.1
    supcon_weight: float = 0.08
    learn_supcon_weight: bool = True
    flair_shift_voxels: int = 1
    qsm_noise_std_ppm: float = 0.003
    patience: int = 8
    # Epochs always trained before early stopping may keep or stop at an epoch (capped at
    # finetune_epochs): without it a noisy validation peak kept epoch 1 or 2 (docs/training.md).
    min_finetune_epochs: int = 10
    inner_val_fraction: float = 0.2
    # evaluation and output
    folds: int = 5
    seed: int = 0
    patch_size: int = 32
    patch_spacing_mm: float = 1.0
    bootstrap_resamples: int = 500
    train_final_model: bool = True
    # A model file whose final member initialises every model (fine-tuning the bundled model).
    init_from: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.pretrain_objectives) - set(PRETRAIN_OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown pretraining objective(s) {sorted(unknown)}; choose from {PRETRAIN_OBJECTIVES}")
        if self.loss not in ("focal", "weighted_bce"):
            raise ValueError(f"unknown loss {self.loss!r}; choose focal or weighted_bce")
        if self.head_logit_penalty < 0:
            raise ValueError(f"head_logit_penalty must be at least 0, got {self.head_logit_penalty}")
        if not 0.0 <= self.simulated_diffuse_fraction <= 1.0:
            raise ValueError(f"simulated_diffuse_fraction must be within [0, 1], got {self.simulated_diffuse_fraction}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")

    def model_kwargs(self) -> dict[str, Any]:
        """The architecture configuration passed to ``get_model(self.arch, **kwargs)``."""
        # Options recorded only when not at their default, so that older model files still match.
        optional = {"head_width": self.head_width} if self.head_width is not None else {}
        if self.readout_outlines != 1:
            optional["readout_outlines"] = self.readout_outlines
        if self.arch == "asym":
            return {"width": self.width, "conditioning": self.conditioning,
                    "film_stages": list(self.film_stages), "dropout": self.dropout,
                    "region_pool_stages": list(self.region_pool_stages), "rim_readout": self.rim_readout,
                    "readout_logit": self.readout_logit, "readout_cnr": self.readout_cnr, **optional}
        if self.arch == "qsm_only":
            return {"width": self.width, "dropout": self.dropout, "region_pool_stages": list(self.region_pool_stages),
                    "rim_readout": self.rim_readout, "readout_logit": self.readout_logit,
                    "readout_cnr": self.readout_cnr, **optional}
        if self.arch in ("rimnet", "qsmrimnet"):
            return {"width": self.width, "dropout": self.dropout}
        if self.arch == "early_fusion":
            return {"widen_factor": self.early_fusion_widen_factor, "dropout": self.dropout}
        if self.arch == "radiomics":
            return {"estimator": self.radiomics_estimator, "seed": self.seed}
        raise ValueError(f"unknown architecture {self.arch!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (tuples as lists) for the model file and the model card."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
