"""The sink: the one node that writes a session's derivatives, with BIDS names, atomically.

It runs last in a session's workflow, so a session that failed earlier writes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_rim.bidsio.derivatives import atomic_copy, atomic_write_json, atomic_write_tsv, bids_uri, derivative_path
from bids_rim.bidsio.sidecars import lesion_table_sidecar, tidy_lesion_table
from bids_rim.preproc.normalisation_qc import MIN_LESION_SHARE_INSIDE_BRAIN, normalisation_warning

LOGGER = logging.getLogger("bids_rim.participant")


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="the derivative dataset")
    entities = traits.Dict(mandatory=True, desc="subject, session, run")
    source_files = traits.Dict(mandatory=True, desc="role -> input file, for the Sources sidecar key")
    dataset_roots = traits.Dict(mandatory=True, desc="DatasetLinks name -> dataset folder (bidsio.dataset_roots)")
    flair_on_qsm = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    brain_mask_method = traits.Str(mandatory=True)
    lesion_labels = File(exists=True, mandatory=True)
    lesion_source = traits.Str(mandatory=True)
    xfm = File(exists=True, mandatory=True)
    table = File(exists=True, mandatory=True)
    patches = File(exists=True, mandatory=True)
    parameters = traits.Dict(desc="processing parameters recorded in the table's sidecar")
    warnings = traits.List(traits.Str, desc="the session's warnings from the checks before the run")
    run_id = traits.Str(mandatory=True, desc="the participant-level run (YYYYmmdd-HHMMSSZ, its start in UTC): "
                                             "its manifest of the written files goes to sub-X/log/<run id>/")
    template_maps = traits.List(traits.Dict, desc="{space, desc, path, lesion_share_inside_brain} of "
                                                  "template-space masks")
    template_warnings = traits.List(traits.Str, desc="warnings of the normalisations' quality checks")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.Dict(desc="role -> written path (and 'qsm', the input map)")


class DerivativesSink(SimpleInterface):
    """Write FLAIR on QSM, brain mask, lesion labels, transform, lesion table and patches."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        out = Path(self.inputs.output_dir)
        entities = dict(self.inputs.entities)
        roots = dict(self.inputs.dataset_roots)
        source_files = dict(self.inputs.source_files)
        sources = [bids_uri(path, roots) for path in source_files.values()]

        def sources_of(role: str) -> list[str]:
            return [bids_uri(source_files[name], roots)
                    for name in input_roles_of(role, source_files, self.inputs.brain_mask_method)]

        def target(suffix: str, extension: str, **extra: str) -> Path:
            return derivative_path(out, {**entities, **extra}, suffix, extension)

        written: dict[str, str] = {}
        qsm_reference = bids_uri(self.inputs.source_files["qsm"], roots)
        parameters = dict(self.inputs.parameters) if isdefined(self.inputs.parameters) else {}
        images = {
            "flair_on_qsm": (self.inputs.flair_on_qsm, target("FLAIR", ".nii.gz", space="QSM", desc="preproc"),
                             {"SkullStripped": False, "Description": "N4-corrected FLAIR resampled onto the "
                                                                     "QSM grid (linear interpolation)"}),
            "brain_mask": (self.inputs.brain_mask, target("mask", ".nii.gz", space="QSM", desc="brain"),
                           {"Type": "Brain", "Description": f"Brain mask ({self.inputs.brain_mask_method})"}),
            "lesion_labels": (self.inputs.lesion_labels, target("dseg", ".nii.gz", space="QSM", desc="lesions"),
                              {"Description": "Lesion label map: 0 background, N the lesion with lesion_id N",
                               "LesionSource": self.inputs.lesion_source,
                               "LesionOutline": parameters.get("LesionOutline", "given")}),
        }
        for role, (source, path, metadata) in images.items():
            atomic_copy(Path(source), path)
            atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                              {**metadata, "Sources": sources_of(role), "SpatialReference": qsm_reference})
            written[role] = str(path)

        xfm_path = target("xfm", ".txt", **{"from": "FLAIR", "to": "QSM", "mode": "image"})
        atomic_copy(Path(self.inputs.xfm), xfm_path)
        written["xfm"] = str(xfm_path)

        table = tidy_lesion_table(pd.read_csv(self.inputs.table, sep="\t", na_values="n/a"))
        table_path = target("table", ".tsv", desc="lesions")
        warnings = [*(self.inputs.warnings if isdefined(self.inputs.warnings) else []),
                    *(self.inputs.template_warnings if isdefined(self.inputs.template_warnings) else [])]
        atomic_write_tsv(table_path, table, lesion_table_sidecar(
            table, {"Sources": sources, "LesionSource": self.inputs.lesion_source,
                    "ProcessingParameters": parameters, "Warnings": warnings}))
        written["table"] = str(table_path)

        patches_path = target("patches", ".npz", desc="lesions")
        atomic_copy(Path(self.inputs.patches), patches_path)
        atomic_write_json(patches_path.with_suffix(".json"), {
            "Description": "One 3D patch per lesion (numpy .npz): array 'patches' (lesions x channels x "
                           "P x P x P, float32), 'lesion_id', 'spacing_mm', 'channels' (the channel names, in order)",
            "Channels": ["qsm_ppm: QSM minus the normal-appearing white matter median (ppm)",
                         "flair_nawm: FLAIR divided by its normal-appearing white matter median",
                         "lesion_mask: this lesion (1) or not (0)"],
            "Sources": sources,
        })
        written["patches"] = str(patches_path)
        if isdefined(self.inputs.template_maps):
            descriptions = {"lesions": "Lesion mask", "rim": "Mask of the lesions labelled rim+ by the model"}
            for item in self.inputs.template_maps:
                path = target("mask", ".nii.gz", space=item["space"], desc=item["desc"])
                atomic_copy(Path(item["path"]), path)
                atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
                    "Description": f"{descriptions[item['desc']]} in {item['space']} space (antspyx affine + SyN "
                                   "of FLAIR to the template T1w; nearest neighbour)",
                    "Sources": sources, "Type": "ROI",
                    "LesionShareInsideTemplateBrain": item.get("lesion_share_inside_brain"),
                    "LesionShareInsideTemplateBrainDescription": (
                        "quality check of the normalisation: share of the lesion voxels in template space that "
                        "lie inside the template's brain mask (null: no lesion voxel or no template mask); "
                        f"below {MIN_LESION_SHARE_INSIDE_BRAIN} the session is warned about and the group "
                        "level's frequency maps leave it out")})
                written[f"{item['space']}_{item['desc']}"] = str(path)
                warning = normalisation_warning(item["space"], item.get("lesion_share_inside_brain"))
                if item["desc"] == "lesions" and warning is not None:
                    LOGGER.warning("%s: %s", path, warning)
        write_run_manifest(out, f"sub-{entities['subject']}", self.inputs.run_id, table_path, written)
        written["qsm"] = self.inputs.source_files["qsm"]  # the report shows the untouched input QSM
        self._results["out_files"] = written
        return runtime


def input_roles_of(output: str, inputs: dict[str, str], brain_mask_method: str) -> list[str]:
    """The inputs (roles of ``inputs``: flair, qsm, magnitude, lesion_mask) an output was made from, for
    its ``Sources``.

    The registration's fixed image is the GRE magnitude when there is one, else the QSM: it shapes
    FLAIR on the QSM grid and everything cut from it. The brain mask comes from the QSM's own
    support, the magnitude, or a template registered to FLAIR (``brain_mask_method``). Lesion
    labels, tables and patches use everything.
    """
    registration = ["flair", "magnitude" if "magnitude" in inputs else "qsm"]
    by_output = {
        "flair_on_qsm": ["flair", "qsm", *registration[1:]],
        "brain_mask": {"qsm-support": ["qsm"], "magnitude": ["magnitude"]}.get(
            brain_mask_method, ["qsm", *registration]),
    }
    wanted = by_output.get(output, list(inputs))
    return [role for role in inputs if role in wanted]


def write_run_manifest(output_dir: Path, participant: str, run_id: str, table: Path, written: dict[str, str]) -> Path:
    """Record which files of OUTPUT_DIR this run wrote for one session: ``<participant>/log/<run id>/
    <session>_outputs.json``, beside the crash files a failed run leaves there.

    The group level reads it to tell a lesion table of an earlier run from one of the run that
    crashed (:func:`bids_rim.group.aggregate.table_run_starts`) without file times, which a copy of
    OUTPUT_DIR may reset. It lives in ``log/``, not in the table's sidecar, so that a rerun leaves
    every derivative byte-identical.
    """
    name = table.name.replace("_desc-lesions_table.tsv", "_outputs.json")
    manifest = output_dir / participant / "log" / run_id / name
    atomic_write_json(manifest, {
        "ParticipantLevelRun": run_id,
        "Outputs": {role: Path(path).relative_to(output_dir).as_posix() for role, path in sorted(written.items())},
    })
    return manifest
