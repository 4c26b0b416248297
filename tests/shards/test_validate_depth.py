"""--validate full|header: good files give the same shards either way; a file broken only past
its header passes ``header`` and fails ``full``; the limits that protect readers hold in both."""

import dataclasses
import io
import json
import random
import shutil

import av
import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import AUDIO, DATA, load_script
from modalmae.formats.nifti import load_nifti_header
from modalmae.flags import from_flags
from modalmae.modalities import MODALITIES
from modalmae.shards import Sample, Skip, audio, image, mri, points, video

cli = load_script("pipelines/build_shards.py")
SINTEL = DATA / "av" / "sintel_2s.mp4"  # 48 frames, H.264 + MP3
SPEECH = AUDIO / "arctic_a0007.wav"
CAMERA = DATA / "images" / "camera.png"
ANATOMICAL = DATA / "mri" / "anatomical.nii"  # int16, LAS
ICBM = DATA / "mri" / "icbm152"


def encoded_image(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def encoded_audio(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def garbled_video(src, dst):
    """``src``'s video packets, same sizes and timestamps, filled with noise: the container is
    intact, no picture decodes."""
    rng = random.Random(0)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            noise = av.Packet(rng.randbytes(packet.size))
            noise.pts, noise.dts, noise.time_base, noise.duration = packet.pts, packet.dts, packet.time_base, packet.duration
            noise.is_keyframe, noise.stream = packet.is_keyframe, stream
            out.mux(noise)


# ----------------------------------------------------------------------------- the option


def test_every_stage_declares_one_identical_validate_option():
    fields = [{f.name: f for f in dataclasses.fields(spec.builder.options)}["validate"] for spec in MODALITIES.values()]
    assert all(f.default == "full" and dict(f.metadata) == dict(fields[0].metadata) for f in fields)
    assert fields[0].metadata["choices"] == ("full", "header")
    parser = cli.make_parser()
    args = parser.parse_args(["--modality", "image", "--input", "in", "--validate", "header"])
    assert {from_flags(spec.builder.options, args).validate for spec in MODALITIES.values()} == {"header"}
    assert parser.parse_args(["--modality", "image", "--input", "in"]).validate == "full"
    with pytest.raises(SystemExit):
        parser.parse_args(["--modality", "image", "--input", "in", "--validate", "quick"])


# ----------------------------------------------------------------------------- good files


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """{modality: folder of good real files}, in the formats each modality stores."""
    root = tmp_path_factory.mktemp("good")
    folders = {name: root / name for name in ("audio", "video", "image", "points", "mri")}
    for folder in folders.values():
        folder.mkdir()
    wave, rate = sf.read(SPEECH, dtype="float32")
    for name in ("arctic_a0007.wav", "Front_Center.wav"):
        shutil.copy(AUDIO / name, folders["audio"] / name)
    for name, fmt, subtype in (("speech.flac", "FLAC", None), ("speech.ogg", "OGG", "VORBIS"), ("speech.mp3", "MP3", None), ("speech.opus", "OGG", "OPUS")):
        at = 48000 if subtype == "OPUS" else rate
        (folders["audio"] / name).write_bytes(encoded_audio(np.repeat(wave, at // rate), at, fmt, subtype))
    shutil.copy(SINTEL, folders["audio"] / "sintel.mp4")  # a container: its track becomes FLAC
    shutil.copy(DATA / "video" / "carphone_pristine.mp4", folders["video"])
    for path in (DATA / "av").iterdir():  # H.264 mp4, VP8 webm, MPEG-1 program streams
        shutil.copy(path, folders["video"])
    cat = Image.open(DATA / "images" / "chelsea.png").convert("RGB")
    shutil.copy(CAMERA, folders["image"])
    for name, data in {
        "cat.jpg": encoded_image(cat, "JPEG", quality=90),
        "cat.webp": encoded_image(cat, "WEBP", quality=80),
        "cat.gif": encoded_image(cat.convert("P"), "GIF", save_all=True, append_images=[cat.rotate(90).convert("P")]),
        "camera.tif": encoded_image(Image.open(CAMERA), "TIFF", compression="tiff_lzw"),
        "cat.bmp": encoded_image(cat.resize((90, 60)), "BMP"),
        "pair.jpg": encoded_image(cat, "MPO", save_all=True, append_images=[cat.rotate(180)]),
        "float.tif": encoded_image(Image.fromarray(np.asarray(Image.open(CAMERA), np.float32) / 255), "TIFF"),
    }.items():
        (folders["image"] / name).write_bytes(data)
    for name in ("kitten.xyz", "bunny_zipper.ply"):
        shutil.copy(DATA / "points" / name, folders["points"])
    shutil.copytree(DATA / "mri", folders["mri"], dirs_exist_ok=True)
    return folders


def build(modality, raw, out, *extra):
    assert cli.main(["--modality", modality, "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1", *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("modality", "extra"),
    [
        ("audio", []), ("audio", ["--transcode"]), ("video", []), ("video", ["--short-side", "96", "--extract-audio"]),
        ("image", []), ("points", []), ("mri", []),
    ],
)
def test_good_files_give_identical_shards_at_either_depth(good, tmp_path, modality, extra):
    manifests, tars = {}, {}
    for depth in ("full", "header"):
        out = tmp_path / depth
        manifests[depth] = build(modality, good[modality], out, "--validate", depth, *extra)
        tars[depth] = {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}
    assert tars["full"] == tars["header"]
    assert manifests["header"]["options"].pop("validate") == "header" and manifests["full"]["options"].pop("validate") == "full"
    assert manifests["full"] == manifests["header"]
    assert not manifests["full"]["skipped"] and not manifests["full"]["warnings"]
    expected = 4 if modality == "mri" else sum(1 for _ in good[modality].iterdir())  # MRI: 3 lone volumes and icbm152
    assert manifests["full"]["num_samples"] == expected


# ----------------------------------------------------------------------------- content broken past the header


def both(prepare, options, path, relpath):
    """(full, header) results of one stage on one source."""
    return tuple(prepare(path, relpath, dataclasses.replace(options, validate=depth)) for depth in ("full", "header"))


def test_audio_broken_content_passes_header_only(tmp_path):
    wave, rate = sf.read(SPEECH, dtype="float32")
    nan = wave.copy()
    nan[rate] = np.nan
    (tmp_path / "nan.wav").write_bytes(encoded_audio(nan, rate, "WAV", "FLOAT"))
    flac = encoded_audio(wave, rate, "FLAC")
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "short.wav").write_bytes(SPEECH.read_bytes()[:3000])  # the header says more: a bound, kept in both
    reasons = {"nan.wav": "1 sample(s) are NaN or inf", "cut.flac": "truncated: the header says 64000 frames"}
    for name, reason in reasons.items():
        full, header = both(audio.prepare, audio.Options(), tmp_path / name, name)
        assert isinstance(full, Skip) and full.reason.startswith(reason)
        assert isinstance(header, Sample) and header.files == {name.split(".")[1]: (tmp_path / name).read_bytes()}
        assert (header.meta["frames"], header.meta["sample_rate"]) == (len(wave), rate)  # the header's count
    for result in both(audio.prepare, audio.Options(), tmp_path / "short.wav", "short.wav"):
        assert isinstance(result, Skip) and "truncated: the WAV header promises" in result.reason
    # Re-encoding decodes: the broken file fails --transcode at either depth.
    for result in both(audio.prepare, audio.Options(transcode=True), tmp_path / "nan.wav", "nan.wav"):
        assert isinstance(result, Skip) and "NaN or inf" in result.reason


def test_video_broken_content_passes_header_only(tmp_path):
    garbled_video(SINTEL, tmp_path / "noise.mp4")
    full, header = both(video.prepare, video.Options(), tmp_path / "noise.mp4", "noise.mp4")
    assert isinstance(full, Skip) and full.reason.startswith("not decodable video: no frame decodes")
    assert isinstance(header, Sample) and header.files == {"mp4": (tmp_path / "noise.mp4").read_bytes()}
    assert (header.meta["frames"], header.meta["width"], header.meta["height"]) == (48, 854, 480)
    for result in both(video.prepare, video.Options(short_side=96), tmp_path / "noise.mp4", "noise.mp4"):
        assert isinstance(result, Skip) and "no frame decodes" in result.reason  # re-encoding decodes


def test_a_video_cut_short_is_partial_at_either_depth(tmp_path):
    """The container's own truncation shows without decoding: demuxing stops early."""
    with av.open(str(SINTEL)) as inp, av.open(str(tmp_path / "fast.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    full, header = both(video.prepare, video.Options(), tmp_path / "cut.mp4", "cut.mp4")
    assert full.meta["partial"] and header.meta["partial"]
    assert 0 < full.meta["frames"] < 48 and 0 < header.meta["frames"] < 48
    assert header.meta["partial_reason"].startswith(f"holds only {header.meta['frames']} of 48 frames")
    for result in both(video.prepare, video.Options(partial="skip"), tmp_path / "cut.mp4", "cut.mp4"):
        assert isinstance(result, Skip) and result.reason.startswith("partial:")


def test_image_broken_content_passes_header_only(tmp_path):
    data = CAMERA.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 6 // 10])
    nan = np.asarray(Image.open(CAMERA), np.float32)
    nan[10, 10] = np.nan
    (tmp_path / "nan.tif").write_bytes(encoded_image(Image.fromarray(nan), "TIFF"))
    intact = image.prepare(CAMERA, "camera.png", image.Options())
    for name, reason in {"cut.png": "truncated or corrupt", "nan.tif": "1 pixel(s) are NaN or inf"}.items():
        full, header = both(image.prepare, image.Options(), tmp_path / name, name)
        assert isinstance(full, Skip) and full.reason.startswith(reason)
        assert isinstance(header, Sample) and header.files == {name.split(".")[1]: (tmp_path / name).read_bytes()}
        assert (header.meta["width"], header.meta["height"]) == (intact.meta["width"], intact.meta["height"])
    # The pixel limit is read from the header: it refuses at either depth.
    for result in both(image.prepare, image.Options(max_pixels=100_000), CAMERA, "camera.png"):
        assert isinstance(result, Skip) and "more than --max-pixels 100000" in result.reason


def test_mri_broken_content_passes_header_only(tmp_path):
    volume = nib.load(ANATOMICAL)
    voxels = np.asarray(volume.dataobj, np.float32)
    voxels[5, 5, 5] = np.nan
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "t1.nii").write_bytes(nib.Nifti1Image(voxels, volume.affine).to_bytes())
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "t1.nii.gz").write_bytes((ICBM / "t1.nii.gz").read_bytes()[:3000])  # header intact, voxels cut
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "t1.nii").write_bytes(ANATOMICAL.read_bytes()[:20_000])  # plain: its length is a header fact
    jobs = {rel: subject for subject, rel in mri.find_jobs(tmp_path, mri.Options())[0]}
    for name, reason in {"nan": "voxel(s) are NaN or inf", "cut": "truncated"}.items():
        full, header = both(mri.prepare, mri.Options(), jobs[name], name)
        assert isinstance(full, Skip) and reason in full.reason
        assert isinstance(header, Sample) and header.meta["present"] == ["t1"]
        stored = next(iter(header.files.values()))
        assert stored == next((tmp_path / name).iterdir()).read_bytes()
    cut = both(mri.prepare, mri.Options(), jobs["cut"], "cut")[1].meta["sequences"]["t1"]
    assert (cut["shape"], cut["spacing"], cut["orientation"]) == ([66, 78, 63], [3.0, 3.0, 3.0], "RAS")
    for result in both(mri.prepare, mri.Options(), jobs["short"], "short"):
        assert isinstance(result, Skip) and "truncated: the header declares" in result.reason
    for result in both(mri.prepare, mri.Options(max_voxels=1000), jobs["cut"], "cut"):
        assert isinstance(result, Skip) and "more than --max-voxels 1000" in result.reason


def test_points_are_read_in_full_at_either_depth(tmp_path):
    """The stored array is converted from every value: ``header`` checks what ``full`` does."""
    lines = (DATA / "points" / "kitten.xyz").read_text().splitlines()
    lines[7] = "nan " + lines[7].split(" ", 1)[1]
    (tmp_path / "nan.xyz").write_text("\n".join(lines) + "\n")
    for result in both(points.prepare, points.Options(), tmp_path / "nan.xyz", "nan.xyz"):
        assert isinstance(result, Skip) and "NaN or inf" in result.reason


# ----------------------------------------------------------------------------- MRI grids from the header


@pytest.mark.parametrize("name", ["anatomical.nii", "functional.nii", "small_64D.nii", "icbm152/t1.nii.gz"])
def test_ras_grid_from_the_header_is_nibabels_reoriented_grid(name):
    """LAS, PLS and RAS volumes, 3-D and 4-D: the grid the subject check compares is what
    ``as_closest_canonical`` gives, without reordering voxels."""
    img = nib.load(DATA / "mri" / name)
    canonical = nib.as_closest_canonical(img)
    affine, shape = mri.ras_grid(load_nifti_header((DATA / "mri" / name).read_bytes()))
    assert shape == canonical.shape[:3]
    np.testing.assert_array_equal(affine, canonical.affine)
