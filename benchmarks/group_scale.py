"""Benchmark: aggregate 10,000 subjects' lesion tables (the group level's reading step).

Writes N small lesion tables (about 10 lesions each, as the participant level would) into a
temporary OUTPUT_DIR, then times :func:`bids_rim.group.aggregate.aggregate_lesion_tables`
and, separately, the whole statistics step on the result (no report). Target: aggregation of
10,000 tables in at most 30 s. Peak memory is that of the tables only (no image is read).

    OMP_NUM_THREADS=1 python benchmarks/group_scale.py [--subjects 10000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bids_rim.group import stats
from bids_rim.group.aggregate import aggregate_lesion_tables
from bids_rim.group.simulate import simulate_cohort_tables

TARGET_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bids_rim_group_scale_") as root:
        start = time.perf_counter()
        cohort = simulate_cohort_tables(Path(root), n_subjects=args.subjects, site_log_rate={"A": 0.5, "B": 1.0},
                                        edss_log_rate=0.2, seed=0)
        written_s = time.perf_counter() - start

        start = time.perf_counter()
        aggregated = aggregate_lesion_tables(cohort.output_dir, cohort.participants["participant_id"])
        aggregate_s = time.perf_counter() - start

        start = time.perf_counter()
        sessions = pd.DataFrame([(t.participant_id, "n/a") for t in aggregated.sessions],
                                columns=["participant_id", "session_id"])
        lesions = aggregated.lesions.assign(session_id="n/a")
        participants = cohort.participants.drop(columns="planted_rim_positive_count")
        subjects = stats.subject_table(lesions, sessions, participants)
        patients = stats.patient_level(subjects)
        model = stats.fit_count_model(patients, stats.encode_covariates(patients, ["EDSS", "age", "sex"]))
        stats.site_table(patients, lesions)
        stats.site_difference_tests(patients)
        statistics_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"subjects {args.subjects}, lesions {len(aggregated.lesions)} (tables written in {written_s:.1f} s)")
    print(f"aggregation: {aggregate_s:.2f} s (target <= {TARGET_S:.0f} s for 10,000)")
    print(f"statistics (subjects, sites, tests, {model.model} model): {statistics_s:.2f} s")
    print(f"peak resident memory of this process: {peak_mib:.0f} MiB")
    return 0 if aggregate_s <= TARGET_S * args.subjects / 10_000 else 1


if __name__ == "__main__":
    sys.exit(main())
