"""The methods text (logs/CITATION.md, the reports' Methods section) describes the run as it ran."""

from __future__ import annotations

import re

import pytest

from bids_rim.reports.boilerplate import REFERENCES, methods_boilerplate
from bids_rim.training.checkpoint import load_checkpoint
from bids_rim.workflows.participant import bundled_model_path

SETTINGS = {"min_volume_mm3": 14.1, "confluent_policy": "split", "outline": "given", "source": "auto",
            "patch_size": 32, "patch_spacing_mm": 1.0}


@pytest.fixture(scope="module")
def bundled_model() -> dict:
    checkpoint = load_checkpoint(bundled_model_path("given"))
    return {"name": "my {odd} model.pt", "sha256": "0" * 64, "threshold": 0.27346, "arch": checkpoint["arch"],
            "arch_config": checkpoint["arch_config"], "training": checkpoint["training"]}


def _citations_resolve(text: str, references: tuple[str, ...]) -> list[int]:
    cited = [int(number) for number in re.findall(r"\[(\d+)\]", text)]
    assert cited and set(cited) == set(range(1, len(references) + 1))  # every reference cited, none missing
    first = list(dict.fromkeys(cited))
    assert first == sorted(first)  # numbered in order of first citation
    return cited


def test_a_run_with_the_bundled_model_is_described_as_it_ran(bundled_model):
    methods = methods_boilerplate(SETTINGS, bundled_model)
    text = " ".join(methods.paragraphs)
    _citations_resolve(text, methods.references)
    assert "14.1 mm³" in text and "split at narrow necks" in text and "32³ voxels" in text
    assert "redrawn" not in text  # given outlines
    assert "FiLM" in text and "pretrained self-supervised" in text and "supervised contrastive" in text
    assert "reached 0.27346." in text and "my {odd} model.pt" in text and "0" * 64 in text
    assert "per-voxel feature-wise linear modulation" in text and "read-out of the lesion's QSM edge" in text
    training = bundled_model["training"]["data"]
    assert f"{training['n_labelled_patients']} synthetic patients" in text
    assert set(methods.references) <= set(REFERENCES.values())
    markdown = methods.markdown()
    assert markdown.startswith("# Methods (bids_rim)") and "## References" in markdown
    assert f"{len(methods.references)}. {methods.references[-1]}" in markdown


def test_options_change_the_text():
    refined = " ".join(methods_boilerplate({**SETTINGS, "outline": "refined", "source": "builtin",
                                            "confluent_policy": "merge"}, None).paragraphs)
    assert "redrawn" in refined and "kept as single lesions" in refined
    assert "built-in segmentation" in refined and "lesion mask given with the data" not in refined


def test_without_inference_no_model_is_described_or_cited():
    methods = methods_boilerplate(SETTINGS, None)
    text = " ".join(methods.paragraphs)
    _citations_resolve(text, methods.references)
    assert "rim+" not in text and "PyTorch" not in text
    assert REFERENCES["pytorch"] not in methods.references and REFERENCES["n4"] in methods.references


def test_a_fine_tuned_model_names_its_starting_point(bundled_model):
    training = {**bundled_model["training"], "data": {**bundled_model["training"]["data"],
                                                     "init_from": {"path": "/x/bids_rim_default_model.pt",
                                                                   "sha256": "f" * 64}}}
    text = " ".join(methods_boilerplate(SETTINGS, {**bundled_model, "training": training}).paragraphs)
    assert "started from the model file bids_rim_default_model.pt" in text and "f" * 64 in text


def test_pretraining_and_architecture_are_described_from_the_model_file(bundled_model):
    """A model whose members never pretrained (NaN embedding spread: a RimNet, or no objectives) is not
    said to be pretrained; another conditioning is named as it is."""
    training = {**bundled_model["training"], "pretrain_final_qsm_embedding_std": [float("nan")] * 4}
    rimnet = " ".join(methods_boilerplate(SETTINGS, {**bundled_model, "arch": "rimnet", "arch_config": {},
                                                     "training": training}).paragraphs)
    assert "RimNet-style" in rimnet and "pretrained" not in rimnet and "FiLM" not in rimnet
    channel = " ".join(methods_boilerplate(SETTINGS, {**bundled_model, "arch_config": {
        **bundled_model["arch_config"], "conditioning": "film_channel", "readout_logit": False}}).paragraphs)
    assert "per-channel feature-wise" in channel and "read-out" not in channel and "pretrained" in channel


def test_boilerplate_only_writes_the_methods_text_and_processes_nobody(small_cohort, tmp_path):
    from bids_rim.cli.run import main
    from bids_rim.training.checkpoint import file_sha256

    output_dir = tmp_path / "out"
    code = main([str(small_cohort), str(output_dir), "participant", "--boilerplate-only", "--min-lesion-volume", "20",
                 "-w", str(tmp_path / "work")])
    assert code == 0
    assert sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*")) == ["logs", "logs/CITATION.md"]
    text = (output_dir / "logs" / "CITATION.md").read_text()
    assert "20 mm³" in text and file_sha256(bundled_model_path("given")) in text
    assert not (tmp_path / "work").exists()


def test_boilerplate_only_refuses_a_model_the_run_could_not_apply(small_cohort, tmp_path, capsys):
    from bids_rim.cli.run import main

    code = main([str(small_cohort), str(tmp_path / "out"), "participant", "--boilerplate-only", "--patch-size", "16"])
    assert code == 64
    assert "the model expects 32³ patches, not --patch-size 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
