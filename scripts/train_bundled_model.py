"""Train the model bundled with bids_rim, reproducibly, on a synthetic cohort.

    python scripts/train_bundled_model.py [--subjects 40] [--size small] [--seed 2026] [--workdir DIR]
        [--participant-label sub-001 ...] [--folds 5] [--pretrain-epochs 15] [--finetune-epochs 30]
        [--lesion-outline given|refined]

Steps (each is the product's own command, as a user would run it):
1. ``bids_rim-synth`` writes a multi-site cohort at ``realistic`` difficulty;
2. ``bids_rim ... participant --no-inference`` cuts the lesion patches;
3. ``bids_rim ... group --train`` pretrains, cross-validates and fine-tunes the asymmetric model;
4. the model file and its model card are copied into ``bids_rim/data/``, under the name of the
   bundled model for that ``--lesion-outline`` (``BUNDLED_MODELS``).

The model is trained on synthetic data only: it demonstrates the pipeline and is a starting
point for fine-tuning on annotated local data, not a research-grade classifier.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bids_rim.cli.run import main as bids_rim_main
from bids_rim.synth import generate_cohort
from bids_rim.workflows.participant import BUNDLED_MODELS

DATA_DIR = Path(__file__).resolve().parent.parent / "bids_rim" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patch-spacing", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path("bundled_model_work"))
    parser.add_argument("--lesion-outline", choices=sorted(BUNDLED_MODELS), default="given",
                        help="train on lesion outlines as given or redrawn on FLAIR (the participant level's option)")
    parser.add_argument("--participant-label", nargs="+", default=[],
                        help="process and train on these subjects of the cohort only (time-boxed runs)")
    args = parser.parse_args()

    root = args.workdir.absolute()
    bids_dir, output_dir = root / "bids", root / "derivatives" / "bids_rim"
    if not (bids_dir / "dataset_description.json").is_file():
        print(generate_cohort(bids_dir, n_subjects=args.subjects, n_sites=args.sites, difficulty="realistic",
                              size=args.size, seed=args.seed, progress=True))
    common = [str(bids_dir), str(output_dir)]
    code = bids_rim_main(common + ["participant", "-d", str(bids_dir / "derivatives" / "lesion_masks"),
                                   "--work-dir", str(root / "work"), "--no-inference", "--nprocs", "2",
                                   "--omp-nthreads", "1", "--patch-size", str(args.patch_size),
                                   "--patch-spacing", str(args.patch_spacing), "--seed", str(args.seed),
                                   "--lesion-outline", args.lesion_outline]
                       + (["--participant-label", *args.participant_label] if args.participant_label else []))
    if code:
        return code
    code = bids_rim_main(common + ["group", "--train", "--rim-annotations",
                                   str(bids_dir / "derivatives" / "rim_annotations"),
                                   "--folds", str(args.folds), "--pretrain-epochs", str(args.pretrain_epochs),
                                   "--finetune-epochs", str(args.finetune_epochs), "--seed", str(args.seed),
                                   "--device", "cpu"])
    if code:
        return code
    models = output_dir / "models"
    bundled = DATA_DIR / BUNDLED_MODELS[args.lesion_outline]
    shutil.copyfile(next(models.glob("*_model.pt")), bundled)
    shutil.copyfile(next(models.glob("*_modelcard.md")),
                    bundled.with_name(bundled.name.replace("_model.pt", "_modelcard.md")))
    print(f"Bundled model written to {bundled} ({bundled.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
