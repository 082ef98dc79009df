"""Input validation: every bad input gives InputError with one line naming the file."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from bids_rim.preproc.checks import (
    InputError,
    check_finite,
    check_lesion_mask,
    check_not_constant,
    check_overlap,
    check_qsm_units,
    ensure_3d,
    load_nifti,
    thick_slice_warning,
)
from tests.test_preproc_phantom import Phantom, grid_affine, qsm_grid


def _one_line_naming(error: pytest.ExceptionInfo, name: str) -> None:
    message = str(error.value)
    assert "\n" not in message and name in message


@pytest.fixture
def qsm_image():
    affine, shape = qsm_grid()
    return Phantom(noise_sd=0.05, seed=0).qsm(affine, shape)


def test_load_nifti_reads_nii_and_nii_gz(tmp_path, qsm_image):
    for name in ("sub-01_Chimap.nii", "sub-01_Chimap.nii.gz"):
        path = tmp_path / name
        nib.save(qsm_image, path)
        loaded = load_nifti(path)
        assert np.array_equal(np.asarray(loaded.dataobj), np.asarray(qsm_image.dataobj))
        assert loaded.get_filename() == str(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "sub-01_FLAIR.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as error:
        load_nifti(path)
    _one_line_naming(error, str(path))


def test_truncated_gzip(tmp_path, qsm_image):
    path = tmp_path / "sub-01_FLAIR.nii.gz"
    nib.save(qsm_image, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as error:
        load_nifti(path)
    _one_line_naming(error, str(path))


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "sub-01_FLAIR.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(InputError) as error:
        load_nifti(path)
    _one_line_naming(error, str(path))
    with pytest.raises(InputError, match="not found"):
        load_nifti(tmp_path / "absent.nii.gz")


def test_4d_series_rejected_singleton_accepted(qsm_image):
    data = np.asarray(qsm_image.dataobj)
    series = nib.Nifti1Image(np.stack([data, data], axis=-1), qsm_image.affine)
    with pytest.raises(InputError, match="4D") as error:
        ensure_3d(series, "sub-01_Chimap.nii.gz")
    _one_line_naming(error, "sub-01_Chimap.nii.gz")
    single = ensure_3d(nib.Nifti1Image(data[..., None], qsm_image.affine), "x.nii.gz")
    assert single.shape == data.shape


def test_nan_and_inf_voxels(qsm_image):
    data = np.asarray(qsm_image.dataobj).copy()
    check_finite(qsm_image, "ok.nii.gz")
    data[3, 4, 5] = np.nan
    data[6, 7, 8] = np.inf
    with pytest.raises(InputError, match="2 voxels are NaN or Inf") as error:
        check_finite(nib.Nifti1Image(data, qsm_image.affine), "sub-01_Chimap.nii.gz")
    _one_line_naming(error, "sub-01_Chimap.nii.gz")


def test_qsm_units_ppm_accepted_hz_and_radians_rejected(qsm_image):
    check_qsm_units(qsm_image, "ppm.nii.gz")
    data = np.asarray(qsm_image.dataobj)
    as_hz = nib.Nifti1Image(data * 128.0, qsm_image.affine)  # 1 ppm = 128 Hz at 3 T
    with pytest.raises(InputError, match="Hz or radians") as error:
        check_qsm_units(as_hz, "sub-01_Chimap.nii.gz")
    _one_line_naming(error, "sub-01_Chimap.nii.gz")
    phase = np.where(data != 0, np.random.default_rng(0).uniform(-np.pi, np.pi, data.shape), 0.0)
    with pytest.raises(InputError, match="Hz or radians"):
        check_qsm_units(nib.Nifti1Image(phase, qsm_image.affine), "phase.nii.gz")


def test_qsm_units_hint_names_ppb_only_when_the_values_fit_ppb(qsm_image):
    data = np.asarray(qsm_image.dataobj)
    # The phantom spans 0.091 ppm (1st-99th percentile): 91 in ppb, 11.7 in Hz at 3 T, 6.2 in radians.
    as_ppb = nib.Nifti1Image(data * 1000.0, qsm_image.affine)
    with pytest.raises(InputError) as error:
        check_qsm_units(as_ppb, "sub-01_Chimap.nii.gz")
    _one_line_naming(error, "sub-01_Chimap.nii.gz")
    assert str(error.value).endswith("— is it in ppb (then divide it by 1000), Hz or radians?")
    assert "span 91.1 between" in str(error.value)
    as_hz = nib.Nifti1Image(data * 128.0, qsm_image.affine)
    with pytest.raises(InputError) as error:
        check_qsm_units(as_hz, "sub-01_Chimap.nii.gz")
    assert str(error.value).endswith("— is it in Hz or radians?") and "ppb" not in str(error.value)
    phase = np.where(data != 0, np.random.default_rng(0).uniform(-np.pi, np.pi, data.shape), 0.0)
    with pytest.raises(InputError) as error:
        check_qsm_units(nib.Nifti1Image(phase, qsm_image.affine), "phase.nii.gz")
    assert "ppb" not in str(error.value)
    # A range too wide even for ppb (here 10 ppm once divided by 1000) gets no ppb hint either.
    wide = nib.Nifti1Image(data * (10_000.0 / 0.0911), qsm_image.affine)
    with pytest.raises(InputError) as error:
        check_qsm_units(wide, "wide.nii.gz")
    assert "ppb" not in str(error.value)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
@pytest.mark.parametrize("value", [0, 100])
def test_constant_image_rejected(dtype, value):
    affine, shape = qsm_grid()
    constant = nib.Nifti1Image(np.full(shape, value, dtype), affine)
    with pytest.raises(InputError) as error:
        check_not_constant(constant, "sub-01_FLAIR.nii.gz", "FLAIR")
    _one_line_naming(error, "sub-01_FLAIR.nii.gz")
    assert str(error.value) == (f"sub-01_FLAIR.nii.gz: the FLAIR image is constant (every voxel {value}); "
                                "nothing to register")


def test_constant_check_looks_at_finite_voxels_only_and_accepts_real_images(qsm_image):
    affine, shape = qsm_grid()
    data = np.full(shape, 100.0, np.float32)
    data[0, 0, 0], data[1, 0, 0] = np.nan, np.inf
    with pytest.raises(InputError, match=r"the GRE magnitude image is constant \(every voxel 100\)"):
        check_not_constant(nib.Nifti1Image(data, affine), "mag.nii.gz", "GRE magnitude")
    with pytest.raises(InputError, match="no finite voxel"):
        check_not_constant(nib.Nifti1Image(np.full(shape, np.nan, np.float32), affine), "nan.nii.gz", "FLAIR")
    data[2, 0, 0] = 100.5  # one voxel differs: not constant
    check_not_constant(nib.Nifti1Image(data, affine), "mag.nii.gz", "GRE magnitude")
    check_not_constant(qsm_image, "qsm.nii.gz", "QSM")
    check_not_constant(Phantom().flair(affine, shape), "flair.nii.gz", "FLAIR")


def test_images_that_do_not_overlap(qsm_image):
    shape = (40, 40, 30)
    overlapping = nib.Nifti1Image(np.ones(shape, np.float32), grid_affine(shape, 2.5, centre_mm=(5.0, 0.0, 0.0)))
    check_overlap(qsm_image, overlapping, "q.nii.gz", "f.nii.gz")
    elsewhere = nib.Nifti1Image(np.ones(shape, np.float32), grid_affine(shape, 2.5, centre_mm=(400.0, 0.0, 0.0)))
    with pytest.raises(InputError, match="do not overlap") as error:
        check_overlap(qsm_image, elsewhere, "sub-01_Chimap.nii.gz", "sub-01_FLAIR.nii.gz")
    _one_line_naming(error, "sub-01_FLAIR.nii.gz")


def test_lesion_mask_problems(qsm_image):
    affine, shape = qsm_grid()
    good = Phantom().lesion_mask(affine, shape)
    assert check_lesion_mask(good, qsm_image, "mask.nii.gz") is None
    graded = nib.Nifti1Image(np.asarray(good.dataobj) * 0.7, affine)
    with pytest.raises(InputError, match="not binary"):
        check_lesion_mask(graded, qsm_image, "sub-01_mask.nii.gz")
    wrong_shape = nib.Nifti1Image(np.asarray(good.dataobj)[:-2], affine)
    with pytest.raises(InputError, match="does not match"):
        check_lesion_mask(wrong_shape, qsm_image, "sub-01_mask.nii.gz")
    shifted = nib.Nifti1Image(np.asarray(good.dataobj), grid_affine(shape, 2.0, centre_mm=(3.0, 0.0, 0.0)))
    with pytest.raises(InputError, match="affine"):
        check_lesion_mask(shifted, qsm_image, "sub-01_mask.nii.gz")


def test_empty_lesion_mask_gives_a_warning_not_an_error(qsm_image):
    """A control or a patient without lesions: the session goes on with 0 lesions."""
    affine, shape = qsm_grid()
    for dtype in (np.uint8, np.float32):
        empty = nib.Nifti1Image(np.zeros(shape, dtype), affine)
        warning = check_lesion_mask(empty, qsm_image, "sub-01_mask.nii.gz")
        assert warning == ("sub-01_mask.nii.gz: no lesion in this mask (no voxel is 1): "
                           "the session will have 0 lesions")
    # An empty mask must still be on the right grid.
    with pytest.raises(InputError, match="does not match"):
        check_lesion_mask(nib.Nifti1Image(np.zeros(shape[:2] + (40,), np.uint8), affine), qsm_image, "m.nii.gz")


def test_thick_slice_flair_gives_a_warning_not_an_error():
    shape = (96, 96, 30)
    thin = nib.Nifti1Image(np.ones(shape, np.float32), grid_affine(shape, (1.0, 1.0, 1.0)))
    thick = nib.Nifti1Image(np.ones(shape, np.float32), grid_affine(shape, (0.9, 0.9, 5.0)))
    assert thick_slice_warning(thin, "thin.nii.gz") is None
    warning = thick_slice_warning(thick, "sub-01_FLAIR.nii.gz")
    assert "sub-01_FLAIR.nii.gz" in warning and "5.0 mm slices" in warning
