"""Nipype workflow factories of the participant level.

``init_bids_rim_wf`` holds one ``init_participant_wf`` per subject, which holds one
``init_session_wf`` per session (or run) and the subject's report. Only these factories
read the run configuration; the nodes get explicit arguments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_rim import __version__
from bids_rim.bidsio.derivatives import dataset_roots
from bids_rim.bidsio.inputs import SessionInputs
from bids_rim.config import RunConfig
from bids_rim.interfaces.derivatives import DerivativesSink
from bids_rim.interfaces.inference import RimInference
from bids_rim.interfaces.preproc import (
    BrainMask,
    LabelLesions,
    LesionTableAndPatches,
    N4BiasCorrection,
    ResampleToQSM,
    RigidRegistration,
    TemplateMaps,
)
from bids_rim.interfaces.reports import ParticipantReport
from bids_rim.reports.boilerplate import Boilerplate, methods_boilerplate

BUNDLED_MODELS = {"given": "bids_rim_default_model.pt", "refined": "bids_rim_refined_outline_model.pt"}


def bundled_model_path(lesion_outline: str = "given") -> Path:
    """The model shipped inside the package for lesions outlined as ``--lesion-outline`` says.

    Both were trained on synthetic data only, the same cohort and settings, one on the lesion
    outlines as given and one on outlines redrawn on FLAIR: a model reads the lesion's edge
    layer, so it must see outlines drawn the way it was trained on.
    """
    return Path(__file__).resolve().parent.parent / "data" / BUNDLED_MODELS[lesion_outline]


def top_workflow_name() -> str:
    """The top workflow's Nipype name, and so its folder in the working directory (one per version)."""
    return f"bids_rim_{__version__.replace('.', '_').replace('+', '_')}_wf"


def participant_work_dir(work_dir: Path, subject: str) -> Path:
    """The folder of participant ``subject``'s nodes in the working directory ``work_dir``."""
    return work_dir / top_workflow_name() / f"sub_{subject}_wf"


def init_bids_rim_wf(config: RunConfig, units_by_subject: dict[str, list[SessionInputs]], *, run_id: str,
                     warnings: dict[str, list[str]] | None = None) -> pe.Workflow:
    """The top workflow: one sub-workflow per participant, in the Nipype work directory."""
    workflow = pe.Workflow(name=top_workflow_name())
    workflow.base_dir = str(config.execution.work_dir)
    workflow.config["execution"] = {
        "crashfile_format": "txt",
        "stop_on_first_crash": False,
        "remove_unnecessary_outputs": False,
        "hash_method": "content",
    }
    methods = run_methods(config)
    for subject, units in units_by_subject.items():
        participant_wf = init_participant_wf(config, subject, units, warnings or {}, run_id=run_id, methods=methods)
        crash_dir = config.output_dir / f"sub-{subject}" / "log" / run_id
        for node_name in participant_wf.list_node_names():
            node = participant_wf.get_node(node_name)
            node.config = {"execution": {"crashdump_dir": str(crash_dir), "crashfile_format": "txt"}}
        workflow.add_nodes([participant_wf])
    return workflow


def init_participant_wf(config: RunConfig, subject: str, units: list[SessionInputs],
                        warnings: dict[str, list[str]], *, run_id: str, methods: Boilerplate) -> pe.Workflow:
    """One participant: a session workflow per session/run, then the participant's report.

    ::

        session_wf (ses-1) ──┐
        session_wf (ses-2) ──┼──▶ merge ──▶ report (OUTPUT_DIR/sub-X.html)
        ...                ──┘
    """
    workflow = pe.Workflow(name=f"sub_{subject}_wf")
    merge = pe.Node(niu.Merge(len(units)), name="merge_sessions")
    report = pe.Node(ParticipantReport(output_dir=str(config.output_dir), subject=subject,
                                       parameters={**config.as_report_dict(), "model": model_provenance(config)},
                                       methods=list(methods.paragraphs), references=list(methods.references)),
                     name="report", overwrite=True)
    for index, unit in enumerate(units, start=1):
        session_wf = init_session_wf(config, unit, warnings.get(unit.name), run_id=run_id)
        workflow.connect(session_wf, "outputnode.out_files", merge, f"in{index}")
    workflow.connect(merge, "out", report, "session_outputs")
    return workflow


def init_session_wf(config: RunConfig, unit: SessionInputs, warnings: list[str] | None = None, *,
                    run_id: str) -> pe.Workflow:
    """One session: FLAIR and QSM in, lesion table, patches and maps out.

    ``run_id`` names the participant-level run (its ``log/<run id>/`` folder); the sink records there
    which files the run wrote, so that the group level can tell a table of an earlier run from this one's.

    ::

        inputs ─▶ n4 (FLAIR) ─┐
        inputs ─▶ brain_mask ─┼─▶ register (FLAIR→QSM, rigid MI) ─▶ resample FLAIR [+ lesion mask]
                             │        ─▶ lesions (mask or built-in) ─▶ table + patches
                             │        ─▶ rim inference ─▶ sink (BIDS derivatives)

    The brain mask is the QSM support, else from the magnitude; without a magnitude, a template
    brain mask registered to FLAIR is the last resort, so brain_mask then runs after register.
    """
    settings, execution = config.lesions, config.execution
    workflow = pe.Workflow(name=unit.name.replace("-", "_") + "_wf")
    inputnode = pe.Node(niu.IdentityInterface(fields=["flair", "qsm", "magnitude", "lesion_mask"]), name="inputnode")
    inputnode.inputs.flair = str(unit.flair)
    inputnode.inputs.qsm = str(unit.qsm)
    if unit.magnitude is not None:
        inputnode.inputs.magnitude = str(unit.magnitude)
    use_mask = unit.lesion_mask is not None and settings.source in ("auto", "mask")
    if use_mask:
        inputnode.inputs.lesion_mask = str(unit.lesion_mask)
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")

    n4 = pe.Node(N4BiasCorrection(num_threads=execution.omp_nthreads), name="n4_flair", n_procs=execution.omp_nthreads)
    brain_mask = pe.Node(BrainMask(seed=execution.seed), name="brain_mask")
    register = pe.Node(RigidRegistration(seed=execution.seed), name="register_flair_to_qsm")
    resample_flair = pe.Node(ResampleToQSM(out_name="flair_on_qsm.nii.gz"), name="resample_flair")
    lesions = pe.Node(LabelLesions(min_volume_mm3=settings.min_volume_mm3,
                                   confluent_policy=settings.confluent_policy,
                                   refine_outline=settings.outline == "refined"), name="label_lesions")
    table = pe.Node(LesionTableAndPatches(seed=execution.seed, patch_size=settings.patch_size,
                                          patch_spacing_mm=settings.patch_spacing_mm), name="lesion_table")
    sources = {"flair": str(unit.flair), "qsm": str(unit.qsm)}
    if unit.magnitude is not None:
        sources["magnitude"] = str(unit.magnitude)
    if use_mask:
        sources["lesion_mask"] = str(unit.lesion_mask)
    sink = pe.Node(DerivativesSink(output_dir=str(config.output_dir), entities=unit.entities,
                                   source_files=sources,
                                   dataset_roots=dataset_roots(config.bids_dir, config.derivatives, config.output_dir),
                                   parameters=_parameters(config),
                                   warnings=list(warnings or []), run_id=run_id),
                   name="sink", overwrite=True)

    workflow.connect([
        (inputnode, n4, [("flair", "in_file")]),
        (inputnode, brain_mask, [("qsm", "qsm")]),
        (n4, register, [("out_file", "moving")]),
        (n4, resample_flair, [("out_file", "in_file")]),
        (inputnode, resample_flair, [("qsm", "reference")]),
        (register, resample_flair, [("xfm", "xfm")]),
        (resample_flair, lesions, [("out_file", "flair_on_qsm")]),
        (brain_mask, lesions, [("out_file", "brain_mask")]),
        (inputnode, table, [("qsm", "qsm")]),
        (resample_flair, table, [("out_file", "flair_on_qsm")]),
        (lesions, table, [("labels", "labels"), ("label_table", "label_table")]),
        (brain_mask, table, [("out_file", "brain_mask")]),
        (resample_flair, sink, [("out_file", "flair_on_qsm")]),
        (brain_mask, sink, [("out_file", "brain_mask"), ("method", "brain_mask_method")]),
        (lesions, sink, [("labels", "lesion_labels"), ("source", "lesion_source")]),
        (register, sink, [("xfm", "xfm")]),
        (table, sink, [("patches", "patches")]),
        (sink, outputnode, [("out_files", "out_files")]),
    ])
    if unit.magnitude is not None:
        # The GRE magnitude shares the QSM grid and has FLAIR-like anatomy: the better fixed image.
        workflow.connect([(inputnode, brain_mask, [("magnitude", "magnitude")]),
                          (inputnode, register, [("magnitude", "fixed")])])
    else:
        # Without a magnitude, an unmasked QSM map gets a template brain mask registered to FLAIR.
        workflow.connect([(inputnode, register, [("qsm", "fixed")]),
                          (n4, brain_mask, [("out_file", "flair")]),
                          (register, brain_mask, [("xfm", "xfm")])])
    if use_mask:
        resample_mask = pe.Node(ResampleToQSM(is_mask=True, out_name="lesion_mask_on_qsm.nii.gz"),
                                name="resample_lesion_mask")
        mask_xfm = pe.Node(niu.Function(function=_mask_transform, input_names=["mask", "qsm", "xfm"],
                                        output_names=["xfm"]), name="lesion_mask_space")
        workflow.connect([
            (inputnode, mask_xfm, [("lesion_mask", "mask"), ("qsm", "qsm")]),
            (register, mask_xfm, [("xfm", "xfm")]),
            (inputnode, resample_mask, [("lesion_mask", "in_file"), ("qsm", "reference")]),
            (mask_xfm, resample_mask, [("xfm", "xfm")]),
            (resample_mask, lesions, [("out_file", "lesion_mask")]),
        ])
    final_table = (table, "table")
    if config.run_inference:
        model_path = config.model_path or bundled_model_path(config.lesions.outline)
        infer = pe.Node(RimInference(model=str(model_path), device=execution.device,
                                     num_threads=execution.omp_nthreads),
                        name="rim_inference", n_procs=execution.omp_nthreads)
        workflow.connect([(table, infer, [("table", "table"), ("patches", "patches")])])
        final_table = (infer, "table")
    workflow.connect([(final_table[0], sink, [(final_table[1], "table")])])
    if config.output_spaces:
        template_maps = pe.Node(TemplateMaps(spaces=list(config.output_spaces), seed=execution.seed),
                                name="template_maps")
        workflow.connect([
            (resample_flair, template_maps, [("out_file", "flair_on_qsm")]),
            (brain_mask, template_maps, [("out_file", "brain_mask")]),
            (lesions, template_maps, [("labels", "labels")]),
            (final_table[0], template_maps, [(final_table[1], "table")]),
            (template_maps, sink, [("maps", "template_maps"), ("warnings", "template_warnings")]),
        ])
    return workflow


def _parameters(config: RunConfig) -> dict:
    """The lesion table sidecar's ``ProcessingParameters``: what, besides the inputs, made its numbers.

    ``LesionSourceOption`` is the option as given (``auto`` included); the sidecar's top-level
    ``LesionSource`` says which source the session actually used.
    """
    settings = config.lesions
    return {
        "MinLesionVolume_mm3": settings.min_volume_mm3,
        "ConfluentPolicy": settings.confluent_policy,
        "LesionOutline": settings.outline,
        "PatchSize_voxels": settings.patch_size,
        "PatchSpacing_mm": settings.patch_spacing_mm,
        "LesionSourceOption": settings.source,
        "Seed": config.execution.seed,
        **model_provenance(config),
        "bids_rim_version": __version__,
    }


def model_provenance(config: RunConfig) -> dict:
    """``Model`` (the bundled model's file name, or the path given with ``--model``), ``ModelSHA256``
    and ``DecisionThreshold`` (the probability from which ``rim_label`` is 1); all None without inference.

    With them a lesion table names the exact model and cut-off that made its ``rim_label``, even
    after ``group --train`` has replaced the file at the same path.
    """
    if not config.run_inference:
        return {"Model": None, "ModelSHA256": None, "DecisionThreshold": None}
    path = config.model_path or bundled_model_path(config.lesions.outline)
    stat = Path(path).stat()
    sha256, threshold = _model_identity(Path(path), stat.st_mtime_ns, stat.st_size)
    return {"Model": str(config.model_path) if config.model_path else path.name,
            "ModelSHA256": sha256, "DecisionThreshold": threshold}


@lru_cache(maxsize=8)
def _model_identity(path: Path, mtime_ns: int, size: int) -> tuple[str, float]:
    """The SHA-256 of a model file and its decision threshold (read once per file version and process:
    ``mtime_ns`` and ``size`` only key the cache, so that a model retrained in place is read again)."""
    from bids_rim.training.checkpoint import file_sha256, load_checkpoint

    return file_sha256(path), round(float(load_checkpoint(path)["threshold"]), 6)


def run_methods(config: RunConfig) -> Boilerplate:
    """The methods text of this run (``logs/CITATION.md`` and each report's Methods section): its lesion
    settings and, with inference, the model file it applies."""
    settings = config.lesions
    model = None
    if config.run_inference:
        from bids_rim.training.checkpoint import load_checkpoint

        provenance = model_provenance(config)
        checkpoint = load_checkpoint(Path(config.model_path or bundled_model_path(settings.outline)))
        model = {"name": Path(provenance["Model"]).name, "sha256": provenance["ModelSHA256"],
                 "threshold": provenance["DecisionThreshold"], "arch": checkpoint["arch"],
                 "arch_config": checkpoint.get("arch_config", {}), "training": checkpoint.get("training", {})}
    return methods_boilerplate({"min_volume_mm3": settings.min_volume_mm3,
                                "confluent_policy": settings.confluent_policy, "outline": settings.outline,
                                "source": settings.source, "patch_size": settings.patch_size,
                                "patch_spacing_mm": settings.patch_spacing_mm}, model)


def _mask_transform(mask: str, qsm: str, xfm: str) -> str:
    """The transform for a lesion mask: identity when it already lies on the QSM grid.

    Raters draw on FLAIR, so a mask on another grid is taken to be in FLAIR space and is
    moved with the FLAIR→QSM transform. (Runs inside a Nipype Function node: imports local.)
    """
    import os

    import nibabel as nib
    import numpy as np

    from bids_rim.preproc.checks import same_grid
    from bids_rim.preproc.transforms import write_itk_rigid

    if not same_grid(nib.load(mask), nib.load(qsm)):
        return xfm
    identity = os.path.abspath("identity_xfm.txt")
    write_itk_rigid(np.eye(4), identity)
    return identity
