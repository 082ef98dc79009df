"""JSON sidecars, dataset descriptions and column descriptions of the synthetic cohort."""
from __future__ import annotations

import pandas as pd

from .params import SynthParams
from .population import Site

BIDS_VERSION = "1.10.0"
#: Where a derivative dataset of the cohort (``derivatives/<name>``) finds the raw one, for its BIDS URIs.
RAW_FROM_DERIVATIVE = "../.."
_SCANNER = {"MagneticFieldStrength": 3, "Manufacturer": "bids_rim synthetic scanner"}


def dataset_description(kind: str, version: str) -> dict:
    """dataset_description.json of the raw dataset or of one derivative dataset."""
    if kind == "raw":
        return {"Name": "bids_rim synthetic MS cohort (QSM + FLAIR)", "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw", "License": "CC0",
                "Authors": ["bids_rim developers", "bids_rim-synth generator"],
                "GeneratedBy": [{"Name": "bids_rim-synth", "Version": version}]}
    names = {"lesion_masks": "Rater lesion masks (FLAIR space) of the synthetic cohort",
             "rim_annotations": "Rater rim annotations of the synthetic cohort"}
    return {"Name": names[kind], "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "License": "CC0",
            "GeneratedBy": [{"Name": "bids_rim-synth", "Version": version,
                             "Description": "simulated human rater"}],
            "SourceDatasets": [{"URL": "bids:raw:"}],
            "DatasetLinks": {"raw": RAW_FROM_DERIVATIVE}}


def flair_sidecar(site: Site, slice_thickness_mm: float) -> dict:
    """The FLAIR's sidecar; ``slice_thickness_mm`` is the image's voxel size across its slices (the
    ``small`` cohorts are sampled coarser than the site's protocol)."""
    two_d = site.flair_protocol == "2D"
    return {**_SCANNER, "InstitutionName": site.label, "MRAcquisitionType": site.flair_protocol,
            "EchoTime": 0.12, "RepetitionTime": 9.0 if two_d else 5.0,
            "InversionTime": 2.5 if two_d else 1.8, "SliceThickness": round(float(slice_thickness_mm), 3)}


def qsm_sidecar(site: Site) -> dict:
    return {**_SCANNER, "InstitutionName": site.label, "Units": "ppm",
            "MRAcquisitionType": "3D", "EchoTime": 0.02,
            "Description": "QSM relative to ventricular CSF, Tikhonov dipole inversion "
                           f"(lambda {site.tikhonov_lambda:.3f}); 0 outside the brain mask"}


def t2starw_sidecar(site: Site, params: SynthParams) -> dict:
    return {**_SCANNER, "InstitutionName": site.label, "MRAcquisitionType": "3D",
            "EchoTime": params.sites.gre_echo_time_s, "RepetitionTime": 0.035,
            "FlipAngle": 15}


def mask_sidecar(sub: str, ses: str) -> dict:
    return {"Type": "Lesion", "Description": "binary lesion mask drawn by a (simulated) rater",
            "Sources": [f"bids:raw:{sub}/{ses}/anat/{sub}_{ses}_FLAIR.nii.gz"],
            "SpatialReference": f"bids:raw:{sub}/{ses}/anat/{sub}_{ses}_FLAIR.nii.gz"}


def rim_dseg_sidecar(sub: str, ses: str) -> dict:
    qsm = f"bids:raw:{sub}/{ses}/anat/{sub}_{ses}_Chimap.nii.gz"
    return {"Description": "rater's rim labels on the QSM grid (see the dseg.tsv for the labels)",
            "Sources": [qsm], "SpatialReference": qsm}


def annotation_sidecar() -> dict:
    return {"lesion_id": {"Description": "lesion identifier (same ids as the truth label map)"},
            "x_mm": {"Description": "lesion centroid, QSM world RAS", "Units": "mm"},
            "y_mm": {"Description": "lesion centroid, QSM world RAS", "Units": "mm"},
            "z_mm": {"Description": "lesion centroid, QSM world RAS", "Units": "mm"},
            "rim": {"Description": "rater's rim call",
                    "Levels": {"1": "paramagnetic rim lesion (rim+)", "0": "rim-"}}}


def rim_dseg_table() -> pd.DataFrame:
    return pd.DataFrame({"index": [0, 1, 2, 3],
                         "name": ["background", "rim_negative_lesion", "rim_positive_lesion",
                                  "paramagnetic_rim"],
                         "abbreviation": ["BG", "RIMNEG", "RIMPOS", "RIM"]})


def participants_sidecar() -> dict:
    return {"site": {"Description": "acquisition site (protocol, noise and intensity scale differ)"},
            "age": {"Description": "age at first session", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "EDSS": {"Description": "Expanded Disability Status Scale (0-10)"},
            "disease_duration": {"Description": "years since MS onset", "Units": "year"}}


def truth_columns() -> list[str]:
    return ["participant_id", "session_id", "lesion_id", "class", "location", "volume_mm3",
            "rim_contrast_ppb", "rim_thickness_mm", "rim_coverage", "core_contrast_ppb",
            "confounder", "central_vein", "confluent_with", "flair_ratio_to_wm",
            "shell_minus_core_ppb", "observed_shell_minus_core_ppb", "contrast_noise_sd_ppb",
            "expected_cnr", "observed_cnr", "rim_shell_minus_core_ppb", "rim_cnr",
            "observed_rim_cnr", "rater_missed", "rater_rim", "x_mm", "y_mm", "z_mm"]


def readme_text(difficulty: str, qsm_noise_scale: float = 1.0) -> str:
    return ("Synthetic multiple sclerosis cohort made by bids_rim-synth "
            f"(difficulty {difficulty}).\n"
            + ("" if qsm_noise_scale == 1.0 else
               f"QSM noise scaled by {qsm_noise_scale:g} for a noise study: not a benchmark cohort.\n") +
            "QSM (Chimap, ppm), GRE magnitude and FLAIR per session; rater lesion masks and rim\n"
            "annotations under derivatives/; the ground truth under sourcedata/synth_truth/.\n"
            "Nothing here comes from a real person.\n")
