"""Nipype interface over the rim model: adds rim columns to a session's lesion table."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_rim.errors import InputError


class _RimInferenceInputSpec(BaseInterfaceInputSpec):
    table = File(exists=True, mandatory=True, desc="per-lesion table (TSV)")
    patches = File(exists=True, mandatory=True, desc="per-lesion patches (npz)")
    model = File(exists=True, mandatory=True, desc="bids_rim model file")
    device = traits.Str("auto", usedefault=True, nohash=True)
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _RimInferenceOutputSpec(TraitedSpec):
    table = File(exists=True, desc="the table with rim_probability, rim_uncertainty, rim_label")


class RimInference(SimpleInterface):
    """Rim probability, uncertainty and label for every lesion of a session."""

    input_spec = _RimInferenceInputSpec
    output_spec = _RimInferenceOutputSpec

    def _run_interface(self, runtime):
        import torch

        from bids_rim.preproc.patches import load_patches
        from bids_rim.training.inference import load_rim_model

        torch.set_num_threads(self.inputs.num_threads)
        table = pd.read_csv(self.inputs.table, sep="\t", na_values="n/a")
        patches, lesion_ids = load_patches(Path(self.inputs.patches))
        if list(lesion_ids) != list(table["lesion_id"]):
            raise RuntimeError(f"{self.inputs.patches}: patches and lesion table disagree on lesion ids")
        model = load_rim_model(Path(self.inputs.model), self.inputs.device)
        if len(patches) and patches.shape[-1] != model.patch_size:
            raise InputError(
                f"{self.inputs.model}: the model expects {model.patch_size}³ patches but the lesions were cut at "
                f"{patches.shape[-1]}³; rerun with --patch-size {model.patch_size}"
            )
        predictions = model.predict(patches)
        for column in predictions.columns:
            table[column] = predictions[column].to_numpy()
        out_path = os.path.join(runtime.cwd, "lesions_rim.tsv")
        table.to_csv(out_path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
        self._results["table"] = out_path
        return runtime
