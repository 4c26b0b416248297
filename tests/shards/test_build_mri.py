"""MRI shards: subjects grouped from the folder layout or a CSV, sequences stored intact, a
missing sequence kept, unreadable volumes and mismatched grids reported."""

import gzip
import json
import shutil

import pytest

from conftest import DATA, load_script, read_shards
from modalmae.shards import build_shards, mri

ICBM = DATA / "mri" / "icbm152"


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz", ("BraTS20_Training_001", "flair")),
        ("BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz", ("BraTS-GLI-00000-000", "t1n")),
        ("train/sub01_t2.nii", ("train/sub01", "t2")),
        ("icbm152/gm.nii.gz", ("icbm152", "gm")),
        ("anatomical.nii", ("anatomical", "t1")),
    ],
)
def test_layouts(relpath, expected):
    assert mri.split_name(relpath, "t1") == expected


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    (root / "icbm").mkdir(parents=True)
    for name in ("t1", "gm", "wm"):
        shutil.copy(ICBM / f"{name}.nii.gz", root / "icbm" / f"icbm_{name}.nii.gz")
    (root / "nogm").mkdir()
    shutil.copy(ICBM / "t1.nii.gz", root / "nogm" / "nogm_t1.nii.gz")
    shutil.copy(ICBM / "wm.nii.gz", root / "nogm" / "nogm_wm.nii.gz")
    (root / "broken").mkdir()  # its gm is truncated: the subject stays, without gm
    shutil.copy(ICBM / "t1.nii.gz", root / "broken" / "broken_t1.nii.gz")
    (root / "broken" / "broken_gm.nii.gz").write_bytes((ICBM / "gm.nii.gz").read_bytes()[:3000])
    (root / "mixed").mkdir()  # two grids: skipped
    shutil.copy(ICBM / "t1.nii.gz", root / "mixed" / "mixed_t1.nii.gz")
    shutil.copy(DATA / "mri" / "anatomical.nii", root / "mixed" / "mixed_t2.nii")
    (root / "notes.txt").write_text("not a volume")
    return root


def test_subjects_sequences_and_reasons(raw, tmp_path):
    manifest = build_shards(builder=mri.BUILDER, input_dir=raw, output_dir=tmp_path / "out", workers=2, progress=False)
    assert manifest["num_samples"] == 3 and manifest["ignored_files"] == 1
    (skip,) = manifest["skipped"]
    assert skip["path"] == "mixed" and "cannot be brought to one grid: they cover different boxes" in skip["reason"]
    (warning,) = manifest["warnings"]
    assert warning["path"] == "broken" and "broken/broken_gm.nii.gz" in warning["warning"]
    samples, keys = read_shards(tmp_path / "out")
    by_subject = {json.loads(s["json"])["subject"]: s for s in samples.values()}
    icbm = by_subject["icbm"]
    meta = json.loads(icbm["json"])
    assert meta["present"] == ["gm", "t1", "wm"]
    assert meta["sequences"]["t1"]["shape"] == [66, 78, 63] and meta["sequences"]["t1"]["spacing"] == [3.0, 3.0, 3.0]
    assert meta["sequences"]["t1"]["orientation"] == "RAS" and meta["sequences"]["t1"]["compressed"]
    assert icbm["t1.nii.gz"] == (ICBM / "t1.nii.gz").read_bytes()  # stored intact, not re-gzipped
    assert gzip.decompress(icbm["gm.nii.gz"])[:4] == (348).to_bytes(4, "little")  # sizeof_hdr of a NIfTI-1 header
    assert json.loads(by_subject["nogm"]["json"])["present"] == ["t1", "wm"]
    assert json.loads(by_subject["broken"]["json"])["present"] == ["t1"]


def test_subjects_from_csv_and_the_cli(raw, tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text("subject,sequence,path\npatient-1,flair,icbm/icbm_t1.nii.gz\npatient-1,t2,icbm/icbm_wm.nii.gz\n")
    build = load_script("pipelines/build_shards.py")
    out = tmp_path / "csv"
    assert build.main(["--modality", "mri", "--input", str(raw), "--output", str(out), "--subjects-csv", str(table), "--quiet", "--workers", "1"]) == 0
    samples, _ = read_shards(out)
    (sample,) = samples.values()
    assert sorted(k for k in sample if k.endswith(".nii.gz")) == ["flair.nii.gz", "t2.nii.gz"]
    table.write_text("patient-1,flair\n")
    with pytest.raises(SystemExit):  # a malformed CSV is refused before any work
        build.main(["--modality", "mri", "--input", str(raw), "--output", str(out), "--subjects-csv", str(table)])


def write_dicom_series(img, folder, *, series_uid="1.2.3.4", shuffle=True):
    """Axial single-frame DICOM slices (LPS, uint16) of a NIfTI volume, as a scanner writes them."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    data, affine = np.asanyarray(img.dataobj).astype(np.uint16), img.affine
    lps = np.diag([-1.0, -1.0, 1.0])
    row_dir, col_dir = (lps @ affine[:3, a] / np.linalg.norm(affine[:3, a]) for a in (0, 1))
    folder.mkdir(parents=True)
    order = list(range(data.shape[2]))
    if shuffle:
        order = order[1::2] + order[::2]  # files are not in slice order on disk
    for n, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, series_uid
        ds.Modality = "MR"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.PixelSpacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in lps @ (affine @ [0, 0, k, 1])[:3]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)


def test_dicom_series_become_sequences(tmp_path):
    pytest.importorskip("pydicom")
    import nibabel as nib
    import numpy as np

    from modalmae.data.mri import decode_sequences

    t1 = nib.load(ICBM / "t1.nii.gz")
    raw = tmp_path / "raw"
    write_dicom_series(t1, raw / "patient1" / "t1")
    shutil.copy(ICBM / "wm.nii.gz", raw / "patient1" / "wm.nii.gz")  # DICOM and NIfTI sequences mix
    write_dicom_series(t1, raw / "patient2" / "t1", series_uid="1.2.3.4")
    write_dicom_series(t1, raw / "patient2" / "t1_extra", series_uid="9.9.9")
    for extra in (raw / "patient2" / "t1_extra").iterdir():
        extra.rename(raw / "patient2" / "t1" / f"x{extra.name}")  # two series in one folder
    (raw / "patient2" / "t1_extra").rmdir()
    shutil.copy(ICBM / "gm.nii.gz", raw / "patient2" / "gm.nii.gz")
    manifest = build_shards(builder=mri.BUILDER, input_dir=raw, output_dir=tmp_path / "out", workers=1, progress=False)
    assert manifest["num_samples"] == 2 and not manifest["skipped"]
    (warning,) = manifest["warnings"]
    assert warning["path"] == "patient2" and "2 series in one folder" in warning["warning"]
    samples, _ = read_shards(tmp_path / "out")
    by_subject = {json.loads(s["json"])["subject"]: s for s in samples.values()}
    record = json.loads(by_subject["patient1"]["json"])["sequences"]["t1"]
    assert record["converted_from"] == "dicom" and record["shape"] == [66, 78, 63] and record["spacing"] == [3.0, 3.0, 3.0]
    (array, zooms), (expected, _) = decode_sequences(by_subject["patient1"])["t1"], decode_sequences({"t1.nii.gz": (ICBM / "t1.nii.gz").read_bytes()})["t1"]
    assert zooms == (3.0, 3.0, 3.0) and np.array_equal(array, expected * 2 - 10)  # same voxels, same place, rescaled


def test_a_dicom_series_over_max_voxels_is_refused_before_its_pixels_are_decoded(tmp_path):
    pytest.importorskip("pydicom")
    import nibabel as nib

    write_dicom_series(nib.load(ICBM / "t1.nii.gz"), tmp_path / "raw" / "patient" / "t1")
    manifest = build_shards(
        builder=mri.BUILDER, input_dir=tmp_path / "raw", output_dir=tmp_path / "out", options=mri.Options(max_voxels=300_000),
        workers=1, progress=False,
    )
    (skip,) = manifest["skipped"]
    assert skip["reason"] == "no readable volume: patient/t1: VolumeTooLarge: too large: 63 slices of 324324 voxels in all, more than --max-voxels 300000"


def test_two_files_for_one_sequence(tmp_path):
    raw = tmp_path / "raw" / "sub"
    raw.mkdir(parents=True)
    shutil.copy(ICBM / "t1.nii.gz", raw / "sub_t1.nii.gz")
    shutil.copy(DATA / "mri" / "anatomical.nii", raw / "t1.nii")  # also "sequence t1 of subject sub"
    manifest = build_shards(builder=mri.BUILDER, input_dir=raw.parent, output_dir=tmp_path / "out", workers=1, progress=False)
    (warning,) = manifest["warnings"]
    assert "sub/t1.nii: sub/sub_t1.nii.gz already gives sequence 't1'" in warning["warning"]
    assert manifest["num_samples"] == 1


def test_a_sequence_name_readers_would_not_take_is_left_out(tmp_path):
    raw = tmp_path / "raw" / "sub"
    raw.mkdir(parents=True)
    shutil.copy(ICBM / "t1.nii.gz", raw / "sub_t1.nii.gz")
    shutil.copy(ICBM / "gm.nii.gz", raw / "sub_.nii.gz")  # an empty sequence name
    shutil.copy(ICBM / "wm.nii.gz", raw / "sub_w\\m.nii.gz")  # a backslash
    manifest = build_shards(builder=mri.BUILDER, input_dir=raw.parent, output_dir=tmp_path / "out", workers=1, progress=False)
    (warning,) = manifest["warnings"]
    assert warning["warning"].count("is empty or has a '.', '/', '\\' or control character") == 2
    samples, _ = read_shards(tmp_path / "out")
    (sample,) = samples.values()
    assert sorted(k for k in sample if k != "json") == ["t1.nii.gz"]
