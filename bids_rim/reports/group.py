"""The group HTML report: ``OUTPUT_DIR/group.html`` with figures in ``OUTPUT_DIR/group/figures/``.

One page: the cohort in numbers, PRL counts and shares per site, the rim-probability
distributions, the tests of site differences, a forest plot of the count model's rate
ratios, the participants that failed or are missing, and one row per subject-session with a
link to its participant report. Figures are drawn with matplotlib's Agg backend and written
without metadata, so the same tables give byte-identical files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import jinja2
import matplotlib.ticker
import nibabel as nib
import numpy as np
import pandas as pd

from bids_rim.group.aggregate import ParticipantProblem
from bids_rim.group.frequency import FrequencyMap, template_background
from bids_rim.group.sidecars import PATIENT_LEVEL_NOTE
from bids_rim.group.stats import PRL_COUNT_THRESHOLD, CountModelResult
from bids_rim.preproc.normalisation_qc import MIN_LESION_SHARE_INSIDE_BRAIN
from bids_rim.reports import figures

plt = figures.plt
SITE_COLOURS = ("#1f5a99", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#495057")
TEMPLATE_DIR = Path(__file__).parent / "templates"


def _site_labels(sites: pd.Series) -> list[str]:
    return ["n/a" if pd.isna(site) else str(site) for site in sites]


def plot_counts_per_site(patients: pd.DataFrame, sites: pd.DataFrame, out_png: Path) -> Path:
    """Left: rim+ count per patient by site; right: shares with ≥ 1 and ≥ 4 PRL (Wilson 95 %)."""
    labels = _site_labels(sites["site"])
    figure, (counts_axis, share_axis) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    rng = np.random.default_rng(0)  # fixed jitter: identical figures on reruns
    for position, site in enumerate(sites["site"]):
        values = patients.loc[patients["site"].isna() if pd.isna(site) else patients["site"] == site,
                              "rim_positive_count"].to_numpy(dtype=float)
        colour = SITE_COLOURS[position % len(SITE_COLOURS)]
        counts_axis.boxplot(values, positions=[position], widths=0.5, showfliers=False,
                            medianprops={"color": colour})
        counts_axis.scatter(position + rng.uniform(-0.18, 0.18, values.size), values, s=10, alpha=0.6, color=colour)
    counts_axis.axhline(PRL_COUNT_THRESHOLD, color="#868e96", linestyle="--", linewidth=1)
    counts_axis.set_xticks(range(len(labels)), labels)
    counts_axis.set_xlabel("site")
    counts_axis.set_ylabel("rim+ lesions per patient")
    counts_axis.set_title("PRL count per patient (dashed: 4)")
    width = 0.38
    for offset, threshold, colour in ((-width / 2, 1, "#1f5a99"), (width / 2, PRL_COUNT_THRESHOLD, "#d9480f")):
        share = sites[f"share_ge{threshold}_prl"].to_numpy(dtype=float)
        errors = np.clip(np.vstack([share - sites[f"share_ge{threshold}_prl_ci_low"],
                                  sites[f"share_ge{threshold}_prl_ci_high"] - share]), 0, None)
        share_axis.bar(np.arange(len(labels)) + offset, share, width, yerr=errors, capsize=3, color=colour,
                       alpha=0.8, label=f"≥ {threshold} PRL")
    share_axis.set_xticks(range(len(labels)), labels)
    share_axis.set_ylim(0, 1.18)  # room for the legend above 100 %
    share_axis.set_yticks(np.linspace(0, 1, 6))
    share_axis.set_xlabel("site")
    share_axis.set_ylabel("share of patients")
    share_axis.set_title("Patients with ≥ 1 and ≥ 4 PRL (Wilson 95 %)")
    share_axis.legend(frameon=False, loc="upper center", ncols=2)
    figures.save_figure_png(figure, out_png)
    plt.close(figure)
    return out_png


def plot_probability_histograms(lesions: pd.DataFrame, patients: pd.DataFrame, sites: pd.DataFrame,
                                out_png: Path, decision_threshold: float | None = None) -> Path:
    """Histogram of lesion rim probabilities per site (analysed sessions), one panel per site.

    A dashed line marks ``decision_threshold``, the model's rim+ cut-off, when the lesion tables
    agree on one; none is drawn otherwise (0.5 is not the threshold of a recalibrated model, and
    a line there would put rim+ lesions on its "negative" side).
    """
    analysed = lesions.merge(patients[["participant_id", "session_id", "site"]], on=["participant_id", "session_id"])
    n_sites = max(len(sites), 1)
    columns = min(n_sites, 4)
    rows = math.ceil(n_sites / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.6, 2.3 * rows + 0.4),
                                squeeze=False, sharex=True, constrained_layout=True)
    bins = np.linspace(0, 1, 21)
    for position, (site, axis) in enumerate(zip(sites["site"], axes.flat)):
        selected = analysed["site"].isna() if pd.isna(site) else analysed["site"] == site
        values = analysed.loc[selected, "rim_probability"].dropna()
        axis.hist(values, bins=bins, color=SITE_COLOURS[position % len(SITE_COLOURS)], alpha=0.85)
        if decision_threshold is not None:
            axis.axvline(decision_threshold, color="#868e96", linestyle="--", linewidth=1,
                         label=f"decision threshold {decision_threshold:.3g}")
        axis.set_title(f"{_site_labels(pd.Series([site]))[0]} ({len(values)} lesions)", fontsize=10)
        axis.set_xlabel("P(rim+)")
    for axis in list(axes.flat)[n_sites:]:
        axis.set_visible(False)
    axes[0, 0].set_ylabel("lesions")
    if decision_threshold is not None:
        axes[0, 0].legend(frameon=False, fontsize=8, loc="upper right")
    figures.save_figure_png(figure, out_png)
    plt.close(figure)
    return out_png


def plot_rate_ratio_forest(table: pd.DataFrame, model_name: str, out_png: Path) -> Path:
    """Rate ratios with 95 % intervals on a log axis, one row per term."""
    height = 0.9 + 0.42 * max(len(table), 1)
    figure, axis = plt.subplots(figsize=(7.5, height), constrained_layout=True)
    positions = np.arange(len(table))[::-1]
    axis.errorbar(table["rate_ratio"], positions,
                  xerr=[table["rate_ratio"] - table["rate_ratio_ci_low"],
                        table["rate_ratio_ci_high"] - table["rate_ratio"]],
                  fmt="o", color="#1d2b3a", ecolor="#1f5a99", capsize=3)
    axis.axvline(1.0, color="#868e96", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axis.set_yticks(positions, table["term"])
    axis.set_xlabel("rate ratio of the PRL count (95 % CI, log scale)")
    axis.set_title(f"Count model ({model_name})")
    figures.save_figure_png(figure, out_png)
    plt.close(figure)
    return out_png


def plot_frequency_maps(maps: Sequence[FrequencyMap], background: nib.Nifti1Image | None, out_png: Path,
                        n_slices: int = 6) -> Path:
    """Axial slices of one space's frequency maps (one row per map) over the template when on disk.

    Slices are titled by their world z (mm), so they can be compared with atlas coordinates.
    """
    images = [nib.as_closest_canonical(nib.load(item.path)) for item in maps]
    volumes = [np.asarray(image.dataobj, dtype=np.float32) for image in images]
    covered = np.flatnonzero((volumes[0] > 0).any(axis=(0, 1)))
    low, high = (covered.min(), covered.max()) if covered.size else (0, volumes[0].shape[2] - 1)
    slices = np.unique(np.linspace(low, high, n_slices + 2).round().astype(int)[1:-1])
    grey = None
    if background is not None:
        background = nib.as_closest_canonical(background)
        if background.shape[:3] == volumes[0].shape:
            grey = np.asarray(background.dataobj, dtype=np.float32)
    figure, axes = plt.subplots(len(maps), len(slices), figsize=(1.7 * len(slices) + 1.2, 1.9 * len(maps)),
                                squeeze=False, constrained_layout=True)
    for row, (item, volume) in enumerate(zip(maps, volumes)):
        top = max(float(volume.max()), 1e-6)
        for column, index in enumerate(slices):
            axis = axes[row, column]
            axis.set_facecolor("black")  # the hot colour map ends in white: keep its top visible
            if grey is not None:
                axis.imshow(grey[:, :, index].T, origin="lower", cmap="gray")
            shown = np.ma.masked_less_equal(volume[:, :, index].T, 0)
            drawn = axis.imshow(shown, origin="lower", cmap="hot", vmin=0, vmax=top, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                z_mm = nib.affines.apply_affine(images[0].affine, (0, 0, index))[2]
                axis.set_title(f"z = {z_mm:.0f} mm", fontsize=9)
        axes[row, 0].set_ylabel("lesions" if item.desc == "lesions" else "PRL", fontsize=10)
        figure.colorbar(drawn, ax=list(axes[row]), shrink=0.9, label="share of patients")
    figure.suptitle(f"Frequency maps in {maps[0].space} (L on the left)", fontsize=11)
    figures.save_figure_png(figure, out_png)
    plt.close(figure)
    return out_png


def _format(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.1e}"
    return str(value)


def _rows(table: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    return [[_format(row[column]) for column in columns] for _, row in table.iterrows()]


def write_group_report(output_dir: Path, *, lesions: pd.DataFrame, subjects: pd.DataFrame, patients: pd.DataFrame,
                       sites: pd.DataFrame, site_tests: pd.DataFrame, count_model: CountModelResult,
                       problems: Sequence[ParticipantProblem], tables: dict[str, Path],
                       frequency_maps: Sequence[FrequencyMap] = (), session_note: str = PATIENT_LEVEL_NOTE,
                       decision_threshold: float | None = None,
                       threshold_caption: str = "No threshold line: the decision threshold is not known.") -> Path:
    """Draw the figures and write ``OUTPUT_DIR/group.html``; returns its path.

    ``session_note`` says which session stands for each participant, ``threshold_caption`` why the
    histograms do or do not show ``decision_threshold``.
    """
    output_dir = Path(output_dir)
    figure_dir = output_dir / "group" / "figures"
    drawn = {
        "counts": plot_counts_per_site(patients, sites, figure_dir / "desc-sitecounts_plot.png"),
        "histograms": plot_probability_histograms(lesions, patients, sites, figure_dir / "desc-rimprobability_plot.png",
                                                  decision_threshold),
    }
    if len(count_model.table):
        drawn["forest"] = plot_rate_ratio_forest(count_model.table, count_model.model,
                                                 figure_dir / "desc-countmodel_plot.png")
    spaces = sorted({item.space for item in frequency_maps})
    for space in spaces:
        maps = sorted((item for item in frequency_maps if item.space == space), key=lambda item: item.desc)
        drawn[f"frequency_{space}"] = plot_frequency_maps(maps, template_background(space),
                                                          figure_dir / f"space-{space}_desc-frequency_plot.png")
    subject_columns = ["participant_id", "session_id", "site", "n_lesions", "rim_positive_count",
                       "expected_rim_positive_count", "rim_count_pi_low", "rim_count_pi_high",
                       "p_at_least_4_prl", "prl_ge4_decision", "lesion_volume_mm3", "prl_volume_mm3"]
    subject_rows = [{"cells": [_format(row[c], 1 if c.endswith("mm3") else 2) for c in subject_columns],
                     "link": f"{row['participant_id']}.html"
                     if (output_dir / f"{row['participant_id']}.html").is_file() else None,
                     "positive": bool(row["prl_ge4_decision"])}
                    for _, row in subjects.reindex(columns=subject_columns).iterrows()]
    site_columns = ["site", "n_patients", "n_ge1_prl", "share_ge1_prl", "share_ge1_prl_ci_low",
                    "share_ge1_prl_ci_high", "n_ge4_prl", "share_ge4_prl", "share_ge4_prl_ci_low",
                    "share_ge4_prl_ci_high", "mean_rim_positive_count", "mean_expected_rim_positive_count",
                    "rim_probability_median"]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    html = environment.get_template("group.html.j2").render(
        n_participants=subjects["participant_id"].nunique(),
        n_sessions=len(subjects),
        n_lesions=len(lesions),
        n_sites=len(sites),
        n_ge4=int(patients["prl_ge4_decision"].sum()),
        problems=problems,
        reports={p.participant_id for p in problems if (output_dir / f"{p.participant_id}.html").is_file()},
        figures={name: path.relative_to(output_dir).as_posix() for name, path in drawn.items()},
        site_columns=site_columns,
        site_rows=_rows(sites.reindex(columns=site_columns), site_columns),
        test_rows=_rows(site_tests, ["test", "outcome", "statistic", "p_value", "note"]),
        model=count_model,
        model_rows=_rows(count_model.table, ["term", "rate_ratio", "rate_ratio_ci_low", "rate_ratio_ci_high",
                                             "p_value"]),
        subject_columns=subject_columns,
        subject_rows=subject_rows,
        tables={name: path.relative_to(output_dir).as_posix() for name, path in tables.items()},
        threshold=PRL_COUNT_THRESHOLD,
        frequency=[{"space": space, "figure": f"group/figures/space-{space}_desc-frequency_plot.png",
                    "maps": [{"desc": item.desc, "path": item.path.relative_to(output_dir).as_posix(),
                              "n": item.n_patients} for item in frequency_maps if item.space == space],
                    "left_out": next((list(item.left_out) for item in frequency_maps if item.space == space), [])}
                   for space in spaces],
        min_share_inside_brain=MIN_LESION_SHARE_INSIDE_BRAIN,
        session_note=session_note,
        threshold_caption=threshold_caption,
    )
    report = output_dir / "group.html"
    figures.atomic_write_bytes(report, html.encode("utf-8"))
    return report
