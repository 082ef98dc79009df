"""Nipype interfaces over :mod:`bids_rim.preproc`: each loads its inputs, calls one pure
function, and saves the result in the node's working directory. No science lives here."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_rim.preproc import checks


def _save(img: nib.Nifti1Image, cwd: str, name: str) -> str:
    """Write ``img`` into the node's folder with millimetres as its spatial unit (its affine is in mm;
    images built from an array and an affine would otherwise say "unknown")."""
    img.header.set_xyzt_units(xyz="mm")
    path = os.path.join(cwd, name)
    img.to_filename(path)
    return path


def _load(path: str) -> nib.Nifti1Image:
    """A 3D image, with errors that name the file."""
    return checks.ensure_3d(checks.load_nifti(Path(path)), path)


def _limit_threads(threads: int) -> None:
    """Threads for ITK (antspyx) and BLAS in this node's process."""
    for variable in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="FLAIR image")
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasCorrection(SimpleInterface):
    """N4 bias-field correction of FLAIR (antspyx, in-process)."""

    input_spec = _N4InputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        from bids_rim.preproc.bias import n4_bias_correct

        _limit_threads(self.inputs.num_threads)
        corrected = n4_bias_correct(_load(self.inputs.in_file))
        self._results["out_file"] = _save(corrected, runtime.cwd, "flair_n4.nii.gz")
        return runtime


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    qsm = File(exists=True, mandatory=True)
    magnitude = File(exists=True)
    flair = File(exists=True, desc="bias-corrected FLAIR: the template is registered to it")
    xfm = File(exists=True, desc="FLAIR→QSM ITK transform, to carry the template mask onto the QSM grid")
    template = traits.Str(desc="TemplateFlow template for the last resort; brainmask.BRAIN_MASK_TEMPLATE if unset")
    seed = traits.Int(0, usedefault=True)


class _BrainMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    method = traits.Str(desc="qsm-support | magnitude | template <name>")


class BrainMask(SimpleInterface):
    """Brain mask: the QSM's own support when it is masked, else from the GRE magnitude, else a
    TemplateFlow template's brain mask registered to FLAIR and carried onto the QSM grid."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from bids_rim.preproc.brainmask import mask_from_magnitude, qsm_support_mask

        qsm = _load(self.inputs.qsm)
        mask = qsm_support_mask(qsm)
        method = "qsm-support"
        if mask is None and isdefined(self.inputs.magnitude):
            mask = mask_from_magnitude(_load(self.inputs.magnitude))
            method = "magnitude"
        elif mask is None:
            mask, method = self._template_mask(qsm)
        self._results["out_file"] = _save(mask, runtime.cwd, "brain_mask.nii.gz")
        self._results["method"] = method
        return runtime

    def _template_mask(self, qsm: nib.Nifti1Image) -> tuple[nib.Nifti1Image, str]:
        from bids_rim.preproc.brainmask import BRAIN_MASK_TEMPLATE, mask_from_template
        from bids_rim.preproc.template_space import resolve_template
        from bids_rim.preproc.transforms import read_itk_rigid

        if not (isdefined(self.inputs.flair) and isdefined(self.inputs.xfm)):
            raise checks.InputError(
                f"{self.inputs.qsm}: the QSM map is not masked, there is no GRE magnitude image, and no "
                "FLAIR with its transform was given to register a template brain mask to"
            )
        space = self.inputs.template if isdefined(self.inputs.template) else BRAIN_MASK_TEMPLATE
        t1w_path, mask_path = resolve_template(space)
        if mask_path is None:
            raise checks.InputError(f"{t1w_path}: template {space} has no brain mask (desc-brain_mask) beside it")
        mask = mask_from_template(_load(self.inputs.flair), _load(str(t1w_path)), _load(str(mask_path)),
                                  reference=qsm, reference_to_image=read_itk_rigid(self.inputs.xfm),
                                  seed=self.inputs.seed)
        return mask, f"template {space}"


class _RegisterInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="bias-corrected FLAIR")
    fixed = File(exists=True, mandatory=True, desc="GRE magnitude or QSM (the QSM grid)")
    seed = traits.Int(0, usedefault=True)


class _RegisterOutputSpec(TraitedSpec):
    xfm = File(exists=True, desc="ITK text transform, FLAIR to QSM")
    rotation_deg = traits.Float()
    translation_mm = traits.Float()


class RigidRegistration(SimpleInterface):
    """Rigid FLAIR→QSM registration (mutual information, antspyx; single-threaded ITK, so that
    the same inputs give bit-identical transforms)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from bids_rim.preproc.registration import register_rigid
        from bids_rim.preproc.transforms import (
            rotation_angle_deg,
            translation_mm,
            write_itk_rigid,
        )

        matrix = register_rigid(
            _load(self.inputs.moving),
            _load(self.inputs.fixed),
            seed=self.inputs.seed,
        )
        path = os.path.join(runtime.cwd, "from-FLAIR_to-QSM_xfm.txt")
        write_itk_rigid(matrix, path)
        self._results.update(xfm=path, rotation_deg=rotation_angle_deg(matrix), translation_mm=translation_mm(matrix))
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image in FLAIR world")
    reference = File(exists=True, mandatory=True, desc="QSM grid")
    xfm = File(exists=True, desc="FLAIR→QSM ITK transform; identity when absent")
    is_mask = traits.Bool(False, usedefault=True, desc="nearest-neighbour and binarise")
    out_name = traits.Str("resampled.nii.gz", usedefault=True)


class ResampleToQSM(SimpleInterface):
    """Put FLAIR (linear) or a lesion mask (nearest) onto the QSM grid."""

    input_spec = _ResampleInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        from bids_rim.preproc.resample import (
            resample_mask_to_reference,
            resample_to_reference,
        )
        from bids_rim.preproc.transforms import read_itk_rigid

        matrix = read_itk_rigid(self.inputs.xfm) if isdefined(self.inputs.xfm) else np.eye(4)
        moving = _load(self.inputs.in_file)
        reference = _load(self.inputs.reference)
        if self.inputs.is_mask:
            resampled = resample_mask_to_reference(moving, reference, matrix)
        else:
            resampled = resample_to_reference(moving, reference, matrix, interpolation="linear")
        self._results["out_file"] = _save(resampled, runtime.cwd, self.inputs.out_name)
        return runtime


class _LesionsInputSpec(BaseInterfaceInputSpec):
    flair_on_qsm = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    lesion_mask = File(exists=True, desc="rater's mask on the QSM grid; built-in segmentation when absent")
    min_volume_mm3 = traits.Float(14.1, usedefault=True)
    confluent_policy = traits.Enum("split", "merge", usedefault=True)
    refine_outline = traits.Bool(False, usedefault=True,
                                 desc="redraw each lesion's border at half its FLAIR contrast")


class _LesionsOutputSpec(TraitedSpec):
    labels = File(exists=True, desc="lesion label map, value = lesion_id")
    label_table = File(exists=True, desc="labelling table (confluent flags)")
    source = traits.Str(desc="mask | builtin")


class LabelLesions(SimpleInterface):
    """Connected lesions with stable ids, from the given mask or the built-in segmentation.

    With ``refine_outline`` each lesion's border is then redrawn on FLAIR (same ids; the
    labelling table keeps the given outline's volume and centroid, which fixed the ids).
    """

    input_spec = _LesionsInputSpec
    output_spec = _LesionsOutputSpec

    def _run_interface(self, runtime):
        from bids_rim.preproc.lesions import label_lesions, segment_lesions_flair
        from bids_rim.preproc.outline import refine_lesion_outlines

        if isdefined(self.inputs.lesion_mask):
            mask = _load(self.inputs.lesion_mask)
            source = "mask"
        else:
            mask = segment_lesions_flair(
                _load(self.inputs.flair_on_qsm), _load(self.inputs.brain_mask)
            )
            source = "builtin"
        labels, label_table = label_lesions(
            mask, min_volume_mm3=self.inputs.min_volume_mm3, confluent_policy=self.inputs.confluent_policy
        )
        if self.inputs.refine_outline:
            labels = refine_lesion_outlines(labels, _load(self.inputs.flair_on_qsm), _load(self.inputs.brain_mask),
                                            min_volume_mm3=self.inputs.min_volume_mm3)
        table_path = os.path.join(runtime.cwd, "label_table.tsv")
        label_table.to_csv(table_path, sep="\t", index=False, lineterminator="\n")
        self._results.update(labels=_save(labels, runtime.cwd, "lesion_labels.nii.gz"), source=source,
                             label_table=table_path)
        return runtime


class _TableInputSpec(BaseInterfaceInputSpec):
    qsm = File(exists=True, mandatory=True)
    flair_on_qsm = File(exists=True, mandatory=True)
    labels = File(exists=True, mandatory=True)
    label_table = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    seed = traits.Int(0, usedefault=True)
    patch_size = traits.Int(32, usedefault=True)
    patch_spacing_mm = traits.Float(1.0, usedefault=True)


class _TableOutputSpec(TraitedSpec):
    table = File(exists=True, desc="per-lesion table (TSV)")
    patches = File(exists=True, desc="per-lesion patches (npz)")


class LesionTableAndPatches(SimpleInterface):
    """Per-lesion measurements and one isotropic patch per lesion."""

    input_spec = _TableInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from bids_rim.preproc.features import lesion_table, ventricle_mask
        from bids_rim.preproc.normalise import brain_depth_mm, flair_tissue_classes, nawm_mask, nawm_median
        from bids_rim.preproc.patches import extract_patches, save_patches

        qsm = _load(self.inputs.qsm)
        flair = _load(self.inputs.flair_on_qsm)
        labels = _load(self.inputs.labels)
        brain = _load(self.inputs.brain_mask)
        lesion_mask = nib.Nifti1Image((np.asarray(labels.dataobj) > 0).astype(np.uint8), labels.affine)
        # The FLAIR tissue classes and the brain depth serve both NAWM and the ventricles.
        classes = flair_tissue_classes(flair, brain, seed=self.inputs.seed)
        depth_mm = brain_depth_mm(brain)
        nawm = nawm_mask(flair, brain, lesion_mask, classes=classes, depth_mm=depth_mm)
        ventricles = ventricle_mask(flair, brain, classes=classes, depth_mm=depth_mm)
        label_table = pd.read_csv(self.inputs.label_table, sep="\t")
        table = lesion_table(qsm, flair, labels, brain, nawm=nawm, ventricles=ventricles, label_table=label_table)
        patches, patch_info = extract_patches(
            qsm, flair, labels, qsm_reference_ppm=nawm_median(qsm, nawm), flair_reference=nawm_median(flair, nawm),
            patch_size=self.inputs.patch_size, spacing_mm=self.inputs.patch_spacing_mm,
        )
        table = table.merge(patch_info, on="lesion_id", how="left", validate="one_to_one")
        table_path = os.path.join(runtime.cwd, "lesions.tsv")
        table.to_csv(table_path, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
        patches_path = os.path.join(runtime.cwd, "patches.npz")
        save_patches(patches_path, patches, patch_info)
        self._results.update(table=table_path, patches=patches_path)
        return runtime


class _TemplateMapsInputSpec(BaseInterfaceInputSpec):
    flair_on_qsm = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    labels = File(exists=True, mandatory=True)
    table = File(exists=True, mandatory=True, desc="lesion table; rim_label selects the rim+ lesions")
    spaces = traits.List(traits.Str, mandatory=True, desc="TemplateFlow template names")
    seed = traits.Int(0, usedefault=True)


class _TemplateMapsOutputSpec(TraitedSpec):
    maps = traits.List(traits.Dict, desc="{space, desc, path, lesion_share_inside_brain} of each map written")
    warnings = traits.List(traits.Str, desc="one per space whose normalisation failed its quality check")


class TemplateMaps(SimpleInterface):
    """Lesion and rim+ lesion masks in each requested template space (affine + SyN), with the
    quality check of each normalisation: the share of lesion voxels inside the template brain."""

    input_spec = _TemplateMapsInputSpec
    output_spec = _TemplateMapsOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from bids_rim.preproc.normalisation_qc import lesion_share_inside_brain, normalisation_warning
        from bids_rim.preproc.template_space import (
            apply_to_template,
            register_to_template,
            resolve_template,
        )

        flair, brain, labels = _load(self.inputs.flair_on_qsm), _load(self.inputs.brain_mask), _load(self.inputs.labels)
        table = pd.read_csv(self.inputs.table, sep="\t", na_values="n/a")
        label_data = np.asarray(labels.dataobj)
        masks = {"lesions": label_data > 0}
        if "rim_label" in table:
            rim_ids = table.loc[table["rim_label"] == 1, "lesion_id"].to_numpy()
            masks["rim"] = np.isin(label_data, rim_ids)
        maps, warnings = [], []
        for space in self.inputs.spaces:
            t1w_path, mask_path = resolve_template(space)
            template = nib.load(t1w_path)
            template_mask = nib.load(mask_path) if mask_path else None
            transforms = register_to_template(flair, brain, template, template_mask, seed=self.inputs.seed,
                                              work_dir=Path(runtime.cwd) / f"to_{space}")
            moved = {desc: apply_to_template(nib.Nifti1Image(mask.astype(np.uint8), labels.affine), template,
                                             transforms)
                     for desc, mask in masks.items()}
            share = None if template_mask is None else lesion_share_inside_brain(
                np.asarray(moved["lesions"].dataobj), np.asarray(template_mask.dataobj))
            warning = normalisation_warning(space, share)
            if warning is not None:
                warnings.append(warning)  # the sink logs it beside the file it concerns
            for desc, image in moved.items():
                maps.append({"space": space, "desc": desc, "lesion_share_inside_brain": share,
                             "path": _save(image, runtime.cwd, f"{space}_{desc}_mask.nii.gz")})
        self._results.update(maps=maps, warnings=warnings)
        return runtime
