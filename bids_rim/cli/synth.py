"""bids_rim-synth: write a synthetic MS cohort (QSM + FLAIR BIDS dataset with ground truth)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_rim-synth",
        description="Write a synthetic multiple sclerosis cohort: a raw BIDS dataset (FLAIR, QSM "
                    "Chimap in ppm, GRE magnitude), rater lesion masks and rim annotations as "
                    "derivatives, and the ground truth under sourcedata/synth_truth/. "
                    "See docs/synth.md for what is realistic and what is not.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="folder to write the dataset into (created if missing)")
    parser.add_argument("--subjects", type=int, default=8, metavar="N",
                        help="number of participants (default 8)")
    parser.add_argument("--sites", type=int, default=2, metavar="S",
                        help="number of scanner sites, each with its own protocol (default 2)")
    parser.add_argument("--sessions", type=int, default=1, metavar="K",
                        help="sessions per participant; same lesions, new acquisition (default 1)")
    parser.add_argument("--difficulty", choices=("easy", "realistic", "hard"), default="realistic",
                        help="parameter table: rim contrast, noise, mimics (default realistic)")
    parser.add_argument("--size", choices=("full", "small"), default="full",
                        help="full: whole brain at the site's QSM resolution; small: a cropped "
                             "version with QSM at 1.1-1.3 mm, for tests (default full)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--jobs", type=int, default=0, metavar="J",
                        help="worker processes that simulate subjects in parallel, at most one "
                             "per subject; 0 = one per usable CPU, as many as the free memory "
                             "holds (3.5 GB per full-size worker, 0.5 GB small) (default 0). The "
                             "files are the same bytes for any J")
    parser.add_argument("--montage", type=Path, metavar="PNG",
                        help="also write a PNG montage of sample rim+ lesions and mimics")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bids_rim.synth import generate_cohort
    from bids_rim.synth.montage import write_montage

    for name in ("subjects", "sites", "sessions"):
        if getattr(args, name) < 1:
            print(f"bids_rim-synth: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    if args.jobs < 0:
        print("bids_rim-synth: error: --jobs must be at least 0 (0: one per usable CPU)",
              file=sys.stderr)
        return 2
    if args.out_dir.is_dir() and any(args.out_dir.iterdir()):
        print(f"bids_rim-synth: error: {args.out_dir}: not empty; write the cohort into a new folder "
              "(a cohort written over another mixes the two)", file=sys.stderr)
        return 2
    try:
        summary = generate_cohort(args.out_dir, n_subjects=args.subjects, n_sites=args.sites,
                                  n_sessions=args.sessions, difficulty=args.difficulty,
                                  size=args.size, seed=args.seed, progress=not args.no_progress,
                                  jobs=args.jobs)
        print(summary.format())
        if args.montage:
            write_montage(args.out_dir, args.montage)
            print(f"  montage written to {args.montage}")
    except (OSError, ValueError) as error:
        print(f"bids_rim-synth: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
