"""Group statistics on simulated lesion tables with a known count model (no images)."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_rim.cli.run import main
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
    lesions = pd.DataFrame({"participant_id": "sub-01", "session_id": "n/a",
                            "volume_mm3": [10.0, 20.0, 30.0, 40.0, 50.0],
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
    aggregated = aggregate_lesion_tables(output_dir, ["sub-01", "sub-02"],
                                         expected_sessions=find_bids_sessions(bids_dir))
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
    assert ([(t.participant_id, t.session_id) for t in aggregated.sessions]
            == [("sub-01", "ses-01"), ("sub-01", "ses-02")])
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
    # Named with --covariates: the one-line refusal stays.
    with pytest.raises(InputError,
                       match=r"participants\.tsv: covariate column 'EDSS' is not numeric \('moderate' for sub-005\)"):
        run_group_level(cohort.bids_dir, cohort.output_dir, covariates=["EDSS", "age"], progress=False)


def write_participants(cohort, **changes: dict[int, str]) -> None:
    """Overwrite cells of the cohort's participants.tsv: ``column={row: value}``."""
    participants = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t", dtype=str)
    for column, cells in changes.items():
        for row, value in cells.items():
            participants.loc[row, column] = value
    participants.to_csv(cohort.bids_dir / "participants.tsv", sep="\t", index=False)


def test_a_default_covariate_that_is_not_numeric_is_left_out_with_a_note(tmp_path):
    """age "89+" (a de-identified age) in a default covariate: the model goes on without age, saying so."""
    cohort = simulate_cohort_tables(tmp_path, n_subjects=60, site_log_rate={"A": 0.5, "B": 0.5}, seed=2)
    write_participants(cohort, age={1: "89+"})
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    terms = set(result.count_model.table["term"])
    assert "age" not in terms and {"EDSS", "disease_duration", "sex[M vs F]", "site[B vs A]"} <= terms
    note = next(note for note in result.count_model.notes if "'age'" in note)
    assert "default covariate 'age' left out of the count model" in note and "'89+' for sub-002" in note
    assert result.count_model.n_patients == 60  # age left out, so nobody is excluded for it
    sidecar = json.loads(result.tables["countmodel"].with_suffix(".json").read_text())
    assert note in sidecar["Model"]["Notes"]
    assert "89+" in result.report.read_text()
    subjects = pd.read_csv(result.tables["subjects"], sep="\t", dtype=str)
    assert len(subjects) == 60 and subjects.loc[1, "age"] == "89+"


def test_an_explicit_non_numeric_covariate_is_refused_through_the_command_line(tmp_path, capsys):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=12, site_log_rate={"A": 0.5, "B": 0.5}, seed=2)
    write_participants(cohort, age={1: "89+"})
    assert main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--covariates", "age"]) == 64
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "participants.tsv: covariate column 'age' is not numeric ('89+' for sub-002)" in error


def test_sex_is_encoded_as_a_dummy_and_said_so():
    patients = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3"], "sex": ["F", "m", None]})
    encoded = stats.encode_covariates(patients, ["sex"])
    assert encoded.values["sex[M vs F]"].tolist()[:2] == [0.0, 1.0] and np.isnan(encoded.values["sex[M vs F]"][2])
    assert "1 = M" in encoded.notes[0]
    assert encoded.levels["sex[M vs F]"] == ("sex F", "sex M")
    with pytest.raises(InputError, match="'sex' must be M or F"):
        stats.encode_covariates(pd.DataFrame({"participant_id": ["sub-1"], "sex": ["X"]}), ["sex"])
    dropped = stats.encode_covariates(pd.DataFrame({"participant_id": ["sub-1"], "sex": ["X"]}), ["sex"],
                                      drop_unusable=True)
    assert dropped.values.empty and "default covariate 'sex' left out" in dropped.notes[0] and "'X'" in dropped.notes[0]


def test_sex_other_is_missing_for_the_dummy_with_a_note():
    """BIDS allows other/o/O: neither M nor F, so missing for the dummy, whether asked for or not."""
    patients = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(5)], "sex": ["F", "O", "other", "M", "f"]})
    for drop_unusable in (False, True):
        encoded = stats.encode_covariates(patients, ["sex"], drop_unusable=drop_unusable)
        values = encoded.values["sex[M vs F]"]
        assert values.isna().tolist() == [False, True, True, False, False]
        assert values.dropna().tolist() == [0.0, 1.0, 0.0]
        assert any("'other' for 2 participant(s)" in note and "left out of the count model" in note
                   for note in encoded.notes)


def test_sex_other_through_a_group_level_run(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=40, site_log_rate={"A": 0.5, "B": 0.5}, seed=6)
    write_participants(cohort, sex={1: "O", 2: "other"})
    for covariates in (None, ["sex", "EDSS"]):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, covariates=covariates, progress=False)
        assert "sex[M vs F]" in set(result.count_model.table["term"])
        assert result.count_model.n_patients == 38 and result.count_model.n_excluded == 2
        assert any("'other' for 2 participant(s)" in note for note in result.count_model.notes)


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
    assert (json.loads(planted_result.tables["countmodel"].with_suffix(".json").read_text())["Model"]["NParticipants"]
            == 300)


# --------------------------------------------------------------------------- audit: models that must not be fitted
def test_a_site_where_every_patient_has_zero_prl_is_reported_not_fitted(tmp_path):
    """Perfect separation: the MLE of site C's rate ratio is 0; the group level writes everything else."""
    cohort = simulate_cohort_tables(tmp_path, n_subjects=45, site_log_rate={"A": 0.7, "B": 0.7, "C": -40.0}, seed=8)
    assert cohort.participants.loc[cohort.participants["site"] == "C", "planted_rim_positive_count"].eq(0).all()
    assert main([str(cohort.bids_dir), str(cohort.output_dir), "group"]) == 0
    group = cohort.output_dir / "group"
    for name in ("lesions", "subjects", "sites", "sitetests", "countmodel"):
        assert (group / f"desc-{name}_table.tsv").is_file() and (group / f"desc-{name}_table.json").is_file()
    assert pd.read_csv(group / "desc-countmodel_table.tsv", sep="\t").empty
    notes = json.loads((group / "desc-countmodel_table.json").read_text())["Model"]["Notes"]
    separation = next(note for note in notes if "perfect separation" in note)
    assert "site C (15 patients)" in separation and "no count model" in separation
    sites = pd.read_csv(group / "desc-sites_table.tsv", sep="\t")
    assert sites["site"].tolist() == ["A", "B", "C"] and sites.loc[2, "n_ge1_prl"] == 0
    assert set(pd.read_csv(group / "desc-sitetests_table.tsv", sep="\t")["test"]) >= {"kruskal_wallis", "chi_square"}
    html = (cohort.output_dir / "group.html").read_text()
    assert "site C (15 patients)" in html and "No count model was fitted" in html


def test_a_level_of_sex_with_zero_prl_is_separation_too():
    rng = np.random.default_rng(0)
    sex = np.array(["F", "M"] * 20)
    patients = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(40)], "site": "A", "sex": sex,
                             "rim_positive_count": np.where(sex == "M", 0, rng.poisson(3, 40) + 1)})
    result = stats.fit_count_model(patients, stats.encode_covariates(patients, ["sex"]), "poisson")
    assert result.table.empty
    assert any("sex M (20 patients)" in note and "perfect separation" in note for note in result.notes)


def test_rate_ratios_never_overflow():
    """math.exp(800) raises OverflowError; the table says inf instead."""
    class Fit:
        params = pd.Series({"x": 800.0})
        bse = pd.Series({"x": 1.0})
        pvalues = pd.Series({"x": 0.0})

        def conf_int(self, alpha):
            return pd.DataFrame({0: [798.0], 1: [802.0]}, index=["x"])

    table = stats.rate_ratio_table(Fit(), ["x"])
    assert np.isinf(table.loc[0, "rate_ratio"]) and np.isinf(table.loc[0, "rate_ratio_ci_high"])


def test_an_absurd_standard_error_is_not_reported(monkeypatch):
    """A fit that 'converges' with a standard error of 17,000 on the log scale (quasi-separation) is refused."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    patients = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(40)], "site": ["A", "B"] * 20,
                             "rim_positive_count": rng.poisson(2, 40)})
    real = stats.fit_poisson

    def inflated(outcome, design):
        fit = real(outcome, design)
        return sm.GLM(outcome, design, family=sm.families.Poisson()).fit(scale=1e9) if "site[B vs A]" in design else fit

    monkeypatch.setattr(stats, "fit_poisson", inflated)
    result = stats.fit_count_model(patients, stats.Covariates(pd.DataFrame(index=patients.index)), "poisson")
    assert result.table.empty
    note = next(note for note in result.notes if "too large to be usable" in note)
    assert re.search(r"site\[B vs A\] [0-9.]+e\+03", note) and note.endswith("no count model")


def test_site_dummies_are_built_after_excluding_incomplete_patients():
    """Reference site A loses every patient (no age): B becomes the reference, and the note says so."""
    rng = np.random.default_rng(3)
    patients = pd.DataFrame({"participant_id": [f"s{i:02d}" for i in range(36)],
                             "site": ["A"] * 12 + ["B"] * 12 + ["C"] * 12,
                             "age": rng.integers(20, 60, 36).astype(float), "rim_positive_count": rng.poisson(3, 36)})
    patients.loc[patients["site"] == "A", "age"] = np.nan
    result = stats.fit_count_model(patients, stats.encode_covariates(patients, ["age"]), "poisson")
    assert result.table["term"].tolist() == ["age", "site[C vs B]"]
    assert any("reference site B" in note for note in result.notes)
    assert not any("reference site A" in note for note in result.notes)
    assert any("site(s) A: no participant with every covariate" in note for note in result.notes)
    assert result.n_patients == 24 and result.n_excluded == 12
    # The same numbers as a fit on sites B and C alone.
    alone = stats.fit_count_model(patients[patients["site"] != "A"].reset_index(drop=True),
                                  stats.encode_covariates(patients[patients["site"] != "A"].reset_index(drop=True),
                                                          ["age"]), "poisson")
    pd.testing.assert_frame_equal(result.table, alone.table)


def test_a_rank_deficient_design_is_refused():
    rng = np.random.default_rng(4)
    patients = pd.DataFrame({"participant_id": [f"s{i:02d}" for i in range(40)], "site": ["A", "B"] * 20,
                             "EDSS": rng.choice(np.arange(0, 7.5, 0.5), 40), "rim_positive_count": rng.poisson(3, 40)})
    patients["EDSS_x2_plus_site"] = 2 * patients["EDSS"] + (patients["site"] == "B")
    result = stats.fit_count_model(patients, stats.encode_covariates(patients, ["EDSS", "EDSS_x2_plus_site"]))
    assert result.table.empty
    assert any("rank 3 for 4 columns (site[B vs A] a linear combination" in note for note in result.notes)
    assert stats.dependent_columns(pd.DataFrame({"a": [1.0, 1, 1], "b": [1.0, 2, 3], "c": [2.0, 3, 4]})) == ["c"]


# --------------------------------------------------------------------------- audit: input that must not be lost
def test_duplicate_participants_are_refused_through_the_command_line(tmp_path, capsys):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=8, site_log_rate={"A": 0.5, "B": 0.5}, seed=2)
    path = cohort.bids_dir / "participants.tsv"
    path.write_text(path.read_text() + "006\tA\t30\tF\t2.0\t3\n")  # sub-006 again, without its prefix, at site A
    assert main([str(cohort.bids_dir), str(cohort.output_dir), "group"]) == 64
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"bids_rim: error: {path}: participant_id 'sub-006' is listed more than once"
    assert not (cohort.output_dir / "group" / "desc-subjects_table.tsv").exists()


def test_a_cohort_without_any_lesion_is_valid(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=10, site_log_rate={"A": 0.5, "B": 0.5}, seed=2)
    for table in cohort.output_dir.glob("sub-*/anat/*_desc-lesions_table.tsv"):
        table.write_text(table.read_text().splitlines()[0] + "\n")  # the header alone
    assert main([str(cohort.bids_dir), str(cohort.output_dir), "group"]) == 0
    group = cohort.output_dir / "group"
    subjects = pd.read_csv(group / "desc-subjects_table.tsv", sep="\t")
    assert len(subjects) == 10 and subjects["rim_positive_count"].eq(0).all() and subjects["n_lesions"].eq(0).all()
    assert subjects["rim_count_pi_high"].eq(0).all()
    assert pd.read_csv(group / "desc-lesions_table.tsv", sep="\t").empty
    notes = json.loads((group / "desc-countmodel_table.json").read_text())["Model"]["Notes"]
    assert "no rim+ lesion in any participant: no count model" in notes
    assert "every patient on the same side of ≥ 1 PRL" in (group / "desc-sitetests_table.tsv").read_text()
    assert "No threshold line: no lesion has a rim probability." in (cohort.output_dir / "group.html").read_text()


# --------------------------------------------------------------------------- audit: which session
def test_natural_order_of_session_labels():
    assert (sorted(["ses-10", "ses-2", "ses-1", "ses-pre"], key=stats.natural_key)
            == ["ses-1", "ses-2", "ses-10", "ses-pre"])
    subjects = pd.DataFrame({"participant_id": ["sub-1"] * 3, "session_id": ["ses-1", "ses-2", "ses-10"],
                             "rim_positive_count": [1, 2, 10]})
    assert stats.patient_level(subjects)["session_id"].tolist() == ["ses-10"]
    times = pd.Series(pd.to_datetime(["2021-05-01", "2023-01-01", "2022-01-01"], utc=True), index=subjects.index)
    assert stats.patient_level(subjects, times)["session_id"].tolist() == ["ses-2"]
    times[2] = pd.NaT  # one session without a time: label order for the whole participant
    assert stats.patient_level(subjects, times)["session_id"].tolist() == ["ses-10"]


def write_session_dataset(root: Path) -> tuple[Path, Path]:
    """sub-01: ses-1, ses-2, ses-10 (no sessions.tsv); sub-02: ses-1 acquired after ses-2; sub-03: one time missing.

    Each session's rim+ count is its number (ses-10: 10 rim+ lesions), so the chosen one shows in the counts.
    """
    bids_dir, output_dir = root / "bids", root / "out"
    header = "lesion_id\tvolume_mm3\trim_probability\trim_uncertainty\trim_label\n"
    layout = {"sub-01": ["1", "2", "10"], "sub-02": ["1", "2"], "sub-03": ["1", "2"]}
    for participant, sessions in layout.items():
        for session in sessions:
            (bids_dir / participant / f"ses-{session}" / "anat").mkdir(parents=True)
            anat = output_dir / participant / f"ses-{session}" / "anat"
            anat.mkdir(parents=True)
            rows = "".join(f"{lesion}\t10.0\t0.9\t0.01\t1\n" for lesion in range(1, int(session) + 1))
            (anat / f"{participant}_ses-{session}_desc-lesions_table.tsv").write_text(header + rows)
    (bids_dir / "sub-02" / "sub-02_sessions.tsv").write_text(
        "session_id\tacq_time\nses-1\t2023-03-01T10:00:00\nses-2\t2021-03-01T10:00:00\n")
    (bids_dir / "sub-03" / "sub-03_sessions.tsv").write_text(
        "session_id\tacq_time\nses-1\t2023-03-01T10:00:00\nses-2\tn/a\n")
    (bids_dir / "participants.tsv").write_text("participant_id\tsite\nsub-01\tA\nsub-02\tA\nsub-03\tA\n")
    return bids_dir, output_dir


def test_the_patient_level_session_is_recorded_and_explained(tmp_path):
    bids_dir, output_dir = write_session_dataset(tmp_path)
    result = run_group_level(bids_dir, output_dir, progress=False)
    patients = result.subjects[result.subjects["patient_level_session"] == 1].set_index("participant_id")
    assert patients["session_id"].to_dict() == {"sub-01": "ses-10", "sub-02": "ses-1", "sub-03": "ses-2"}
    assert patients["rim_positive_count"].to_dict() == {"sub-01": 10, "sub-02": 1, "sub-03": 2}
    assert (result.sites.loc[0, "n_patients"] == 3
            and result.sites.loc[0, "mean_rim_positive_count"] == pytest.approx(13 / 3))
    written = pd.read_csv(result.tables["subjects"], sep="\t")
    assert written["session_id"].tolist()[:3] == ["ses-1", "ses-2", "ses-10"]  # natural order in the table too
    assert written["patient_level_session"].tolist() == [0, 0, 1, 1, 0, 0, 1]
    rule = ("the latest by acq_time (sub-X_sessions.tsv) for 1 participant(s) whose sessions all have one, the last "
            "in natural label order (ses-2 before ses-10) for 2")
    assert rule in result.report.read_text()
    assert any(rule in note for note in json.loads(result.tables["subjects"].with_suffix(".json").read_text())["Notes"])


# --------------------------------------------------------------------------- audit: site tests, small samples
def test_fisher_note_names_the_direction_of_the_odds_ratio():
    patients = pd.DataFrame({"participant_id": [f"s{i}" for i in range(10)], "site": ["A"] * 5 + ["B"] * 5,
                             "rim_positive_count": [0, 0, 0, 0, 1, 3, 2, 1, 4, 0]})
    fisher = stats.site_difference_tests(patients).set_index("test").loc["fisher_exact"]
    assert fisher["statistic"] == pytest.approx((4 / 1) / (1 / 4))  # odds at B (4:1) over odds at A (1:4)
    assert fisher["note"] == "statistic: odds ratio, odds of ≥ 1 PRL at B over the odds at A"
    reversed_sites = patients.assign(site=patients["site"].map({"A": "site10", "B": "site2"}))
    note = stats.site_difference_tests(reversed_sites).set_index("test").loc["fisher_exact", "note"]
    assert note.endswith("at site10 over the odds at site2")  # natural order: site2 first


def test_small_expected_counts_get_a_warning_and_a_permutation_test():
    from collections import Counter
    from itertools import permutations

    patients = pd.DataFrame({"participant_id": [f"s{i}" for i in range(9)], "site": list("AAABBBCCC"),
                             "rim_positive_count": [0, 0, 1, 0, 2, 3, 5, 1, 2]})
    tests = stats.site_difference_tests(patients).set_index("test")
    assert "6 of 6 expected cell counts below 5 (smallest 1.00): the chi-square approximation is unreliable" in \
        tests.loc["chi_square", "note"]
    permutation = tests.loc["chi_square_permutation"]
    assert permutation["statistic"] == pytest.approx(tests.loc["chi_square", "statistic"])
    # Exact permutation p-value: every distinct assignment of the 9 outcomes to the three sites.
    outcome = (patients["rim_positive_count"] >= 1).to_numpy(float)
    codes = np.repeat([0, 1, 2], 3)
    statistics = Counter(stats._chi_square_statistic(np.array(order), outcome, 3)
                         for order in set(permutations(codes)))
    exact = (sum(n for value, n in statistics.items() if value >= permutation["statistic"] - 1e-9)
             / sum(statistics.values()))
    assert permutation["p_value"] == pytest.approx(exact, abs=0.02)
    assert stats.permutation_chi_square(codes, outcome)[1] == permutation["p_value"]  # fixed seed: reruns agree


def test_missing_notes_are_written_as_n_a(planted_result):
    lines = planted_result.tables["sitetests"].read_text().splitlines()
    kruskal = next(line for line in lines if line.startswith("kruskal_wallis"))
    assert kruskal.endswith("\tn/a")
    assert "\t\t" not in "\n".join(lines) and not any(line.endswith("\t") for line in lines)


def test_small_samples_are_flagged_and_site_has_a_likelihood_ratio_test(tmp_path):
    import statsmodels.api as sm

    cohort = simulate_cohort_tables(tmp_path, n_subjects=36, site_log_rate={"A": 0.0, "B": 0.8, "C": 0.0}, seed=9)
    result = run_group_level(cohort.bids_dir, cohort.output_dir, covariates=["EDSS"], count_model="poisson",
                             progress=False)
    assert any("36 patients for 4 parameters (fewer than 10 per parameter): the Wald intervals and p-values are "
               "approximate" in note for note in result.count_model.notes)
    patients = result.subjects[result.subjects["patient_level_session"] == 1]
    outcome = patients["rim_positive_count"].to_numpy(float)
    reduced = np.column_stack([np.ones(len(outcome)), patients["EDSS"]])
    full = np.column_stack([reduced, patients["site"] == "B", patients["site"] == "C"]).astype(float)
    statistic = 2 * (sm.GLM(outcome, full, family=sm.families.Poisson()).fit().llf
                     - sm.GLM(outcome, reduced, family=sm.families.Poisson()).fit().llf)
    test = result.count_model.site_lr_test
    assert test["DF"] == 2 and test["Statistic"] == pytest.approx(statistic)
    assert test["PValue"] == pytest.approx(__import__("scipy").stats.chi2.sf(statistic, 2))
    sidecar = json.loads(result.tables["countmodel"].with_suffix(".json").read_text())["Model"]
    assert sidecar["SiteLikelihoodRatioTest"]["DF"] == 2
    assert any(note.startswith("likelihood-ratio test of site as a whole (2 df") for note in sidecar["Notes"])


def test_a_large_cohort_has_no_small_sample_note(planted_result):
    assert not any("per parameter" in note for note in planted_result.count_model.notes)
    assert planted_result.count_model.site_lr_test["PValue"] < 0.001  # the planted 2.7× site difference


# --------------------------------------------------------------------------- audit: what the tables say
def test_group_tables_carry_no_floating_point_noise(planted_result):
    for name, path in planted_result.tables.items():
        text = path.read_text()
        assert not re.search(r"\.\d*(?:9{6}|0{6})\d", text), name  # 6796.419999999999, 0.30000000000000004
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        for column in table.select_dtypes("float").columns:
            values = table[column].dropna()
            short = values.map(lambda v: round(v, 4) == v or float(f"{v:.4g}") == v)
            assert short.all(), (name, column, values[~short].head().tolist())
    subjects = pd.read_csv(planted_result.tables["subjects"], sep="\t")
    assert (subjects["lesion_volume_mm3"].round(2) == subjects["lesion_volume_mm3"]).all()
    # Rounding keeps the magnitude of tiny p-values (4 significant digits, not 4 decimals).
    tests = pd.read_csv(planted_result.tables["sitetests"], sep="\t").set_index("test")
    assert 0 < tests.loc["kruskal_wallis", "p_value"] < 1e-4


def test_the_prediction_interval_is_named_as_such(planted_result):
    columns = set(planted_result.subjects.columns)
    assert {"rim_count_pi_low", "rim_count_pi_high"} <= columns
    sidecar = json.loads(planted_result.tables["subjects"].with_suffix(".json").read_text())
    assert sidecar["rim_count_pi_low"]["Description"].startswith(
        "95 % prediction interval of the rim+ count (Poisson-binomial: assumes independent, calibrated probabilities)")
    texts = [path.read_text() for path in planted_result.tables.values()]
    texts += [path.with_suffix(".json").read_text() for path in planted_result.tables.values()]
    texts.append(planted_result.report.read_text())
    assert not any("expected_count_ci" in text for text in texts)
    assert "prediction interval of the rim+" in planted_result.report.read_text()
