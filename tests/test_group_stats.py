"""Group statistics on simulated lesion tables with a known count model (no images)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_rim.errors import InputError
from bids_rim.group import stats
from bids_rim.group.aggregate import aggregate_lesion_tables, find_bids_sessions
from bids_rim.group.run import run_group_level
from bids_rim.group.simulate import simulate_cohort_tables


# --------------------------------------------------------------------------- distributions
def brute_force_pmf(probabilities: list[float]) -> np.ndarray:
    """P(K = k) by summing over every 0/1 outcome vector."""
    pmf = np.zeros(len(probabilities) + 1)
    for outcome in itertools.product((0, 1), repeat=len(probabilities)):
        pmf[sum(outcome)] += math.prod(p if hit else 1 - p for p, hit in zip(probabilities, outcome))
    return pmf


def test_poisson_binomial_matches_brute_force():
    probabilities = [0.05, 0.9, 0.33, 0.5, 0.71, 0.12, 0.99, 0.4]
    np.testing.assert_allclose(stats.poisson_binomial_pmf(probabilities), brute_force_pmf(probabilities), atol=1e-14)


def test_poisson_binomial_edge_cases_and_interval():
    np.testing.assert_allclose(stats.poisson_binomial_pmf([]), [1.0])
    # Equal probabilities give the binomial distribution.
    from scipy.stats import binom
    np.testing.assert_allclose(stats.poisson_binomial_pmf([0.3] * 12), binom.pmf(np.arange(13), 12, 0.3), atol=1e-14)
    assert stats.pmf_interval(stats.poisson_binomial_pmf([1.0, 1.0, 0.0])) == (2, 2)
    low, high = stats.pmf_interval(binom.pmf(np.arange(41), 40, 0.5))
    assert (low, high) == (binom.ppf(0.025, 40, 0.5), binom.ppf(0.975, 40, 0.5))
    with pytest.raises(ValueError):
        stats.poisson_binomial_pmf([0.2, 1.5])


@pytest.mark.parametrize(("successes", "total", "expected"), [
    (0, 10, (0.0, 0.27753)),        # Wilson (1927) score interval, textbook values
    (5, 10, (0.23659, 0.76341)),
    (81, 263, (0.25529, 0.36621)),  # Newcombe (1998), table I: 0.2553–0.3662
    (10, 10, (0.72247, 1.0)),
])
def test_wilson_interval_known_values(successes, total, expected):
    np.testing.assert_allclose(stats.wilson_interval(successes, total), expected, atol=5e-5)


def test_subject_row_counts_and_probability_of_four():
    lesions = pd.DataFrame({"participant_id": "sub-01", "session_id": "n/a", "volume_mm3": [10.0, 20.0, 30.0, 40.0, 50.0],
                            "rim_probability": [0.9, 0.8, 0.7, 0.6, 0.1], "rim_label": [1, 1, 1, 1, 0]})
    sessions = pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "session_id": ["n/a", "n/a"]})
    table = stats.subject_table(lesions, sessions, pd.DataFrame({"participant_id": ["sub-01"], "site": ["A"]}))
    first, empty = table.iloc[0], table.iloc[1]
    assert first["rim_positive_count"] == 4 and first["prl_ge4_decision"] == 1
    assert first["prl_volume_mm3"] == 100.0 and first["lesion_volume_mm3"] == 150.0
    assert first["expected_rim_positive_count"] == pytest.approx(3.1)
    assert first["p_at_least_4_prl"] == pytest.approx(brute_force_pmf([0.9, 0.8, 0.7, 0.6, 0.1])[4:].sum())
    assert empty["n_lesions"] == 0 and empty["rim_positive_count"] == 0 and empty["p_at_least_1_prl"] == 0


# --------------------------------------------------------------------------- cohorts with known truth
@pytest.fixture(scope="module")
def planted_cohort(tmp_path_factory):
    """300 patients, site B with 2.7× the PRL rate of site A, 0.25 log-rate per EDSS point."""
    return simulate_cohort_tables(tmp_path_factory.mktemp("planted"), n_subjects=300,
                                  site_log_rate={"A": -0.8, "B": 0.2}, edss_log_rate=0.25, seed=7)


@pytest.fixture(scope="module")
def planted_result(planted_cohort):
    return run_group_level(planted_cohort.bids_dir, planted_cohort.output_dir, progress=False)


def term_row(result, term: str) -> pd.Series:
    table = result.count_model.table.set_index("term")
    return table.loc[term]


def test_site_with_more_prl_is_detected(planted_result):
    tests = planted_result.site_tests.set_index("test")
    assert tests.loc["kruskal_wallis", "p_value"] < 0.05
    site = term_row(planted_result, "site[B vs A]")
    assert site["rate_ratio"] > 1 and site["rate_ratio_ci_low"] > 1
    assert site["rate_ratio_ci_low"] <= math.exp(1.0) <= site["rate_ratio_ci_high"]
    shares = planted_result.sites.set_index("site")["share_ge4_prl"]
    assert shares["B"] > shares["A"]


@pytest.mark.parametrize("count_model", ["negbin", "poisson"])
def test_planted_edss_association_is_recovered(planted_cohort, planted_result, count_model):
    result = planted_result if count_model == "negbin" else run_group_level(
        planted_cohort.bids_dir, planted_cohort.output_dir, count_model="poisson", progress=False)
    edss = term_row(result, "EDSS")
    assert edss["coefficient"] > 0
    assert edss["rate_ratio_ci_low"] <= math.exp(0.25) <= edss["rate_ratio_ci_high"]
    assert edss["p_value"] < 0.001
    assert result.count_model.n_patients == 300


def test_overdispersed_counts_fit_a_negative_binomial(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=300, site_log_rate={"A": 0.0, "B": 0.0},
                                    edss_log_rate=0.25, dispersion_alpha=0.5, seed=11)
    result = run_group_level(cohort.bids_dir, cohort.output_dir, covariates=["EDSS"], progress=False)
    assert result.count_model.model == "negbin"
    assert 0.2 < result.count_model.alpha < 1.0
    edss = term_row(result, "EDSS")
    assert edss["rate_ratio_ci_low"] <= math.exp(0.25) <= edss["rate_ratio_ci_high"]


def test_no_site_difference_when_none_is_planted(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=120, site_log_rate={"A": 0.5, "B": 0.5, "C": 0.5}, seed=3)
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    site_terms = result.count_model.table[result.count_model.table["term"].str.startswith("site[")]
    assert len(site_terms) == 2
    # Three sites: chi-square rather than Fisher, and no spurious difference at this seed.
    tests = result.site_tests.set_index("test")
    assert set(tests.index) == {"kruskal_wallis", "chi_square"}
    assert (tests["p_value"] > 0.05).all()
    assert (site_terms["rate_ratio_ci_low"] < 1).all() and (site_terms["rate_ratio_ci_high"] > 1).all()


# --------------------------------------------------------------------------- failed, missing, bad input
def test_failed_and_missing_participants_are_listed(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=12, site_log_rate={"A": 0.5, "B": 0.5}, seed=1)
    (cohort.output_dir / "sub-003" / "anat" / "sub-003_desc-lesions_table.tsv").unlink()
    crash_dir = cohort.output_dir / "sub-003" / "log" / "20260101-000000_abc"
    crash_dir.mkdir(parents=True)
    (crash_dir / "crash-20260101-node.txt").write_text("Traceback (most recent call last):\n"
                                                       "bids_rim.errors.InputError: sub-003 FLAIR is 2D\n")
    (cohort.output_dir / "sub-007" / "anat" / "sub-007_desc-lesions_table.tsv").unlink()
    aggregated = aggregate_lesion_tables(cohort.output_dir, cohort.participants["participant_id"])
    assert [p.participant_id for p in aggregated.failed] == ["sub-003"]
    assert "FLAIR is 2D" in aggregated.failed[0].reason
    assert [p.participant_id for p in aggregated.missing] == ["sub-007"]
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert {p.participant_id for p in result.problems} == {"sub-003", "sub-007"}
    assert len(result.subjects) == 10


def test_sessions_without_a_table_are_listed(tmp_path):
    """A participant whose second visit crashed (or never ran) is listed for that session, not analysed silently."""
    bids_dir, output_dir = tmp_path / "bids", tmp_path / "out"
    header = "lesion_id\tvolume_mm3\trim_probability\trim_uncertainty\trim_label\n"
    for participant in ("sub-01", "sub-02"):
        for session in ("ses-01", "ses-02"):
            (bids_dir / participant / session / "anat").mkdir(parents=True)
        anat = output_dir / participant / "ses-01" / "anat"
        anat.mkdir(parents=True)
        (anat / f"{participant}_ses-01_desc-lesions_table.tsv").write_text(header + "1\t12.5\t0.8\t0.1\t1\n")
    (bids_dir / "sub-03").mkdir()  # in BIDS_DIR, not in participants.tsv, never processed
    (output_dir / "sub-02" / "log").mkdir(parents=True)  # crash file straight under log/
    (output_dir / "sub-02" / "log" / "crash-node.txt").write_text("RuntimeError: ses-02 registration diverged\n")
    aggregated = aggregate_lesion_tables(output_dir, ["sub-01", "sub-02"], expected_sessions=find_bids_sessions(bids_dir))
    listed = [(p.participant_id, p.session_id, p.status) for p in aggregated.problems]
    assert listed == [("sub-01", "ses-02", "missing"), ("sub-02", "ses-02", "failed"), ("sub-03", None, "missing")]
    assert "registration diverged" in aggregated.problems[1].reason
    assert aggregated.problems[1].label == "sub-02 ses-02"


def test_aggregation_keeps_sessions_and_empty_tables(tmp_path):
    output_dir = tmp_path / "out"
    header = "lesion_id\tvolume_mm3\trim_probability\trim_uncertainty\trim_label\n"
    for session, body in (("01", "1\t12.5\t0.8\t0.1\t1\n2\tn/a\t0.2\t0.1\t0\n"), ("02", "")):
        anat = output_dir / "sub-01" / f"ses-{session}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-01_ses-{session}_desc-lesions_table.tsv").write_text(header + body)
    aggregated = aggregate_lesion_tables(output_dir)
    assert [(t.participant_id, t.session_id) for t in aggregated.sessions] == [("sub-01", "ses-01"), ("sub-01", "ses-02")]
    assert list(aggregated.lesions.columns[:2]) == ["participant_id", "session_id"]
    assert len(aggregated.lesions) == 2 and aggregated.lesions["volume_mm3"].isna().sum() == 1
    sessions = pd.DataFrame([(t.participant_id, t.session_id) for t in aggregated.sessions],
                            columns=["participant_id", "session_id"])
    subjects = stats.subject_table(aggregated.lesions, sessions, pd.DataFrame({"participant_id": ["sub-01"]}))
    assert subjects["rim_positive_count"].tolist() == [1, 0] and subjects["n_lesions"].tolist() == [2, 0]
    patients = stats.patient_level(subjects)
    assert patients[["participant_id", "session_id"]].values.tolist() == [["sub-01", "ses-02"]]


def test_missing_or_non_numeric_covariate_is_a_clear_error(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=20, site_log_rate={"A": 0.5}, seed=2)
    with pytest.raises(InputError, match=r"participants\.tsv: covariate column 'EDSS_v2' not found"):
        run_group_level(cohort.bids_dir, cohort.output_dir, covariates=["EDSS_v2"], progress=False)
    participants = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t", dtype=str)
    participants.loc[4, "EDSS"] = "moderate"
    participants.to_csv(cohort.bids_dir / "participants.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"participants\.tsv: covariate column 'EDSS' is not numeric \('moderate' for sub-005\)"):
        run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)


def test_sex_is_encoded_as_a_dummy_and_said_so():
    patients = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3"], "sex": ["F", "m", None]})
    encoded = stats.encode_covariates(patients, ["sex"])
    assert encoded.values["sex[M vs F]"].tolist()[:2] == [0.0, 1.0] and np.isnan(encoded.values["sex[M vs F]"][2])
    assert "1 = M" in encoded.notes[0]
    with pytest.raises(InputError, match="'sex' must be M or F"):
        stats.encode_covariates(pd.DataFrame({"participant_id": ["sub-1"], "sex": ["X"]}), ["sex"])


def test_tables_without_rim_probabilities_are_refused(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=4, site_log_rate={"A": 0.5}, seed=2)
    for table in cohort.output_dir.glob("sub-*/anat/*_table.tsv"):
        frame = pd.read_csv(table, sep="\t")
        frame.drop(columns=["rim_probability", "rim_uncertainty", "rim_label"]).to_csv(table, sep="\t", index=False)
    with pytest.raises(InputError, match="no rim_probability/rim_label columns.*need rim probabilities"):
        run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)


def test_tables_of_a_run_without_a_model_are_listed_not_counted_as_zero(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=12, site_log_rate={"A": 0.5, "B": 0.5}, seed=4)
    for participant in ("sub-002", "sub-005"):
        table = cohort.output_dir / participant / "anat" / f"{participant}_desc-lesions_table.tsv"
        frame = pd.read_csv(table, sep="\t")
        frame.drop(columns=["rim_probability", "rim_uncertainty", "rim_label"]).to_csv(table, sep="\t", index=False)
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert [(p.participant_id, p.status) for p in result.problems] == [("sub-002", "unscored"), ("sub-005", "unscored")]
    assert "sub-002" not in set(result.subjects["participant_id"]) and len(result.subjects) == 10
    assert result.count_model.n_patients == 10
    assert result.sites["n_patients"].sum() == 10


def test_no_lesion_table_at_all_is_a_clear_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="no \\*_desc-lesions_table.tsv found"):
        run_group_level(tmp_path, tmp_path / "out", progress=False)


def test_outputs_have_sidecars_describing_every_column(planted_result, planted_cohort):
    import json

    for name, path in planted_result.tables.items():
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        sidecar = json.loads(Path(path).with_suffix(".json").read_text())
        assert set(table.columns) <= set(sidecar), name
        assert all(sidecar[column].get("Description") for column in table.columns), name
    assert json.loads(planted_result.tables["countmodel"].with_suffix(".json").read_text())["Model"]["NParticipants"] == 300
