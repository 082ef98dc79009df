"""A methods paragraph for papers, written from a run's settings: ``OUTPUT_DIR/logs/CITATION.md``
and the "Methods" section of every participant report.

fMRIPrep and MRIQC users expect one: a text that says what was done, with the versions and
references, that they may copy into a manuscript unchanged. It is written from what this run
did (its options and the model file it applied), never from the defaults, so that a run with
``--lesion-outline refined`` or another ``--model`` is described as it ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

#: The works the text cites, by key. Only what the participant level actually uses.
REFERENCES: dict[str, str] = {
    "method": "3D Classification of Paramagnetic Rim Lesions in Multiple Sclerosis via Asymmetric QSM-FLAIR "
              "Modeling. arXiv:2606.16756 (2026).",
    "nipype": "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
              "neuroimaging data processing framework in Python. Front Neuroinform. 2011;5:13. "
              "doi:10.3389/fninf.2011.00013",
    "pybids": "Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS datasets. "
              "J Open Source Softw. 2019;4(40):1294. doi:10.21105/joss.01294",
    "n4": "Tustison NJ, Avants BB, Cook PA, et al. N4ITK: improved N3 bias correction. IEEE Trans Med "
          "Imaging. 2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "ants": "Avants BB, Tustison NJ, Song G, et al. A reproducible evaluation of ANTs similarity metric "
            "performance in brain image registration. NeuroImage. 2011;54(3):2033-2044. "
            "doi:10.1016/j.neuroimage.2010.09.025",
    "templateflow": "Ciric R, Thompson WH, Lorenz R, et al. TemplateFlow: FAIR-sharing of multi-scale, "
                    "multi-species brain models. Nat Methods. 2022;19:1568-1571. "
                    "doi:10.1038/s41592-022-01681-2",
    "film": "Perez E, Strub F, de Vries H, Dumoulin V, Courville A. FiLM: visual reasoning with a general "
            "conditioning layer. AAAI 2018. arXiv:1709.07871",
    "supcon": "Khosla P, Teterwak P, Wang C, et al. Supervised contrastive learning. NeurIPS 2020. "
              "arXiv:2004.11362",
    "platt": "Platt JC. Probabilistic outputs for support vector machines and comparisons to regularized "
             "likelihood methods. In: Advances in Large Margin Classifiers. MIT Press; 1999:61-74.",
    "pytorch": "Paszke A, Gross S, Massa F, et al. PyTorch: an imperative style, high-performance deep "
               "learning library. NeurIPS 2019. arXiv:1912.01703",
    "monai": "Cardoso MJ, Li W, Brown R, et al. MONAI: an open-source framework for deep learning in "
             "healthcare. arXiv:2211.02701 (2022).",
}

#: What each ``--lesion-source`` option did, as a sentence.
LESION_SOURCES = {
    "auto": "Lesions were taken from the lesion mask given with the data where there was one, and "
            "otherwise segmented from FLAIR by bids_rim's built-in segmentation.",
    "mask": "Lesions were taken from the lesion mask given with the data.",
    "builtin": "Lesions were segmented from FLAIR by bids_rim's built-in segmentation.",
}

#: The network architectures a model file may hold, in words (asym is described from its configuration).
ARCHITECTURES = {
    "qsm_only": "a network that reads QSM alone",
    "rimnet": "a RimNet-style network (two symmetric QSM and FLAIR branches fused early and late)",
    "qsmrimnet": "a QSMRim-Net-style network (a QSM and FLAIR residual network with radiomic rim features)",
    "early_fusion": "a 3D ResNet-18 on the stacked QSM, FLAIR and lesion-mask channels",
}

#: How FLAIR enters the asym network (``arch_config["conditioning"]``), in words.
ASYM_CONDITIONING = {
    "film_spatial": "FLAIR only conditions the QSM features, through a per-voxel feature-wise linear "
                    "modulation (FiLM) {film}",
    "film_channel": "FLAIR only conditions the QSM features, through a per-channel feature-wise linear "
                    "modulation (FiLM) {film}",
    "gated_xattn": "FLAIR only conditions the QSM features, through gated cross-attention",
    "none": "FLAIR is not read",
    "input_stack": "QSM, FLAIR and the lesion mask enter one stem together (symmetric early fusion)",
}


def describe_architecture(arch: str, arch_config: Mapping[str, Any]) -> str:
    """The network of a model file in words, from its architecture and configuration."""
    if arch != "asym":
        return ARCHITECTURES.get(arch, f"a {arch} network")
    conditioning = arch_config.get("conditioning", "film_spatial")
    text = (f"an asymmetric network in which QSM carries the signal and "
            f"{ASYM_CONDITIONING.get(conditioning, f'FLAIR enters by {conditioning}')}")
    if arch_config.get("rim_readout", True) and arch_config.get("readout_logit", True):
        text += ("; beside its learned features, its logit includes a linear function of a parameter-free "
                 "read-out of the lesion's QSM edge and core (their medians, differences and contrast-to-noise "
                 "ratios)")
    return text


_CITATION = re.compile(r"\{(" + "|".join(REFERENCES) + r")\}")


@dataclass(frozen=True)
class Boilerplate:
    """Paragraphs that cite works as ``[n]``, and the numbered references in order of first citation."""

    paragraphs: tuple[str, ...]
    references: tuple[str, ...]

    def markdown(self) -> str:
        """The text as ``CITATION.md``: a heading, the paragraphs, then the numbered references."""
        lines = ["# Methods (bids_rim)", "",
                 "This text was written by bids_rim from the options and the model of the run that wrote it. "
                 "You may copy it into a manuscript unchanged.", ""]
        for paragraph in self.paragraphs:
            lines += [paragraph, ""]
        lines += ["## References", ""]
        lines += [f"{number}. {reference}" for number, reference in enumerate(self.references, start=1)]
        return "\n".join(lines) + "\n"


def package_version(name: str) -> str:
    """An installed distribution's version, or "unknown" (the text must not fail for a version)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def number_citations(paragraphs: list[str]) -> Boilerplate:
    """Replace every ``{key}`` of :data:`REFERENCES` with ``[n]``, numbered in order of first citation."""
    order: list[str] = []

    def cite(match: re.Match) -> str:
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"[{order.index(key) + 1}]"

    numbered = tuple(_CITATION.sub(cite, paragraph) for paragraph in paragraphs)
    return Boilerplate(numbered, tuple(REFERENCES[key] for key in order))


def methods_boilerplate(settings: Mapping[str, Any], model: Mapping[str, Any] | None) -> Boilerplate:
    """The methods text of a participant-level run.

    ``settings``: ``min_volume_mm3``, ``confluent_policy`` (split | merge), ``outline`` (given |
    refined), ``source`` (auto | mask | builtin), ``patch_size`` (voxels), ``patch_spacing_mm``.
    ``model``: None without inference, else ``name``, ``sha256``, ``threshold`` and the model file's
    ``arch``, ``arch_config`` and ``training`` metadata (see ``bids_rim.training.checkpoint``).
    """
    versions = {name: package_version(name) for name in ("bids_rim", "nipype", "antspyx", "torch", "monai")}
    paragraphs = [
        f"Lesions were analysed with bids_rim {versions['bids_rim']}, which follows the method of "
        "{method}. Its workflow is built with Nipype " + versions["nipype"] + " {nipype} and finds its "
        "inputs with PyBIDS {pybids}.",
        "For each session, the FLAIR image was corrected for intensity non-uniformity with N4 {n4}, as "
        f"implemented in ANTs (antspyx {versions['antspyx']})" + " {ants}. The brain mask was the support of "
        "the QSM map where the map was masked, else a mask of the GRE magnitude image, else the "
        "MNI152NLin2009cAsym template's brain mask from TemplateFlow {templateflow} registered to FLAIR. "
        "FLAIR was registered rigidly (six degrees of freedom, mutual information) to the GRE magnitude "
        "image, or to the QSM map where there was no magnitude image, and resampled onto the QSM grid "
        "with linear interpolation.",
        _lesion_paragraph(settings),
    ]
    if model is not None:
        paragraphs.append(_model_paragraph(model, versions))
    return number_citations(paragraphs)


def _lesion_paragraph(settings: Mapping[str, Any]) -> str:
    confluent = ("split at narrow necks" if settings["confluent_policy"] == "split"
                 else "kept as single lesions")
    text = (f"{LESION_SOURCES[settings['source']]} Lesions were labelled as 26-connected components of at "
            f"least {settings['min_volume_mm3']:g} mm³; confluent lesions were {confluent}.")
    if settings["outline"] == "refined":
        text += (" Each lesion's border was then redrawn where FLAIR crosses half-way between the surrounding "
                 "white matter and the lesion, moving by at most 2.5 mm.")
    return text + (f" Around each lesion a patch of {settings['patch_size']}³ voxels was sampled on a grid "
                   f"aligned with the world axes, at {settings['patch_spacing_mm']:g} mm or at the QSM's finest voxel "
                   "size where that is coarser (coarser still for a lesion too large to fit; trilinear "
                   "interpolation unless the samples fall on QSM voxel centres), from the QSM map (relative "
                   "to the median of the normal-appearing white matter, in ppm), FLAIR (divided by its "
                   "normal-appearing white matter median) and the lesion mask; the lesion measurements were "
                   "made on the QSM grid itself.")


def _model_paragraph(model: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    training = model.get("training", {})
    config = training.get("config", {})
    data = training.get("data", {})
    architecture = describe_architecture(model["arch"], model.get("arch_config", {}))
    # Pretraining ran only where a member recorded its final embedding spread (finite: NaN marks none).
    pretrained = any(value == value for value in training.get("pretrain_final_qsm_embedding_std", []))
    training_text = (" The network was pretrained self-supervised on the training patients' lesion patches, "
                     "labelled or not, then" if pretrained else " The network was")
    training_text += " fine-tuned on annotated lesions"
    if config.get("supcon_weight", 0) > 0:
        training_text += " with a supervised contrastive regulariser {supcon}"
    training_text += "."
    if data.get("init_from"):
        training_text += (f" Training started from the model file {Path(data['init_from']['path']).name} "
                          f"(SHA-256 {data['init_from']['sha256']}).")
    if data.get("n_labelled_patients"):
        origin = "synthetic " if training.get("synthetic_data") else ""
        training_text += (f" It was trained on {data['n_labelled']} annotated lesions ({data['n_rim_positive']} "
                          f"rim+) of {data['n_labelled_patients']} {origin}patients.")
    return (f"Each lesion was given a probability of being a paramagnetic rim lesion by {architecture}. "
            f"It is implemented with PyTorch {versions['torch']}" + " {pytorch} and MONAI " + versions["monai"]
            + " {monai}." + training_text + " Its probabilities were calibrated by Platt scaling {platt} on validation "
            "patients and averaged over the model's test-time views (the patch and its left-right flip); a "
            f"lesion was called rim+ when its probability reached {model['threshold']:.6g}. Model file "
            f"{model['name']} (SHA-256 {model['sha256']}).")
