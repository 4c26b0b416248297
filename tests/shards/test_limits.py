"""The builders refuse what would poison a model or exhaust memory, with the reason and the flag
that raises the limit: non-finite values where they are made, sizes from headers before reading."""

import gzip
import io
import json
import shutil
import struct
import time
import zipfile

import av
import nibabel as nib
import numpy as np
import pytest
import soundfile as sf

from conftest import AUDIO, DATA, huge_video, load_script, moving_bar, read_shards
from modalmae.data import mri as mri_loader
from modalmae.data import points as points_loader
from modalmae.data import video as video_loader
from modalmae.formats import nifti
from modalmae.shards import Sample, Skip, audio, mri, points, video

build = load_script("pipelines/build_shards.py")
SPEECH = AUDIO / "arctic_a0007.wav"
ICBM = DATA / "mri" / "icbm152"


def test_builder_and_loader_defaults_agree():
    decoder = video_loader.VideoDecoder()
    assert video.Options().max_frame_pixels == decoder.max_pixels == 3840 * 2160
    assert video.Options().max_frames == decoder.max_frames
    assert points.Options().max_points == points_loader.PointDecoder().max_points == 10_000_000
    loader = mri_loader.MRIDecoder(sequences=["t1"])
    assert mri.Options().max_voxels == loader.max_voxels == 2**27 and mri.Options().max_nifti_bytes == loader.max_bytes
    args = build.make_parser().parse_args(["--modality", "video", "--input", ".", "--max-frame-pixels", "5", "--max-frames", "6", "--max-points", "7", "--max-voxels", "8", "--max-nifti-bytes", "9"])
    assert (args.max_frame_pixels, args.max_frames, args.max_points, args.max_voxels, args.max_nifti_bytes) == (5, 6, 7, 8, 9)
    assert args.max_pixels == 178_956_970  # the image builder's flag keeps its own default


# ----------------------------------------------------------------------------- audio


def float_wav(path, *bad):
    """Real speech as a 32-bit float WAV with ``bad`` values written from sample 1000 on."""
    wave, sr = sf.read(SPEECH, dtype="float32")
    wave[1000 : 1000 + len(bad)] = bad
    sf.write(path, wave, sr, subtype="FLOAT")
    return path


@pytest.mark.parametrize("transcode", [False, True])
def test_a_nan_sample_skips_the_file(tmp_path, transcode):
    options = audio.Options(transcode=transcode)
    skip = audio.prepare(float_wav(tmp_path / "nan.wav", np.nan), "nan.wav", options)
    assert skip == Skip("nan.wav", "1 sample(s) are NaN or inf")  # counted before resampling spreads it
    skip = audio.prepare(float_wav(tmp_path / "inf.wav", np.inf, -np.inf, np.nan), "inf.wav", options)
    assert skip.reason == "3 sample(s) are NaN or inf"
    assert isinstance(audio.prepare(float_wav(tmp_path / "ok.wav"), "ok.wav", options), Sample)


def test_a_video_keeps_its_picture_without_a_nan_audio_track(tmp_path):
    wave = np.sin(np.arange(16000, dtype=np.float32) / 10) * 0.3
    wave[100] = np.nan
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        picture = out.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        track = out.add_stream("pcm_f32le", rate=16000)  # float samples, stored as they are
        track.layout = "mono"
        for i in range(5):
            out.mux(picture.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")))
        out.mux(picture.encode())
        frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        out.mux(track.encode(frame))
        out.mux(track.encode())
    sample = video.prepare(path, "clip.mkv", video.Options(extract_audio=True))
    assert set(sample.files) == {"mkv"} and "audio" not in sample.meta
    assert sample.warning == "audio track left out: 1 sample(s) are NaN or inf"
    assert audio.prepare(path, "clip.mkv", audio.Options()).reason == "1 sample(s) are NaN or inf"


# ----------------------------------------------------------------------------- points


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_header_only(shape, descr="<f4") -> bytes:
    """An .npy header declaring ``shape`` followed by a few bytes: what a crafted file costs."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(48)


def test_non_finite_values_are_checked_in_every_stored_column_after_the_float32_cast(tmp_path):
    cloud = np.random.default_rng(0).normal(size=(100, 3))
    cloud[7, 0] = 1e39  # finite as float64, inf as the float32 that is stored
    np.save(tmp_path / "overflow.npy", cloud)
    assert points.prepare(tmp_path / "overflow.npy", "overflow.npy", points.Options()).reason == "1 point(s) with NaN or inf (as float32) in x"

    kitten = (DATA / "points" / "kitten.xyz").read_text().splitlines()  # x y z nx ny nz
    kitten[3] = " ".join(kitten[3].split()[:3] + ["nan", "0", "1"])
    (tmp_path / "normals.xyz").write_text("\n".join(kitten))
    assert points.prepare(tmp_path / "normals.xyz", "normals.xyz", points.Options()).reason == "1 point(s) with NaN or inf (as float32) in nx"

    rows = "\n".join(f"{x} {y} {z} {'nan' if i == 2 else 0.5}" for i, (x, y, z) in enumerate(cloud[50:]))
    (tmp_path / "scan.pcd").write_text(
        "VERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\nWIDTH 50\nHEIGHT 1\nPOINTS 50\nDATA ascii\n" + rows
    )
    assert points.prepare(tmp_path / "scan.pcd", "scan.pcd", points.Options()).reason == "1 point(s) with NaN or inf (as float32) in intensity"


def crafted_clouds(root):
    """Small files declaring far more than they hold (or than a cloud should)."""
    (root / "huge.npy").write_bytes(npy_header_only((10**10, 3)))
    (root / "huge.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 20000000\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n1 1 1\n")
    (root / "faces.ply").write_bytes(
        b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        b"element face 30000000\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    )
    (root / "huge.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 1\nHEIGHT 1\nPOINTS 1000000000\nDATA binary\n" + bytes(12))
    with zipfile.ZipFile(root / "huge.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xyz.npy", npy_header_only((10**9, 3)))
    with zipfile.ZipFile(root / "wide.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xyz.npy", npy_header_only((1000, 10**6)))
    with zipfile.ZipFile(root / "strings.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xyz.npy", npy_header_only((1000, 3), descr="<U100000000"))
    (root / "short.npy").write_bytes(npy_bytes(np.ones((100, 3), np.float32))[:-12])


def test_declared_sizes_are_refused_from_the_header(tmp_path):
    crafted_clouds(tmp_path)
    shutil.copy(DATA / "points" / "kitten.xyz", tmp_path / "kitten.xyz")  # 5210 points
    out = tmp_path / "out"
    started = time.perf_counter()
    assert build.main(["--modality", "points", "--input", str(tmp_path), "--output", str(out), "--quiet", "--workers", "1", "--max-points", "5000"]) == 1
    assert time.perf_counter() - started < 5  # nothing was allocated at its declared size
    reasons = {s["path"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]}
    assert reasons == {
        "huge.npy": "too large: 10000000000 points, more than --max-points 5000",
        "huge.ply": "too large: 20000000 vertex elements in the PLY header, more than --max-points 5000",
        "faces.ply": "too large: 30000000 face elements in the PLY header, more than --max-points 5000",
        "huge.pcd": "too large: 1000000000 points, more than --max-points 5000",
        "huge.npz": "too large: 1000000000 points, more than --max-points 5000",
        "wide.npz": "1000000 columns per point, more than a point cloud's 32 (x y z and per-point values)",
        "strings.npz": "not a numeric array (dtype <U100000000)",
        "short.npy": "truncated: the .npy header declares 1200 bytes of data, only 1188 follow it",
        "kitten.xyz": "too large: 5210 points, more than --max-points 5000",  # no header: counted once read
    }
    kept = points.prepare(tmp_path / "kitten.xyz", "kitten.xyz", points.Options())
    assert kept.meta["num_points"] == 5210  # the default limit is far above a real scan


# ----------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def huge_video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "huge.mov"
    path.write_bytes(huge_video())
    return path



def test_frame_size_is_refused_from_the_stream_header(huge_video_file):
    skip = video.prepare(huge_video_file, "huge.mov", video.Options())
    assert skip == Skip("huge.mov", "too large: frames of 8192 x 8192 = 67108864 pixels, more than --max-frame-pixels 8294400")
    sample = video.prepare(huge_video_file, "huge.mov", video.Options(max_frame_pixels=8192 * 8192))  # the flag raises it
    assert (sample.meta["width"], sample.meta["height"], sample.meta["frames"]) == (8192, 8192, 2)


def test_frame_count_is_refused_from_the_header_or_while_decoding(tmp_path):
    options = video.Options(max_frames=10)
    mp4 = moving_bar(tmp_path / "bar.mp4", "mp4")
    assert video.prepare(mp4, "bar.mp4", options).reason == "too long: the header declares 12 frames, more than --max-frames 10"
    ts = moving_bar(tmp_path / "bar.ts", "mpegts")  # MPEG-TS states no frame count
    assert video.prepare(ts, "bar.ts", options).reason == "too long: more than --max-frames 10 frames decode"
    assert video.prepare(ts, "bar.ts", video.Options(max_frames=12)).meta["frames"] == 12


# ----------------------------------------------------------------------------- MRI


def subject(root, name, img):
    """``root/name/t1.nii.gz``: subject ``name``, sequence t1."""
    (root / name).mkdir(parents=True)
    nib.save(img, root / name / "t1.nii.gz")


def test_mri_limits_name_the_file_and_the_flag(tmp_path):
    t1 = nib.load(ICBM / "t1.nii.gz")  # 66 x 78 x 63
    raw = tmp_path / "raw"
    subject(raw, "head", t1)
    out = tmp_path / "out"
    assert build.main(["--modality", "mri", "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1", "--max-voxels", "300000"]) == 1
    (skip,) = json.loads((out / "manifest.json").read_text())["skipped"]
    assert skip == {"path": "head", "reason": "no readable volume: head/t1.nii.gz: VolumeTooLarge: too large: 66 x 78 x 63 = 324324 voxels, more than --max-voxels 300000"}
    data = (raw / "head" / "t1.nii.gz").read_bytes()
    assert mri.describe(data)[0]["shape"] == [66, 78, 63]
    size = 352 + 66 * 78 * 63  # header and uint8 voxels
    with pytest.raises(nifti.VolumeTooLarge, match=rf"declares {size} bytes .* more than --max-nifti-bytes {size - 1}$"):
        mri.describe(data, max_bytes=size - 1)


def test_voxels_are_checked_as_the_loader_will_read_them(tmp_path):
    t1 = nib.load(ICBM / "t1.nii.gz")
    data = np.asanyarray(t1.dataobj).astype(np.int16)
    scaled = bytearray(nib.Nifti1Image(data, t1.affine).to_bytes())
    struct.pack_into("<ff", scaled, 112, 1e38, 0.0)  # scl_slope, scl_inter: finite in float64, not in float32
    with_nan = np.asanyarray(t1.dataobj).astype(np.float32)
    with_nan[10, 10, 10] = np.nan
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    (raw / "a" / "t1.nii").write_bytes(scaled)
    nib.save(nib.Nifti1Image(with_nan, t1.affine), raw / "a" / "t2.nii.gz")
    nib.save(t1, raw / "a" / "pd.nii.gz")
    sample = mri.prepare(*mri.find_jobs(raw, mri.Options())[0][0], mri.Options())
    assert sample.meta["present"] == ["pd"]
    overflowing = int((np.abs(data.astype(np.float64) * 1e38) > np.finfo(np.float32).max).sum())
    assert overflowing > 0 and f"a/t1.nii: ValueError: {overflowing} voxel(s) are NaN or inf (as float32)" in sample.warning
    assert "a/t2.nii.gz: ValueError: 1 voxel(s) are NaN or inf (as float32)" in sample.warning


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("slope", [1.0, -3.5, 1e30, 1e38])
def test_the_builders_voxel_check_refuses_exactly_what_the_loader_would(dtype, slope):
    # check_float32_voxels skips the conversion only where it can prove every voxel finite; it
    # must refuse exactly the volumes float32_voxels (the loader's) refuses.
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(np.float32)
    data = np.array([[[0, 1], [int(info.max) if np.dtype(dtype).kind in "iu" else 3.0e38, 2]]], dtype=dtype)
    image = nib.Nifti1Image(data, np.eye(4), dtype=dtype)
    image.header.set_slope_inter(slope, 0.0)
    image = nib.Nifti1Image.from_bytes(image.to_bytes())

    def outcome(check):
        try:
            check(image)
            return None
        except ValueError as e:
            return str(e)

    assert outcome(nifti.check_float32_voxels) == outcome(nifti.float32_voxels)


def test_nifti2_volumes_are_read(tmp_path):
    t1 = nib.load(ICBM / "t1.nii.gz")
    raw = tmp_path / "raw"
    subject(raw, "head", nib.Nifti2Image(np.asanyarray(t1.dataobj), t1.affine))
    out = tmp_path / "out"
    assert build.main(["--modality", "mri", "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1"]) == 0
    (sample,) = read_shards(out)[0].values()
    assert gzip.decompress(sample["t1.nii.gz"])[:4] == struct.pack("<i", 540)  # stored as it was
    assert json.loads(sample["json"])["sequences"]["t1"]["shape"] == [66, 78, 63]
    volume, zooms = mri_loader.decode_sequences(sample)["t1"]
    assert zooms == (3.0, 3.0, 3.0) and np.array_equal(volume, np.asarray(t1.dataobj, dtype=np.float32))
