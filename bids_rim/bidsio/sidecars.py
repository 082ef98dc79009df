"""JSON sidecars of bids_rim's derivative files: every column and its unit."""

from __future__ import annotations

from typing import Any

import pandas as pd

#: Description and unit of every column a lesion table may hold (BIDS TSV sidecar format).
LESION_TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "lesion_id": {"Description": "Lesion label in the desc-lesions_dseg map; stable across reruns "
                                 "(ordered by centroid position)"},
    "centroid_i": {"Description": "Lesion centroid, first voxel index of the QSM grid", "Units": "voxel"},
    "centroid_j": {"Description": "Lesion centroid, second voxel index of the QSM grid", "Units": "voxel"},
    "centroid_k": {"Description": "Lesion centroid, third voxel index of the QSM grid", "Units": "voxel"},
    "centroid_x_mm": {"Description": "Lesion centroid in QSM world coordinates, RAS+ x", "Units": "mm"},
    "centroid_y_mm": {"Description": "Lesion centroid in QSM world coordinates, RAS+ y", "Units": "mm"},
    "centroid_z_mm": {"Description": "Lesion centroid in QSM world coordinates, RAS+ z", "Units": "mm"},
    "volume_mm3": {"Description": "Lesion volume on the QSM grid", "Units": "mm^3"},
    "qsm_shell_ppb": {"Description": "Mean susceptibility of the lesion's edge shell (the voxels within "
                                     "1.5 mm, or one voxel where voxels are larger, of the lesion border, "
                                     "inside and outside it; other lesions and voxels outside the brain excluded), "
                                     "relative to the "
                                     "normal-appearing white matter median", "Units": "ppb"},
    "qsm_core_ppb": {"Description": "Mean susceptibility of the lesion core (the lesion voxels deeper than "
                                    "the shell; in a lesion too small to have such voxels, its deepest "
                                    "voxels), relative to the normal-appearing white matter median",
                     "Units": "ppb"},
    "qsm_shell_minus_core_ppb": {"Description": "Edge shell minus core susceptibility: a rim shows as a "
                                                "positive value", "Units": "ppb"},
    "qsm_lesion_minus_nawm_ppb": {"Description": "Mean susceptibility of the whole lesion minus the "
                                                 "normal-appearing white matter median", "Units": "ppb"},
    "flair_contrast": {"Description": "Mean FLAIR intensity of the lesion divided by the median of normal-"
                                      "appearing white matter", "Units": "ratio"},
    "distance_to_ventricles_mm": {"Description": "Smallest distance from a lesion voxel to a ventricle voxel "
                                                 "(0 where they overlap; ventricles estimated from FLAIR; n/a "
                                                 "when none were found)",
                                  "Units": "mm"},
    "flag_confluent": {"Description": "Whether the lesion was split from a confluent lesion",
                       "Levels": {"1": "split from a confluent lesion", "0": "a lesion on its own"}},
    "flag_touches_brain_edge": {"Description": "Whether the lesion touches the edge of the brain mask, "
                                               "where QSM is least reliable",
                                "Levels": {"1": "touches the brain edge", "0": "inside the brain"}},
    "patch_spacing_mm": {"Description": "Isotropic voxel size of this lesion's patch", "Units": "mm"},
    "flag_patch_rescaled": {"Description": "Whether the lesion did not fit the patch at the requested "
                                           "spacing and was sampled coarser so that it fits whole",
                            "Levels": {"1": "sampled coarser", "0": "at the requested spacing"}},
    "rim_probability": {"Description": "Calibrated (Platt-scaled) probability that the lesion is a "
                                       "paramagnetic rim lesion: the mean over the model's deterministic "
                                       "views (by default the final model on the patch and on its "
                                       "left-right flip)"},
    "rim_uncertainty": {"Description": "Standard deviation of the rim probability across those views "
                                       "and Monte Carlo dropout samples of the classifier head (and the "
                                       "fold models, when the ensemble is used)"},
    "rim_label": {"Description": "The model's call: rim+ when rim_probability reaches the model's decision "
                                 "threshold (chosen on validation data; ProcessingParameters."
                                 "DecisionThreshold in this sidecar)",
                  "Levels": {"1": "rim+ (paramagnetic rim lesion)", "0": "rim-"}},
}


def lesion_table_sidecar(table: pd.DataFrame, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of a lesion table: each of its columns described, plus ``extra`` metadata.

    A column with no description is an error: every column a user reads must be explained.
    """
    undocumented = [column for column in table.columns if column not in LESION_TABLE_COLUMNS]
    if undocumented:
        raise KeyError(f"lesion table columns without a description: {undocumented}")
    sidecar: dict[str, Any] = {column: LESION_TABLE_COLUMNS[column] for column in table.columns}
    if extra:
        sidecar.update(extra)
    return sidecar


#: Decimals kept per column family: sub-micron positions and 0.01 ppb are below any precision
#: the data carry, and shorter numbers keep the TSV readable.
DECIMALS_BY_SUFFIX = (("_mm3", 2), ("_mm", 3), ("_ppb", 2), ("centroid_", 3))


def tidy_lesion_table(table: pd.DataFrame) -> pd.DataFrame:
    """Flags as 0/1 integers and floats rounded to meaningful precision, for the TSV."""
    tidy = table.copy()
    for column in tidy.columns:
        values = tidy[column]
        if column.startswith("flag_") or column == "rim_label" or values.dtype == bool:
            tidy[column] = values.astype("Int64")
        elif pd.api.types.is_float_dtype(values):
            decimals = next((d for key, d in DECIMALS_BY_SUFFIX if key in column), 4)
            tidy[column] = values.round(decimals)
    return tidy
