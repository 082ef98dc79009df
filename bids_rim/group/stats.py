"""Statistics across subjects and sites: PRL counts, their uncertainty, site differences, covariates.

Pure functions on DataFrames; :mod:`bids_rim.group.run` reads and writes the files.

* Per subject-session: the rim+ count at the model threshold (sum of ``rim_label``), the
  expected count (sum of ``rim_probability``) and the distribution of the count if lesions are
  independent Bernoulli trials with those probabilities (the Poisson-binomial distribution,
  computed exactly by convolution), from which come a 95 % interval and P(count ≥ 4), the
  probability that the common four-PRL criterion is met.
* Per site: share of patients with ≥ 1 and ≥ 4 PRL with Wilson 95 % intervals, distribution
  summaries, Kruskal–Wallis across sites on the counts and Fisher/chi-square on ≥ 1 PRL.
* A count regression of the rim+ count on covariates with site as a categorical term
  (negative binomial with alpha estimated by maximum likelihood, or Poisson), as rate ratios.

Patient-level analyses (sites, regression) use one session per participant: the last one in
label order, so that a participant with several visits is counted once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scistats
from statsmodels.stats.proportion import proportion_confint

from bids_rim.errors import InputError

#: Per-patient rim+ count at or above which the common clinical criterion is met.
PRL_COUNT_THRESHOLD = 4
#: participants.tsv columns used as covariates when none are asked for (those present).
DEFAULT_COVARIATES = ("EDSS", "age", "sex", "disease_duration")
CONFIDENCE_LEVEL = 0.95
COUNT_MODELS = ("negbin", "poisson")
SEX_CODES = {"M": 1.0, "MALE": 1.0, "F": 0.0, "FEMALE": 0.0}


# --------------------------------------------------------------------------- distributions
def poisson_binomial_pmf(probabilities: Sequence[float]) -> np.ndarray:
    """P(K = k), k = 0..n, for K the number of successes of independent Bernoulli(p_i) trials.

    Exact dynamic programme: adding trial i maps pmf to ``pmf·(1-p_i) + shift(pmf)·p_i``
    (O(n²), a few microseconds for the tens of lesions a patient has).
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if np.any((probabilities < 0) | (probabilities > 1)) or np.any(~np.isfinite(probabilities)):
        raise ValueError("probabilities must be finite and within [0, 1]")
    pmf = np.zeros(probabilities.size + 1)
    pmf[0] = 1.0
    for count, probability in enumerate(probabilities, start=1):
        pmf[1:count + 1] = pmf[1:count + 1] * (1 - probability) + pmf[:count] * probability
        pmf[0] *= 1 - probability
    return pmf


def pmf_interval(pmf: np.ndarray, level: float = CONFIDENCE_LEVEL) -> tuple[int, int]:
    """Equal-tailed interval of a count distribution: the (1-level)/2 and (1+level)/2 quantiles."""
    cdf = np.cumsum(pmf)
    tail = (1 - level) / 2
    # A tiny tolerance keeps rounding in the cumulative sum from moving a quantile by one.
    low = int(np.searchsorted(cdf, tail - 1e-12, side="left"))
    high = int(np.searchsorted(cdf, 1 - tail - 1e-12, side="left"))
    return low, min(high, pmf.size - 1)


def wilson_interval(successes: int, total: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs when ``total`` is 0)."""
    if total == 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, total, alpha=1 - level, method="wilson")
    return float(low), float(high)


# --------------------------------------------------------------------------- subjects
def has_rim_columns(lesions: pd.DataFrame) -> bool:
    """True when the lesion tables carry model output (the participant level ran inference)."""
    return {"rim_probability", "rim_label"} <= set(lesions.columns) and lesions["rim_probability"].notna().any()


def _session_row(group: pd.DataFrame) -> dict[str, float]:
    probabilities = group["rim_probability"].dropna().to_numpy(dtype=float)
    labels = group["rim_label"].fillna(0).to_numpy(dtype=float)
    volumes = group["volume_mm3"].to_numpy(dtype=float) if "volume_mm3" in group else np.full(len(group), np.nan)
    pmf = poisson_binomial_pmf(np.clip(probabilities, 0, 1))
    low, high = pmf_interval(pmf)
    rim_count = int(labels.sum())
    return {
        "n_lesions": int(len(group)),
        "n_lesions_without_probability": int(group["rim_probability"].isna().sum()),
        "lesion_volume_mm3": float(np.nansum(volumes)),
        "rim_positive_count": rim_count,
        "prl_volume_mm3": float(np.nansum(volumes[labels == 1])),
        "expected_rim_positive_count": float(probabilities.sum()),
        "expected_count_ci_low": low,
        "expected_count_ci_high": high,
        "p_at_least_1_prl": float(pmf[1:].sum()),
        "p_at_least_4_prl": float(pmf[PRL_COUNT_THRESHOLD:].sum()),
        "prl_ge4_decision": int(rim_count >= PRL_COUNT_THRESHOLD),
    }


def subject_table(lesions: pd.DataFrame, sessions: pd.DataFrame, participants: pd.DataFrame) -> pd.DataFrame:
    """One row per subject-session (sessions with no lesion included, with zero counts).

    ``sessions`` has ``participant_id`` and ``session_id`` (``"n/a"`` when there are none);
    ``participants`` is ``participants.tsv`` with ``sub-`` prefixed ids; all its columns are
    carried over (site and covariates).
    """
    if not has_rim_columns(lesions):
        raise InputError("the lesion tables have no rim_probability/rim_label columns: the participant level "
                         "ran without a model (--no-inference?); the group statistics need rim probabilities")
    keys = list(sessions[["participant_id", "session_id"]].itertuples(index=False, name=None))
    grouped = {key: group for key, group in lesions.groupby(["participant_id", "session_id"], sort=False)}
    empty = lesions.iloc[0:0]
    rows = [{"participant_id": participant, "session_id": session,
             **_session_row(grouped.get((participant, session), empty))} for participant, session in keys]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.merge(participants, on="participant_id", how="left")


def unscored_sessions(subjects: pd.DataFrame) -> pd.Series:
    """True for subject-sessions with lesions but no rim probability at all.

    Such a table comes from a participant level run without a model; counting it as zero PRL
    would bias every statistic, so these sessions are left out and listed instead.
    """
    return (subjects["n_lesions"] > 0) & (subjects["n_lesions_without_probability"] == subjects["n_lesions"])


def patient_level(subjects: pd.DataFrame) -> pd.DataFrame:
    """One row per participant: the last session in label order."""
    ordered = subjects.sort_values(["participant_id", "session_id"], kind="stable")
    return ordered.groupby("participant_id", sort=True).tail(1).reset_index(drop=True)


# --------------------------------------------------------------------------- sites
def site_table(patients: pd.DataFrame, lesions: pd.DataFrame) -> pd.DataFrame:
    """Per site: patients, shares with ≥ 1 and ≥ 4 PRL (Wilson 95 %), count and probability summaries."""
    lesions = lesions.merge(patients[["participant_id", "session_id", "site"]],
                            on=["participant_id", "session_id"], how="inner")
    rows = []
    for site, group in patients.groupby("site", sort=True, dropna=False):
        site_lesions = lesions[lesions["site"] == site] if pd.notna(site) else lesions[lesions["site"].isna()]
        probabilities = site_lesions["rim_probability"].dropna()
        n_patients = len(group)
        row: dict[str, object] = {"site": site, "n_patients": n_patients}
        for threshold in (1, PRL_COUNT_THRESHOLD):
            positives = int((group["rim_positive_count"] >= threshold).sum())
            low, high = wilson_interval(positives, n_patients)
            row |= {f"n_ge{threshold}_prl": positives, f"share_ge{threshold}_prl": positives / n_patients,
                    f"share_ge{threshold}_prl_ci_low": low, f"share_ge{threshold}_prl_ci_high": high}
        row |= {
            "mean_expected_share_ge4_prl": float(group["p_at_least_4_prl"].mean()),
            "mean_rim_positive_count": float(group["rim_positive_count"].mean()),
            "median_rim_positive_count": float(group["rim_positive_count"].median()),
            "mean_expected_rim_positive_count": float(group["expected_rim_positive_count"].mean()),
            "n_lesions": int(group["n_lesions"].sum()),
            "rim_probability_q25": float(probabilities.quantile(0.25)) if len(probabilities) else math.nan,
            "rim_probability_median": float(probabilities.median()) if len(probabilities) else math.nan,
            "rim_probability_q75": float(probabilities.quantile(0.75)) if len(probabilities) else math.nan,
        }
        rows.append(row)
    return pd.DataFrame(rows)


def site_difference_tests(patients: pd.DataFrame) -> pd.DataFrame:
    """Kruskal–Wallis on rim+ counts across sites; Fisher exact (2 sites) or chi-square on ≥ 1 PRL."""
    known = patients[patients["site"].notna()]
    sites = sorted(known["site"].unique())
    rows = []
    if len(sites) < 2:
        note = f"{len(sites)} site(s) with participants: no between-site test"
        return pd.DataFrame([{"test": "kruskal_wallis", "outcome": "rim_positive_count", "statistic": math.nan,
                              "p_value": math.nan, "note": note},
                             {"test": "ge1_prl_by_site", "outcome": "ge1_prl", "statistic": math.nan,
                              "p_value": math.nan, "note": note}])
    counts = [known.loc[known["site"] == site, "rim_positive_count"].to_numpy() for site in sites]
    try:
        kruskal = scistats.kruskal(*counts)
        rows.append({"test": "kruskal_wallis", "outcome": "rim_positive_count",
                     "statistic": float(kruskal.statistic), "p_value": float(kruskal.pvalue), "note": ""})
    except ValueError as error:  # every count identical
        rows.append({"test": "kruskal_wallis", "outcome": "rim_positive_count", "statistic": math.nan,
                     "p_value": math.nan, "note": str(error)})
    contingency = pd.crosstab(known["site"], known["rim_positive_count"] >= 1).reindex(
        columns=[False, True], fill_value=0).to_numpy()
    if contingency.shape == (2, 2):
        fisher = scistats.fisher_exact(contingency)
        rows.append({"test": "fisher_exact", "outcome": "ge1_prl", "statistic": float(fisher.statistic),
                     "p_value": float(fisher.pvalue), "note": "statistic: odds ratio"})
    elif (contingency.sum(axis=0) == 0).any():
        rows.append({"test": "chi_square", "outcome": "ge1_prl", "statistic": math.nan, "p_value": math.nan,
                     "note": "every patient on the same side of ≥ 1 PRL: no test"})
    else:
        chi2 = scistats.chi2_contingency(contingency)
        rows.append({"test": "chi_square", "outcome": "ge1_prl", "statistic": float(chi2.statistic),
                     "p_value": float(chi2.pvalue), "note": f"dof {chi2.dof}"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- covariates
@dataclass(frozen=True)
class Covariates:
    """Numeric design columns named as they appear in the results, and how they were encoded."""

    values: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def choose_covariates(participants: pd.DataFrame, requested: Sequence[str] | None) -> list[str]:
    """The requested columns, or the default ones present in ``participants.tsv``."""
    if requested:
        return list(requested)
    return [column for column in DEFAULT_COVARIATES if column in participants.columns]


def encode_covariates(patients: pd.DataFrame, columns: Sequence[str], source: str = "participants.tsv") -> Covariates:
    """Check and encode covariate columns; sex (M/F) becomes a 0/1 dummy (1 = M).

    Raises InputError naming ``source`` and the column when it is missing or not numeric.
    """
    encoded: dict[str, pd.Series] = {}
    notes = []
    for column in columns:
        if column == "site":
            raise InputError(f"{source}: 'site' is always in the count model; do not list it in --covariates")
        if column not in patients.columns:
            available = ", ".join(c for c in patients.columns if c not in ("participant_id", "session_id")) or "none"
            raise InputError(f"{source}: covariate column {column!r} not found (columns: {available})")
        raw = patients[column]
        if column.lower() == "sex" and not pd.api.types.is_numeric_dtype(raw):
            codes = raw.dropna().astype(str).str.strip().str.upper()
            unknown = sorted(set(codes) - set(SEX_CODES))
            if unknown:
                raise InputError(f"{source}: column {column!r} must be M or F for the count model, found {unknown[0]!r}")
            encoded[f"{column}[M vs F]"] = raw.astype(str).str.strip().str.upper().map(SEX_CODES).where(raw.notna())
            notes.append(f"{column} encoded as a 0/1 dummy: 1 = M, 0 = F (rate ratio of M versus F)")
            continue
        numeric = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & numeric.isna()
        if bad.any():
            first = bad.idxmax()
            raise InputError(f"{source}: covariate column {column!r} is not numeric "
                             f"({raw[first]!r} for {patients.loc[first, 'participant_id']})")
        encoded[column] = numeric.astype(float)
    return Covariates(pd.DataFrame(encoded, index=patients.index), notes)


# --------------------------------------------------------------------------- count model
@dataclass(frozen=True)
class CountModelResult:
    """Rate ratios of the count regression, with what was fitted and anything worth saying."""

    table: pd.DataFrame
    model: str
    n_patients: int
    n_excluded: int
    alpha: float | None
    notes: list[str]


COUNT_MODEL_COLUMNS = ("term", "coefficient", "std_error", "rate_ratio", "rate_ratio_ci_low",
                       "rate_ratio_ci_high", "p_value")


def build_design(patients: pd.DataFrame, covariates: Covariates) -> tuple[pd.DataFrame, list[str]]:
    """Intercept, covariates and treatment-coded site dummies (first site alphabetically = reference)."""
    design = covariates.values.copy()
    notes = list(covariates.notes)
    sites = sorted(patients["site"].dropna().unique()) if "site" in patients else []
    if len(sites) >= 2:
        for site in sites[1:]:
            design[f"site[{site} vs {sites[0]}]"] = (patients["site"] == site).astype(float).where(patients["site"].notna())
        notes.append(f"site as a categorical term, reference site {sites[0]}")
    design.insert(0, "Intercept", 1.0)
    return design, notes


#: Below this estimated dispersion the negative binomial is the Poisson model (its boundary).
NO_OVERDISPERSION_ALPHA = 1e-3


def fit_negative_binomial(outcome: pd.Series, design: pd.DataFrame) -> tuple[object | None, float | None]:
    """NB2 fit with alpha by maximum likelihood; ``(None, alpha estimate)`` when not usable.

    Quasi-Newton optimisers are tried in turn: Newton steps go to NaN near alpha = 0, and with
    alpha at that boundary the Hessian may not invert (no standard errors).
    """
    from statsmodels.discrete.discrete_model import NegativeBinomial
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, HessianInversionWarning

    alpha_estimate = None
    for method in ("bfgs", "lbfgs", "nm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # log(0) probes of the optimiser
            warnings.simplefilter("ignore", ConvergenceWarning)  # checked through mle_retvals
            warnings.simplefilter("ignore", HessianInversionWarning)  # checked through finite bse
            try:
                fit = NegativeBinomial(outcome, design, loglike_method="nb2").fit(method=method, disp=0, maxiter=2000)
            except (np.linalg.LinAlgError, ValueError):
                continue
        if np.isfinite(fit.params["alpha"]):
            alpha_estimate = float(fit.params["alpha"])
        usable = np.isfinite(fit.params).all() and np.isfinite(fit.bse[design.columns]).all()
        if fit.mle_retvals.get("converged", False) and usable:
            return fit, alpha_estimate
    return None, alpha_estimate


def fit_count_model(patients: pd.DataFrame, covariates: Covariates, count_model: str = "negbin") -> CountModelResult:
    """Regress ``rim_positive_count`` on covariates and site; rate ratios with 95 % Wald intervals.

    Patients with a missing covariate are left out (and counted). Negative binomial (NB2, alpha by
    maximum likelihood) falls back to Poisson, with a note, when it does not converge.
    """
    import statsmodels.api as sm

    if count_model not in COUNT_MODELS:
        raise InputError(f"--count-model must be one of {', '.join(COUNT_MODELS)}, not {count_model!r}")
    design, notes = build_design(patients, covariates)
    complete = design.notna().all(axis=1)
    design, outcome = design[complete], patients.loc[complete, "rim_positive_count"].astype(float)
    n_excluded = int((~complete).sum())
    if n_excluded:
        notes.append(f"{n_excluded} participant(s) left out for a missing covariate or site")
    empty = CountModelResult(pd.DataFrame(columns=list(COUNT_MODEL_COLUMNS)), count_model, len(outcome),
                             n_excluded, None, notes)
    if len(outcome) <= design.shape[1] + 1:
        notes.append(f"too few participants ({len(outcome)}) for {design.shape[1]} parameters: no count model")
        return empty
    if outcome.sum() == 0:
        notes.append("no rim+ lesion in any participant: no count model")
        return empty
    constant = [column for column in design.columns[1:] if design[column].nunique() < 2]
    if constant:
        notes.append(f"dropped constant term(s): {', '.join(constant)}")
        design = design.drop(columns=constant)

    model_used, alpha = count_model, None
    fit = None
    if count_model == "negbin":
        fit, alpha_estimate = fit_negative_binomial(outcome, design)
        if fit is not None:
            alpha = alpha_estimate
        else:
            model_used = "poisson"
            reason = ("no overdispersion (alpha estimated at 0, where the negative binomial is the Poisson model)"
                      if alpha_estimate is not None and alpha_estimate < NO_OVERDISPERSION_ALPHA
                      else "the negative binomial fit did not converge")
            notes.append(f"{reason}: Poisson model reported")
    if fit is None:
        try:
            fit = sm.GLM(outcome, design, family=sm.families.Poisson()).fit()
        except (np.linalg.LinAlgError, ValueError) as error:
            notes.append(f"Poisson model failed: {error}")
            return empty
    terms = [term for term in design.columns if term != "Intercept"]
    interval = fit.conf_int(alpha=1 - CONFIDENCE_LEVEL)
    table = pd.DataFrame({
        "term": terms,
        "coefficient": [float(fit.params[term]) for term in terms],
        "std_error": [float(fit.bse[term]) for term in terms],
        "rate_ratio": [math.exp(fit.params[term]) for term in terms],
        "rate_ratio_ci_low": [math.exp(interval.loc[term, 0]) for term in terms],
        "rate_ratio_ci_high": [math.exp(interval.loc[term, 1]) for term in terms],
        "p_value": [float(fit.pvalues[term]) for term in terms],
    })
    return CountModelResult(table, model_used, len(outcome), n_excluded, alpha, notes)
