"""The run configuration: built once by the CLI, frozen, and passed down.

Only the top-level workflow factories read it; everything below them takes explicit
arguments (device, seed, threads), so that pure functions stay testable on their own.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (what SLURM, taskset or a container allot), not
    every CPU of the machine; all of them where the platform cannot tell."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class LesionSettings:
    """How lesions are found and cut into patches."""

    source: str = "auto"  # auto | mask | builtin
    min_volume_mm3: float = 14.1  # a sphere 3 mm across (NAIMS consensus)
    confluent_policy: str = "split"  # split | merge
    outline: str = "given"  # given | refined (redrawn at half the FLAIR contrast)
    patch_size: int = 32  # voxels
    patch_spacing_mm: float = 1.0
    annotation_match_mm: float = 4.0  # max centroid distance to match a rim annotation


@dataclass(frozen=True)
class ExecutionSettings:
    """How and where the Nipype workflow runs."""

    work_dir: Path = Path("work")
    nprocs: int = field(default_factory=usable_cpus)
    omp_nthreads: int = 1
    mem_mb: int | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    verbosity: int = 0
    clean_workdir: bool = False  # remove the selected participants' folders of work_dir before the run


@dataclass(frozen=True)
class TrainingSettings:
    """Group-level training options (``--train``)."""

    enabled: bool = False
    rim_annotations: Path | None = None
    arch: str = "asym"
    folds: int = 5
    pretrain_epochs: int = 10
    finetune_epochs: int = 30
    batch_size: int = 32
    init_from: str | None = None  # a model file to fine-tune, or "bundled" (the bundled model)


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation of ``bids_rim`` was asked to do."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    derivatives: tuple[Path, ...] = ()
    skip_bids_validation: bool = False
    output_spaces: tuple[str, ...] = ()
    model_path: Path | None = None
    run_inference: bool = True
    boilerplate_only: bool = False  # write logs/CITATION.md for these options, process nobody
    covariates: tuple[str, ...] = ()
    count_model: str = "negbin"
    lesions: LesionSettings = field(default_factory=LesionSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def as_report_dict(self) -> dict[str, Any]:
        """A JSON-friendly view of the configuration, for reports and provenance."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(item) for item in value]
            return value

        return plain(asdict(self))
