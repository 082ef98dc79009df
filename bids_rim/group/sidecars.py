"""JSON sidecars of the group tables: every column described, with its unit."""

from __future__ import annotations

from typing import Any

import pandas as pd

PATIENT_LEVEL_NOTE = ("Patient-level analyses use one session per participant: the latest by acq_time "
                      "(sub-X_sessions.tsv) when every session of the participant has one, else the last in "
                      "natural label order (ses-2 before ses-10).")

SUBJECT_COLUMNS: dict[str, dict[str, str]] = {
    "participant_id": {"Description": "Participant label (sub-<label>)"},
    "session_id": {"Description": "Session label (ses-<label>), n/a when the dataset has no sessions"},
    "n_lesions": {"Description": "Number of lesions in the participant-level lesion table"},
    "n_lesions_without_probability": {"Description": "Lesions with no rim probability "
                                                     "(left out of the expected count)"},
    "lesion_volume_mm3": {"Description": "Total lesion volume", "Units": "mm^3"},
    "rim_positive_count": {"Description": "Rim+ lesions (PRL) at the model's threshold: sum of rim_label"},
    "prl_volume_mm3": {"Description": "Total volume of the rim+ lesions", "Units": "mm^3"},
    "expected_rim_positive_count": {"Description": "Expected rim+ count: sum of rim_probability over lesions"},
    "rim_count_pi_low": {"Description": "95 % prediction interval of the rim+ count (Poisson-binomial: assumes "
                                        "independent, calibrated probabilities), lower bound: the 2.5 % quantile "
                                        "of the count's distribution when each lesion is rim+ with its "
                                        "rim_probability. Not a confidence interval of the expected count"},
    "rim_count_pi_high": {"Description": "95 % prediction interval of the rim+ count (Poisson-binomial: assumes "
                                         "independent, calibrated probabilities), upper bound: the 97.5 % quantile"},
    "p_at_least_1_prl": {"Description": "Probability of at least one rim+ lesion (Poisson-binomial)"},
    "p_at_least_4_prl": {"Description": "Probability of at least four rim+ lesions, the common clinical criterion "
                                        "(Poisson-binomial)"},
    "prl_ge4_decision": {"Description": "1 when rim_positive_count >= 4 (decision at the model's threshold), else 0"},
    "patient_level_session": {"Description": "1 for the session the patient-level analyses (sites, site tests, "
                                             "count model, frequency maps) use for this participant, else 0: the "
                                             "latest by acq_time (sub-X_sessions.tsv) when every session of the "
                                             "participant has one, else the last in natural label order (ses-2 "
                                             "before ses-10)"},
}

LESION_ID_COLUMNS: dict[str, dict[str, str]] = {
    "participant_id": SUBJECT_COLUMNS["participant_id"],
    "session_id": SUBJECT_COLUMNS["session_id"],
}

SITE_COLUMNS: dict[str, dict[str, str]] = {
    "site": {"Description": "Acquisition site from participants.tsv (n/a: participant not listed there)"},
    "n_patients": {"Description": "Participants with a lesion table at this site"},
    "n_ge1_prl": {"Description": "Patients with at least one rim+ lesion"},
    "share_ge1_prl": {"Description": "Share of patients with at least one rim+ lesion", "Units": "fraction"},
    "share_ge1_prl_ci_low": {"Description": "Wilson 95 % interval, lower bound", "Units": "fraction"},
    "share_ge1_prl_ci_high": {"Description": "Wilson 95 % interval, upper bound", "Units": "fraction"},
    "n_ge4_prl": {"Description": "Patients with at least four rim+ lesions"},
    "share_ge4_prl": {"Description": "Share of patients with at least four rim+ lesions", "Units": "fraction"},
    "share_ge4_prl_ci_low": {"Description": "Wilson 95 % interval, lower bound", "Units": "fraction"},
    "share_ge4_prl_ci_high": {"Description": "Wilson 95 % interval, upper bound", "Units": "fraction"},
    "mean_expected_share_ge4_prl": {"Description": "Mean over patients of P(at least four rim+ lesions)",
                                    "Units": "fraction"},
    "mean_rim_positive_count": {"Description": "Mean rim+ count per patient"},
    "median_rim_positive_count": {"Description": "Median rim+ count per patient"},
    "mean_expected_rim_positive_count": {"Description": "Mean expected rim+ count per patient"},
    "n_lesions": {"Description": "Lesions at this site (patients' analysed sessions)"},
    "rim_probability_q25": {"Description": "25th percentile of the lesions' rim probabilities"},
    "rim_probability_median": {"Description": "Median of the lesions' rim probabilities"},
    "rim_probability_q75": {"Description": "75th percentile of the lesions' rim probabilities"},
}

SITE_TEST_COLUMNS: dict[str, dict[str, str]] = {
    "test": {"Description": "kruskal_wallis (rim+ counts across sites), fisher_exact (2 sites) or chi_square "
                            "(more sites) on having at least one rim+ lesion; chi_square_permutation (more sites, "
                            "an expected cell count below 5): the same statistic with a Monte Carlo permutation "
                            "p-value"},
    "outcome": {"Description": "What is compared across sites"},
    "statistic": {"Description": "H for Kruskal-Wallis; for Fisher the odds ratio: odds of at least one rim+ "
                                 "lesion at the second site over the odds at the first (the note names both, "
                                 "sites in natural order); chi-square statistic otherwise"},
    "p_value": {"Description": "Two-sided p-value"},
    "note": {"Description": "Why a test could not run, how to read its statistic, or why its approximation is "
                            "unreliable (n/a: nothing to add)"},
}

COUNT_MODEL_COLUMNS: dict[str, dict[str, str]] = {
    "term": {"Description": "Covariate (participants.tsv column) or site dummy; site[B vs A] compares site B "
                            "to the reference site A"},
    "coefficient": {"Description": "Log rate ratio"},
    "std_error": {"Description": "Standard error of the coefficient"},
    "rate_ratio": {"Description": "Multiplicative change of the expected rim+ count per unit of the covariate "
                                  "(or versus the reference level)"},
    "rate_ratio_ci_low": {"Description": "Wald 95 % interval of the rate ratio, lower bound"},
    "rate_ratio_ci_high": {"Description": "Wald 95 % interval of the rate ratio, upper bound"},
    "p_value": {"Description": "Wald test p-value of the coefficient"},
}


def describe_columns(table: pd.DataFrame, known: dict[str, dict[str, str]], others: str) -> dict[str, Any]:
    """A column → description mapping for ``table``; unknown columns get ``others``."""
    return {column: known.get(column, {"Description": others}) for column in table.columns}
