"""Statistics across subjects and sites: PRL counts, their uncertainty, site differences, covariates.

Pure functions on DataFrames; :mod:`bids_rim.group.run` reads and writes the files.

* Per subject-session: the rim+ count at the model threshold (sum of ``rim_label``), the
  expected count (sum of ``rim_probability``) and the distribution of the count if lesions are
  independent Bernoulli trials with those probabilities (the Poisson-binomial distribution,
  computed exactly by convolution), from which come the equal-tailed 95 % prediction interval
  of the rim+ count (it assumes independent, calibrated probabilities; it is not a confidence
  interval of the expectation) and P(count ≥ 4), the probability that the common four-PRL
  criterion is met.
* Per site: share of patients with ≥ 1 and ≥ 4 PRL with Wilson 95 % intervals, distribution
  summaries, Kruskal–Wallis across sites on the counts and Fisher/chi-square on ≥ 1 PRL.
* A count regression of the rim+ count on covariates with site as a categorical term
  (negative binomial with alpha estimated by maximum likelihood, or Poisson), as rate ratios.

Patient-level analyses (sites, regression) use one session per participant, so that a
participant with several visits is counted once: the latest by ``acq_time`` (``sessions.tsv``)
when every session of the participant has one, else the last in natural label order
(``ses-2`` before ``ses-10``).
"""

from __future__ import annotations

import math
import re
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
#: BIDS' third level of ``sex`` (other, o, O): neither 0 nor 1 of the M/F dummy, so missing there.
SEX_OTHER_CODES = frozenset({"O", "OTHER"})


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
    """True when the lesion tables carry model output columns (the participant level ran inference).

    Only the column names are checked: tables with no rows (patients without lesions) are valid
    data with zero PRL, and sessions whose lesions all lack a probability are handled as unscored.
    """
    return {"rim_probability", "rim_label"} <= set(lesions.columns)


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
        "rim_count_pi_low": low,
        "rim_count_pi_high": high,
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


def natural_key(label: str) -> tuple:
    """Sort key comparing the digit runs of a label as numbers: ses-2 < ses-10 (string order says otherwise)."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", str(label)) if part)


def natural_rank(labels: pd.Series) -> pd.Series:
    """Each label's position among the distinct labels in natural order (:func:`natural_key`)."""
    return labels.map({label: position for position, label in enumerate(sorted(labels.unique(), key=natural_key))})


def natural_session_order(subjects: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by participant, then session in natural order (ses-2 before ses-10), as a reader expects."""
    labels = subjects["session_id"].astype(str)
    rank = natural_rank(labels)
    return (subjects.assign(_rank=rank).sort_values(["participant_id", "_rank"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def patient_sessions(subjects: pd.DataFrame, acquisition_times: pd.Series | None = None) -> tuple[pd.Index, str]:
    """Index of each participant's patient-level session in ``subjects``, and the rule that chose it.

    The latest by ``acquisition_times`` (timestamps on ``subjects``' index, NaT where unknown) when
    every session of the participant has one, else the last in natural label order: labels are
    often unpadded (ses-1 … ses-10), where string order would pick ses-2 over ses-10.
    """
    if subjects.empty:
        return subjects.index, "no session to choose from"
    labels = subjects["session_id"].astype(str)
    rank = natural_rank(labels)
    times = (pd.Series(pd.NaT, index=subjects.index, dtype="datetime64[ns, UTC]") if acquisition_times is None
             else pd.to_datetime(acquisition_times.reindex(subjects.index), utc=True))
    by_time = times.notna().groupby(subjects["participant_id"]).transform("all")
    several = subjects.groupby("participant_id")["session_id"].transform("size") > 1
    order = pd.DataFrame({"participant_id": subjects["participant_id"], "time": times.where(by_time), "rank": rank})
    chosen = order.sort_values(["participant_id", "time", "rank"], kind="stable", na_position="first").groupby(
        "participant_id", sort=True).tail(1).index
    n_time = int(subjects.loc[by_time & several, "participant_id"].nunique())
    n_label = int(subjects.loc[~by_time & several, "participant_id"].nunique())
    if n_time + n_label == 0:
        rule = "each participant has one session"
    else:
        rule = ("the latest by acq_time (sub-X_sessions.tsv) for " + f"{n_time} participant(s) whose sessions all "
                f"have one, the last in natural label order (ses-2 before ses-10) for {n_label}")
    return chosen, (f"Patient-level analyses (sites, site tests, count model, frequency maps) use one session per "
                    f"participant: {rule}; patient_level_session = 1 marks it in the subjects table.")


def patient_level(subjects: pd.DataFrame, acquisition_times: pd.Series | None = None) -> pd.DataFrame:
    """One row per participant: its patient-level session (see :func:`patient_sessions`)."""
    chosen, _ = patient_sessions(subjects, acquisition_times)
    return subjects.loc[chosen].sort_values("participant_id", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- sites
def site_table(patients: pd.DataFrame, lesions: pd.DataFrame) -> pd.DataFrame:
    """Per site, in natural order: patients, shares with ≥ 1 and ≥ 4 PRL (Wilson 95 %),
    count and probability summaries."""
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
    # Natural order (site2 before site10), as the count model's reference; unlisted participants (n/a) last.
    rows.sort(key=lambda row: (pd.isna(row["site"]), natural_key("" if pd.isna(row["site"]) else row["site"])))
    return pd.DataFrame(rows)


#: Expected cell count under which the chi-square approximation is unreliable (Cochran's rule).
MIN_EXPECTED_CELL_COUNT = 5
#: Permutations of the site labels for the Monte Carlo chi-square p-value (fixed seed: reruns agree).
N_PERMUTATIONS = 9999


def _chi_square_statistic(site_codes: np.ndarray, positive: np.ndarray, n_sites: int) -> float:
    """Pearson's chi-square of the sites × (≥ 1 PRL) table given as integer site codes and a 0/1 outcome."""
    totals = np.bincount(site_codes, minlength=n_sites).astype(float)
    positives = np.bincount(site_codes, weights=positive, minlength=n_sites)
    observed = np.column_stack([totals - positives, positives])
    expected = np.outer(totals, [len(positive) - positive.sum(), positive.sum()]) / len(positive)
    return float(((observed - expected) ** 2 / expected).sum())


def permutation_chi_square(site_codes: np.ndarray, positive: np.ndarray, n_permutations: int = N_PERMUTATIONS,
                           seed: int = 0) -> tuple[float, float]:
    """Chi-square statistic and its Monte Carlo permutation p-value, (1 + #{χ²_perm ≥ χ²}) / (1 + B).

    Shuffling the site labels keeps every margin of the table, so the p-value does not lean on
    the large-sample chi-square distribution that small expected counts invalidate.
    """
    n_sites = int(site_codes.max()) + 1
    observed = _chi_square_statistic(site_codes, positive, n_sites)
    rng = np.random.default_rng(seed)
    exceed = sum(_chi_square_statistic(rng.permutation(site_codes), positive, n_sites) >= observed - 1e-9
                 for _ in range(n_permutations))
    return observed, (1 + exceed) / (1 + n_permutations)


def site_difference_tests(patients: pd.DataFrame) -> pd.DataFrame:
    """Kruskal–Wallis on rim+ counts across sites; Fisher exact (2 sites) or chi-square on ≥ 1 PRL.

    With more than two sites and an expected cell count under 5, the chi-square row says its
    approximation is unreliable and a permutation chi-square row follows. Missing notes are
    None (written n/a).
    """
    known = patients[patients["site"].notna()]
    sites = sorted(known["site"].unique(), key=natural_key)
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
                     "statistic": float(kruskal.statistic), "p_value": float(kruskal.pvalue), "note": None})
    except ValueError as error:  # every count identical
        rows.append({"test": "kruskal_wallis", "outcome": "rim_positive_count", "statistic": math.nan,
                     "p_value": math.nan, "note": str(error)})
    contingency = pd.crosstab(known["site"], known["rim_positive_count"] >= 1).reindex(
        index=sites, columns=[False, True], fill_value=0).to_numpy()
    test = "fisher_exact" if len(sites) == 2 else "chi_square"
    if (contingency.sum(axis=0) == 0).any():
        rows.append({"test": test, "outcome": "ge1_prl", "statistic": math.nan, "p_value": math.nan,
                     "note": "every patient on the same side of ≥ 1 PRL: no test"})
    elif len(sites) == 2:
        # Rows are (first, second) site, columns (no PRL, ≥ 1 PRL): scipy's odds ratio a·d / (b·c)
        # is the odds of ≥ 1 PRL at the second site over the odds at the first.
        fisher = scistats.fisher_exact(contingency)
        rows.append({"test": "fisher_exact", "outcome": "ge1_prl", "statistic": float(fisher.statistic),
                     "p_value": float(fisher.pvalue),
                     "note": f"statistic: odds ratio, odds of ≥ 1 PRL at {sites[1]} over the odds at {sites[0]}"})
    else:
        chi2 = scistats.chi2_contingency(contingency)
        small = int((chi2.expected_freq < MIN_EXPECTED_CELL_COUNT).sum())
        note = f"dof {chi2.dof}"
        if small:
            note += (f"; {small} of {chi2.expected_freq.size} expected cell counts below {MIN_EXPECTED_CELL_COUNT} "
                     f"(smallest {chi2.expected_freq.min():.2f}): the chi-square approximation is unreliable, "
                     "see chi_square_permutation")
        rows.append({"test": "chi_square", "outcome": "ge1_prl", "statistic": float(chi2.statistic),
                     "p_value": float(chi2.pvalue), "note": note})
        if small:
            codes = known["site"].map({site: code for code, site in enumerate(sites)}).to_numpy(dtype=int)
            statistic, p_value = permutation_chi_square(codes, (known["rim_positive_count"] >= 1).to_numpy(float))
            rows.append({"test": "chi_square_permutation", "outcome": "ge1_prl", "statistic": statistic,
                         "p_value": p_value, "note": f"Monte Carlo p-value over {N_PERMUTATIONS} permutations "
                                                     "of the site labels (seed 0)"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- covariates
@dataclass(frozen=True)
class Covariates:
    """Numeric design columns named as they appear in the results, and how they were encoded.

    ``levels`` names the two values of each dummy-coded column (0 and 1), for notes about a level.
    """

    values: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    levels: dict[str, tuple[str, str]] = field(default_factory=dict)


def choose_covariates(participants: pd.DataFrame, requested: Sequence[str] | None) -> list[str]:
    """The requested columns, or the default ones present in ``participants.tsv``."""
    if requested:
        return list(requested)
    return [column for column in DEFAULT_COVARIATES if column in participants.columns]


def _encode_sex(raw: pd.Series, column: str, source: str) -> tuple[pd.Series, list[str]]:
    """M/F as 1/0; BIDS' other (o, O, other) as missing, with a note; raises InputError on any other value."""
    codes = raw.astype(str).str.strip().str.upper().where(raw.notna())
    unknown = sorted(set(codes.dropna()) - set(SEX_CODES) - SEX_OTHER_CODES)
    if unknown:
        raise InputError(f"{source}: column {column!r} must be M or F (or other) for the count model, "
                         f"found {unknown[0]!r}")
    notes = [f"{column} encoded as a 0/1 dummy: 1 = M, 0 = F (rate ratio of M versus F)"]
    other = codes.isin(SEX_OTHER_CODES)
    if other.any():
        notes.append(f"{column} 'other' for {int(other.sum())} participant(s): missing for the M/F dummy, so left "
                     "out of the count model")
    return codes.map(SEX_CODES).astype(float), notes


def _encode_numeric(raw: pd.Series, column: str, source: str, participant_ids: pd.Series) -> pd.Series:
    """The column as floats; raises InputError naming the first value that is not a number."""
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & numeric.isna()
    if bad.any():
        first = bad.idxmax()
        raise InputError(f"{source}: covariate column {column!r} is not numeric "
                         f"({raw[first]!r} for {participant_ids[first]})")
    return numeric.astype(float)


def encode_covariates(patients: pd.DataFrame, columns: Sequence[str], source: str = "participants.tsv",
                      drop_unusable: bool = False) -> Covariates:
    """Check and encode covariate columns; sex (M/F) becomes a 0/1 dummy (1 = M), sex 'other' missing.

    Raises InputError naming ``source`` and the column when it is missing or not numeric. With
    ``drop_unusable`` (the default covariates, which the user did not ask for) a column that
    cannot be encoded is left out of the model with a note naming it and its first bad value
    instead: one "89+" in an age column should not stop the group level.
    """
    encoded: dict[str, pd.Series] = {}
    notes: list[str] = []
    levels: dict[str, tuple[str, str]] = {}
    for column in columns:
        if column == "site":
            raise InputError(f"{source}: 'site' is always in the count model; do not list it in --covariates")
        if column not in patients.columns:
            available = ", ".join(c for c in patients.columns if c not in ("participant_id", "session_id")) or "none"
            raise InputError(f"{source}: covariate column {column!r} not found (columns: {available})")
        raw = patients[column]
        try:
            if column.lower() == "sex" and not pd.api.types.is_numeric_dtype(raw):
                encoded[f"{column}[M vs F]"], sex_notes = _encode_sex(raw, column, source)
                levels[f"{column}[M vs F]"] = (f"{column} F", f"{column} M")
                notes += sex_notes
            else:
                encoded[column] = _encode_numeric(raw, column, source, patients["participant_id"])
        except InputError as error:
            if not drop_unusable:
                raise
            detail = str(error).removeprefix(f"{source}: ")
            notes.append(f"default covariate {column!r} left out of the count model: {detail} "
                         "(fix participants.tsv, or choose columns with --covariates)")
    return Covariates(pd.DataFrame(encoded, index=patients.index), notes, levels)


# --------------------------------------------------------------------------- count model
@dataclass(frozen=True)
class CountModelResult:
    """Rate ratios of the count regression, with what was fitted and anything worth saying.

    ``site_lr_test`` holds the likelihood-ratio test of site as a whole (``Statistic``, ``DF``,
    ``PValue``) when the model has site terms and both fits converged.
    """

    table: pd.DataFrame
    model: str
    n_patients: int
    n_excluded: int
    alpha: float | None
    notes: list[str]
    site_lr_test: dict[str, float] | None = None


COUNT_MODEL_COLUMNS = ("term", "coefficient", "std_error", "rate_ratio", "rate_ratio_ci_low",
                       "rate_ratio_ci_high", "p_value")
#: Patients per estimated parameter under which Wald intervals are called approximate.
MIN_PATIENTS_PER_PARAMETER = 10
#: A standard error of a log rate ratio above this (a 95 % interval spanning a factor of e^39) means
#: the term is not identified (quasi-separation), not that it is merely uncertain.
MAX_STD_ERROR = 10.0


def complete_cases(patients: pd.DataFrame, covariates: Covariates) -> pd.Series:
    """True for patients with every covariate and, when two or more sites remain among them, a site."""
    complete = covariates.values.notna().all(axis=1)
    if "site" in patients and patients.loc[complete, "site"].dropna().nunique() >= 2:
        complete &= patients["site"].notna()
    return complete


def build_design(patients: pd.DataFrame, covariates: Covariates) -> tuple[pd.DataFrame, list[str]]:
    """Intercept, covariates and treatment-coded site dummies (first site in natural order = reference).

    Call it on the complete cases only (:func:`complete_cases`): dummies built before exclusion
    could keep a reference site that no longer has a patient, leaving the design rank-deficient.
    """
    design = covariates.values.loc[patients.index].copy()
    notes = list(covariates.notes)
    sites = sorted(patients["site"].dropna().unique(), key=natural_key) if "site" in patients else []
    if len(sites) >= 2:
        for site in sites[1:]:
            design[f"site[{site} vs {sites[0]}]"] = ((patients["site"] == site).astype(float)
                                                     .where(patients["site"].notna()))
        notes.append(f"site as a categorical term, reference site {sites[0]}")
    design.insert(0, "Intercept", 1.0)
    return design, notes


def zero_count_levels(outcome: pd.Series, design: pd.DataFrame, sites: pd.Series | None,
                      levels: dict[str, tuple[str, str]]) -> list[str]:
    """Levels of a categorical term (each site, each side of a 0/1 covariate) where every patient has 0 PRL.

    Such a level separates the outcome perfectly: its log rate ratio runs to minus infinity, so
    the maximum-likelihood estimate does not exist and any reported value is the optimiser's
    stopping point.
    """
    found = []
    if sites is not None and sites.nunique() >= 2:
        for site in sorted(sites.unique(), key=natural_key):
            if outcome[sites == site].sum() == 0:
                found.append(f"site {site} ({int((sites == site).sum())} patients)")
    for column in design.columns[1:]:
        if column.startswith("site["):
            continue
        values = sorted(design[column].unique())
        if len(values) != 2:
            continue
        names = levels.get(column, tuple(f"{column} = {value:g}" for value in values))
        for value, name in zip(values, names):
            if outcome[design[column] == value].sum() == 0:
                found.append(f"{name} ({int((design[column] == value).sum())} patients)")
    return found


def dependent_columns(design: pd.DataFrame) -> list[str]:
    """Columns that are linear combinations of the ones before them (empty when the design has full rank)."""
    dependent, kept = [], []
    for column in design.columns:
        candidate = design[kept + [column]].to_numpy(dtype=float)
        if np.linalg.matrix_rank(candidate) == len(kept) + 1:
            kept.append(column)
        else:
            dependent.append(column)
    return dependent


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


def fit_poisson(outcome: pd.Series, design: pd.DataFrame) -> object:
    """Poisson GLM fit (raises LinAlgError or ValueError when it cannot be fitted)."""
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow probes on the way to a failed fit
        return sm.GLM(outcome, design, family=sm.families.Poisson()).fit()


def site_likelihood_ratio_test(outcome: pd.Series, design: pd.DataFrame, full_fit: object,
                               model: str) -> tuple[dict[str, float] | None, str]:
    """Likelihood-ratio test of all site terms at once: the model refitted without them, same family.

    The Wald p-values of site[B vs A], site[C vs A] … each compare one site with the reference;
    this asks whether site matters at all, with one p-value. Returns the test (or None) and a note.
    """
    site_columns = [column for column in design.columns if column.startswith("site[")]
    reduced = design.drop(columns=site_columns)
    try:
        reduced_fit = fit_negative_binomial(outcome, reduced)[0] if model == "negbin" else fit_poisson(outcome, reduced)
    except (np.linalg.LinAlgError, ValueError):
        reduced_fit = None
    if reduced_fit is None:
        return None, "likelihood-ratio test of site not available: the model without site did not converge"
    statistic = max(0.0, 2 * (float(full_fit.llf) - float(reduced_fit.llf)))
    p_value = float(scistats.chi2.sf(statistic, len(site_columns)))
    test = {"Statistic": statistic, "DF": len(site_columns), "PValue": p_value}
    return test, (f"likelihood-ratio test of site as a whole ({len(site_columns)} df, model with against without "
                  f"the site terms): chi-square {statistic:.3g}, p = {p_value:.3g}")


def rate_ratio_table(fit: object, terms: Sequence[str]) -> pd.DataFrame:
    """Coefficients, rate ratios with Wald 95 % intervals and p-values of ``terms``.

    ``np.exp`` rather than ``math.exp``: an extreme coefficient becomes inf, never an OverflowError.
    """
    interval = fit.conf_int(alpha=1 - CONFIDENCE_LEVEL)
    with np.errstate(over="ignore"):
        return pd.DataFrame({
            "term": list(terms),
            "coefficient": [float(fit.params[term]) for term in terms],
            "std_error": [float(fit.bse[term]) for term in terms],
            "rate_ratio": [float(np.exp(fit.params[term])) for term in terms],
            "rate_ratio_ci_low": [float(np.exp(interval.loc[term, 0])) for term in terms],
            "rate_ratio_ci_high": [float(np.exp(interval.loc[term, 1])) for term in terms],
            "p_value": [float(fit.pvalues[term]) for term in terms],
        })


def fit_count_model(patients: pd.DataFrame, covariates: Covariates, count_model: str = "negbin") -> CountModelResult:
    """Regress ``rim_positive_count`` on covariates and site; rate ratios with 95 % Wald intervals.

    Patients with a missing covariate are left out (and counted) before the site dummies are
    built. Negative binomial (NB2, alpha by maximum likelihood) falls back to Poisson, with a
    note, when it does not converge. No model is reported, with a note saying why, when the
    maximum-likelihood estimates do not exist: a design without full rank, a level of a
    categorical term where every patient has 0 PRL (perfect separation), or a standard error so
    large that the term is not identified.
    """
    if count_model not in COUNT_MODELS:
        raise InputError(f"--count-model must be one of {', '.join(COUNT_MODELS)}, not {count_model!r}")
    complete = complete_cases(patients, covariates)
    kept = patients[complete]
    design, notes = build_design(kept, covariates)
    outcome = kept["rim_positive_count"].astype(float)
    n_excluded = int((~complete).sum())
    if n_excluded:
        notes.append(f"{n_excluded} participant(s) left out for a missing covariate or site")
    if "site" in patients:
        gone = sorted(set(patients["site"].dropna()) - set(kept["site"].dropna()), key=natural_key)
        if gone:
            notes.append(f"site(s) {', '.join(map(str, gone))}: no participant with every covariate, not in the "
                         "count model")

    def refused(reason: str) -> CountModelResult:
        notes.append(reason)
        return CountModelResult(pd.DataFrame(columns=list(COUNT_MODEL_COLUMNS)), count_model, len(outcome),
                                n_excluded, None, notes)

    if len(outcome) <= design.shape[1] + 1:
        return refused(f"too few participants ({len(outcome)}) for {design.shape[1]} parameters: no count model")
    if outcome.sum() == 0:
        return refused("no rim+ lesion in any participant: no count model")
    constant = [column for column in design.columns[1:] if design[column].nunique() < 2]
    if constant:
        notes.append(f"dropped constant term(s): {', '.join(constant)}")
        design = design.drop(columns=constant)
    dependent = dependent_columns(design)
    if dependent:
        return refused(f"the design matrix has rank {design.shape[1] - len(dependent)} for {design.shape[1]} "
                       f"columns ({', '.join(dependent)} a linear combination of the other terms): the "
                       "coefficients are not identified, no count model")
    separated = zero_count_levels(outcome, design, kept.get("site"), covariates.levels)
    if separated:
        return refused(f"every patient has 0 rim+ lesions in {'; '.join(separated)}: perfect separation, the "
                       "maximum-likelihood rate ratios do not exist, no count model (the site tables and tests "
                       "still describe these patients)")

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
            fit = fit_poisson(outcome, design)
        except (np.linalg.LinAlgError, ValueError) as error:
            return refused(f"Poisson model failed: {error}")
    terms = [term for term in design.columns if term != "Intercept"]
    std_errors = fit.bse[design.columns]
    unusable = [term for term in design.columns
                if not np.isfinite(std_errors[term]) or std_errors[term] > MAX_STD_ERROR]
    if unusable:
        shown = ", ".join(f"{term} {std_errors[term]:.3g}" for term in unusable)
        return refused(f"standard error on the log scale too large to be usable ({shown}; at most "
                       f"{MAX_STD_ERROR:g}): the data do not identify the term(s) (quasi-separation), no count model")
    n_parameters = design.shape[1] + (model_used == "negbin")
    if len(outcome) < MIN_PATIENTS_PER_PARAMETER * n_parameters:
        notes.append(f"{len(outcome)} patients for {n_parameters} parameters (fewer than {MIN_PATIENTS_PER_PARAMETER} "
                     "per parameter): the Wald intervals and p-values are approximate, and none is adjusted for "
                     "testing several terms")
    site_test = None
    if any(term.startswith("site[") for term in terms):
        site_test, note = site_likelihood_ratio_test(outcome, design, fit, model_used)
        notes.append(note)
    return CountModelResult(rate_ratio_table(fit, terms), model_used, len(outcome), n_excluded, alpha, notes,
                            site_test)
