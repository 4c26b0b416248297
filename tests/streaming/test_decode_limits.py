"""The loaders refuse what the builder would have: non-finite values where they are made from
bytes, and sizes from headers before allocating (shards may come from anywhere)."""

import gzip
import io
import random
import struct
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import AUDIO, DATA, huge_video
from modalmae.data import video as video_loader
from modalmae.data.audio import read_window
from modalmae.data.mri import MRIDecoder
from modalmae.data.points import PointDecoder, load_cloud
from modalmae.data.video import VideoDecoder, decode_pyav, make_clip
from hypothesis import given, settings
from hypothesis import strategies as st

from modalmae.formats.nifti import MAX_VOXELS, VolumeTooLarge, check_nifti, inflate, inflated_size, load_nifti

ICBM = DATA / "mri" / "icbm152"
CLIP = (DATA / "video" / "carphone_pristine.mp4").read_bytes()  # 176 x 144, 120 frames, one keyframe


def peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(what ``fn`` returned or raised, the most memory Python and numpy held meanwhile)."""
    tracemalloc.start()
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the refusal is the result
        result = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


# ----------------------------------------------------------------------------- NIfTI


def nifti_header(shape, dtype=np.uint8) -> bytes:
    """The 352 bytes before the voxels of a NIfTI-1 file declaring ``shape`` of ``dtype``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    return header.binaryblock + bytes(4)


ZEROS_MIB = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)  # a gzip member: 1 kB in, 1 MiB out


def gzip_bomb(header: bytes, mebibytes: int) -> bytes:
    """``header`` then ``mebibytes`` MiB of zeros, gzipped as members of 1 MiB each, so the bomb
    is built without ever holding what it inflates to."""
    return gzip.compress(header, mtime=0) + ZEROS_MIB * mebibytes


def test_a_gzip_bomb_is_refused_from_its_header_within_bounded_memory():
    bomb = gzip_bomb(nifti_header((1024, 1024, 1024)), 1024)  # inflates to 1 GiB + 352 bytes
    assert len(bomb) < 1.1 * 2**20 and len(zlib.decompress(ZEROS_MIB, wbits=31)) == 2**20
    started = time.perf_counter()
    error, peak = peak_bytes(load_nifti, bomb)
    assert isinstance(error, VolumeTooLarge)
    assert str(error) == f"too large: 1024 x 1024 x 1024 = {2**30} voxels, more than max_voxels {MAX_VOXELS}"
    assert peak < 2**20 and time.perf_counter() - started < 0.5  # gzip.decompress would hold 1 GiB
    # Allowed as many voxels, the byte bound refuses it, again before inflating the voxels.
    error, peak = peak_bytes(load_nifti, bomb, max_voxels=2**30, max_bytes=2**29)
    assert isinstance(error, VolumeTooLarge) and str(error).endswith(f"declares {2**30 + 352} bytes (header, extensions, voxels), more than max_bytes {2**29}")
    assert peak < 2**20


def test_only_the_declared_voxels_are_ever_inflated():
    """A small volume followed by 1 GiB of zeros: read in a few milliseconds, the rest never inflated."""
    volume = np.arange(16**3, dtype=np.uint8).reshape(16, 16, 16)
    bomb = gzip_bomb(nifti_header((16, 16, 16)) + volume.tobytes(order="F"), 1024)
    img, peak = peak_bytes(load_nifti, bomb)
    assert np.array_equal(np.asanyarray(img.dataobj), volume) and peak < 2**20
    assert len(inflate(bomb, 10**6)) == 10**6  # and the inflater stops where asked, across members


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=3),
    kind=st.sampled_from(["zeros", "random", "mixed"]),
    cut=st.integers(0, 400_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_counting_inflates_what_inflate_gives(sizes, kind, cut, seed):
    """``inflated_size`` feeds zlib the same slices as ``inflate`` but takes its output 64 KiB at
    a time: members of zeros (a 64 KiB slice holds megabytes), random bytes (no compression),
    several members, cut anywhere."""
    rng = np.random.default_rng(seed)
    raw = [bytes(n) if kind == "zeros" or (kind == "mixed" and i % 2) else rng.bytes(n) for i, n in enumerate(sizes)]
    data = b"".join(gzip.compress(r, mtime=0) for r in raw)
    for size in (cut, sum(sizes), 2**31):
        assert inflated_size(data, size) == len(inflate(data, size)) == min(size, sum(sizes))


def test_checking_a_gzipped_integer_volume_never_holds_its_voxels():
    """The builder's full check inflates every voxel of an integer volume (proved finite by its
    type) to count it, never assembling them: the same header and grid as ``load_nifti``, the
    same refusals of a cut or corrupt stream, in memory that does not grow with the volume."""
    t1 = np.asanyarray(nib.load(ICBM / "t1.nii.gz").dataobj)  # 66 x 78 x 63 uint8
    volume = np.tile(t1, (2, 2, 4))  # 132 x 156 x 252: 5.2 MB of voxels
    data = gzip.compress(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 1.0, 1.0])).to_bytes(), mtime=0)
    img, peak = peak_bytes(check_nifti, data)
    full, full_peak = peak_bytes(load_nifti, data)
    assert img.shape == full.shape == volume.shape and np.array_equal(img.affine, full.affine) and img.header == full.header
    assert peak < 1_000_000 < volume.nbytes < full_peak
    cut = rf"^truncated: the header declares {352 + volume.nbytes} bytes, the file holds \d+$"
    for check in (check_nifti, load_nifti):
        with pytest.raises(ValueError, match=cut):
            check(data[: len(data) // 2])

    def outcome(check, bad):
        try:
            check(bad)
            return "read"
        except ValueError as e:
            return str(e)

    # Damaged deflate data (bytes inverted here and there): refused alike, or read alike.
    damaged = [data[:at] + bytes(b ^ 0xFF for b in data[at : at + 64]) + data[at + 64 :] for at in range(1000, len(data) - 64, 9000)]
    outcomes = [outcome(check_nifti, bad) for bad in damaged]
    assert outcomes == [outcome(load_nifti, bad) for bad in damaged]
    assert any(o.startswith("corrupt gzip stream") for o in outcomes)


def test_truncated_and_foreign_files_say_what_they_are():
    data = (ICBM / "t1.nii.gz").read_bytes()
    with pytest.raises(ValueError, match=r"^truncated: the header declares 324676 bytes, the file holds \d+$"):
        load_nifti(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"^not a NIfTI file: sizeof_hdr is 1179403647 \(NIfTI-1: 348, NIfTI-2: 540\)$"):
        load_nifti(b"\x7fELF" + bytes(600))


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("klass", [nib.Nifti1Image, nib.Nifti2Image])
def test_nifti1_and_nifti2_in_either_byte_order(klass, order):
    t1 = nib.load(ICBM / "t1.nii.gz")
    expected = np.asanyarray(t1.dataobj).astype(np.int16)
    header = klass.header_class().as_byteswapped(order)
    data = klass(expected.astype(np.dtype(np.int16).newbyteorder(order)), t1.affine, header).to_bytes()
    assert struct.unpack(order + "i", data[:4])[0] == klass.header_class.sizeof_hdr
    for raw in (data, gzip.compress(data)):
        img = load_nifti(raw)
        assert type(img) is klass and np.array_equal(np.asanyarray(img.dataobj), expected)


def test_mri_decoder_refuses_large_and_non_finite_volumes():
    t1 = nib.load(ICBM / "t1.nii.gz")
    sample = {"t1.nii": t1.to_bytes()}
    with pytest.raises(ValueError, match=r"^t1.nii: too large: 66 x 78 x 63 = 324324 voxels, more than max_voxels 1000$"):
        MRIDecoder(sequences=["t1"], crop=16, max_voxels=1000)(sample, None)
    values = np.asanyarray(t1.dataobj).astype(np.float32)
    values[5, 6, 7] = np.inf
    with pytest.raises(ValueError, match=r"^t1.nii: 1 voxel\(s\) are NaN or inf \(as float32\)$"):
        MRIDecoder(sequences=["t1"], crop=16)({"t1.nii": nib.Nifti1Image(values, t1.affine).to_bytes()}, None)
    (item,) = MRIDecoder(sequences=["t1"], crop=16)(sample, None)
    assert torch.isfinite(item["volume"]).all()


# ----------------------------------------------------------------------------- video


def test_the_frame_size_is_refused_before_any_frame_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(video_loader, "decode_pyav", lambda *args, **kwargs: decoded.append(args))
    sample = {"mov": huge_video(), "json": b'{"frames": 2}'}
    with pytest.raises(ValueError, match=r"^too large: frames of 8192 x 8192 = 67108864 pixels, more than max_pixels 8294400$"):
        VideoDecoder()(sample, random.Random(0))
    assert decoded == []
    with pytest.raises(ValueError, match="more than max_pixels 25343"):  # the real clip, under a lower limit
        VideoDecoder(max_pixels=176 * 144 - 1)({"mp4": CLIP}, random.Random(0))


def test_decoding_stops_after_max_frames():
    with pytest.raises(ValueError, match=r"^too long: more than max_frames 50 frames decoded before reaching frame 100$"):
        decode_pyav(CLIP, [100], max_frames=50)  # its one keyframe is frame 0
    assert decode_pyav(CLIP, [100], max_frames=101).shape == (1, 144, 176, 3)
    with pytest.raises(ValueError, match="a decoded frame of 176 x 144"):
        decode_pyav(CLIP, [0], max_pixels=1000)


def test_clips_are_cropped_and_resized_before_they_become_float(monkeypatch):
    """Only the output clip is ever float: the resize gets the 8-bit crop, not the frames.
    (Its values against the reference's resize: tests/streaming/test_video_resize.py.)"""
    frames = np.random.default_rng(0).integers(0, 256, (4, 144, 176, 3), dtype=np.uint8)
    resized, interpolate = [], torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda x, **kw: resized.append((x.dtype, tuple(x.shape))) or interpolate(x, **kw))
    for seed in range(5):
        clip = make_clip(frames, crop_size=64, rng=random.Random(seed), flip=False)
        _, _, h, w = video_loader.multiscale_crop_box(144, 176, random.Random(seed))
        assert resized[-1] == (torch.uint8, (4, 3, h, w))
        assert clip.dtype == torch.float32 and clip.shape == (3, 4, 64, 64)
    assert len(resized) == 5


# ----------------------------------------------------------------------------- audio and points


def test_a_nan_sample_in_the_window_is_refused(tmp_path):
    wave, sr = sf.read(AUDIO / "arctic_a0007.wav", dtype="float32")
    wave[123] = np.nan
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    with pytest.raises(ValueError, match=r"^1 sample\(s\) in the window are NaN or inf$"):
        read_window(buf.getvalue(), seconds=1.0, rng=None)
    wave[123] = 0.0
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    assert read_window(buf.getvalue(), seconds=1.0, rng=None)[0].shape == (1, sr)


def npy_header_only(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(48)


def test_point_clouds_are_checked_from_the_npy_header():
    error, peak = peak_bytes(load_cloud, npy_header_only((10**10, 3)))
    assert str(error) == "too large: 10000000000 points, more than max_points 10000000" and peak < 2**20
    error, peak = peak_bytes(load_cloud, npy_header_only((1000, 3)))  # 12 kB declared, 48 bytes there
    assert str(error) == "truncated: the .npy header declares 12000 bytes of data, only 48 follow it" and peak < 2**20
    cloud = np.random.default_rng(0).normal(size=(200, 3))
    cloud[3, 2] = 1e39  # finite in float64, inf as float32
    buf = io.BytesIO()
    np.save(buf, cloud)
    with pytest.raises(ValueError, match=r"^1 point\(s\) with NaN or inf coordinates \(as float32\)$"):
        PointDecoder(num_points=64, num_groups=4, group_size=8)({"npy": buf.getvalue()}, random.Random(0))
    with pytest.raises(ValueError, match="more than max_points 100"):
        PointDecoder(num_points=64, num_groups=4, group_size=8, max_points=100)({"npy": buf.getvalue()}, random.Random(0))
