"""``bids_rim-demo``: the whole product in one command, on a synthetic multi-site cohort.

Generates a small cohort with :mod:`bids_rim.synth`, runs the participant level with the
bundled model (lesion masks from the cohort's rater derivative), then the group level, and
prints where the reports and tables are.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bids_rim.cli.exit_codes import EXIT_INTERRUPTED, EXIT_TERMINATED
from bids_rim.cli.parser import positive_int
from bids_rim.cli.run import configure_logging
from bids_rim.cli.run import main as bids_rim_main

LOGGER = logging.getLogger("bids_rim.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_rim-demo",
        description="Generate a synthetic multi-site MS cohort, run bids_rim's participant and group levels on "
                    "it with the bundled model, and print where the reports are.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", default="bids_rim_demo", type=Path,
                        help="folder for the cohort (bids/), the outputs (derivatives/bids_rim/) and work/")
    parser.add_argument("--subjects", type=positive_int, default=6,
                        help="number of synthetic participants (a new cohort only: an existing DIR/bids is reused)")
    parser.add_argument("--sites", type=positive_int, default=2, help="number of synthetic sites (a new cohort only)")
    parser.add_argument("--size", choices=["small", "full"], default="small",
                        help="'small' (cropped, QSM at 1.1-1.3 mm, seconds per subject) or 'full' (whole brain at the "
                             "site's resolution, about a minute each; a new cohort only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort (a new one only) and of the pipeline")
    parser.add_argument("--nprocs", type=positive_int, default=2, help="processes for the participant level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbosity=0)  # the same single handler the bids_rim command installs
    from bids_rim.synth import generate_cohort

    root = args.directory.absolute()
    bids_dir, output_dir, work_dir = root / "bids", root / "derivatives" / "bids_rim", root / "work"
    if not (bids_dir / "dataset_description.json").is_file():
        LOGGER.info("Generating a synthetic cohort of %d participants at %d sites in %s",
                    args.subjects, args.sites, bids_dir)
        summary = generate_cohort(bids_dir, n_subjects=args.subjects, n_sites=args.sites, n_sessions=1,
                                  difficulty="realistic", size=args.size, seed=args.seed, progress=True,
                                  jobs=0)
        LOGGER.info("Cohort: %d lesions, %d truly rim+ (prevalence %.2f); the oracle's PR AUC (the "
                    "ceiling any method can reach) is %.2f; the truth is in %s",
                    summary.n_lesions, summary.n_rim_positive, summary.lesion_prevalence,
                    summary.oracle_pr_auc, bids_dir / "sourcedata")
    else:
        LOGGER.warning("Reusing the cohort already in %s: --subjects, --sites, --size and --seed shape a new "
                       "cohort only (give another directory for one)", bids_dir)
    common = [str(bids_dir), str(output_dir)]
    execution = ["--work-dir", str(work_dir), "--nprocs", str(args.nprocs), "--omp-nthreads", "1",
                 "--seed", str(args.seed)]
    participant_code = bids_rim_main(common + ["participant", "-d", str(bids_dir / "derivatives" / "lesion_masks")]
                                     + execution)
    if participant_code in (EXIT_INTERRUPTED, EXIT_TERMINATED):  # stopped by the user: no group level
        return participant_code
    group_code = bids_rim_main(common + ["group"])  # the statistics read none of the execution options
    print()
    print(f"Participant reports: {output_dir}/sub-*.html")
    print(f"Lesion tables:       {output_dir}/sub-*/ses-*/anat/*_desc-lesions_table.tsv")
    print(f"Group report:        {output_dir / 'group.html'}")
    print(f"Group tables:        {output_dir / 'group'}/")
    if participant_code or group_code:
        print(f"Some steps failed (participant exit code {participant_code}, group exit code {group_code})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
