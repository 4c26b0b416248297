"""build_shards --modality video on a real clip, with broken and partial files among good ones."""

import io
import json
import shutil

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import AUDIO, DATA, load_script, moving_bar, read_shards
from modalmae.formats.schema import sample_key

build = load_script("pipelines/build_shards.py")
CLIP = DATA / "video" / "carphone_pristine.mp4"  # 176x144, 120 frames, no audio, moov at the end


def faststart_copy(src, dst):
    """Remux with the index first, so a truncated copy still opens and decodes part-way."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def with_audio(dst):
    """A short clip with an AAC track of real speech, made here with PyAV."""
    wave, sr = sf.read(AUDIO / "arctic_a0007.wav", dtype="float32")
    with av.open(str(dst), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=sr)
        audio.layout = "mono"
        for i in range(20):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")))
        out.mux(video.encode())
        for start in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[start : start + 1024][None], format="flt", layout="mono")
            frame.sample_rate = sr
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    shutil.copy(CLIP, root / "carphone.mp4")
    faststart_copy(CLIP, root / "fast.mp4")
    data = (root / "fast.mp4").read_bytes()
    (root / "partial.mp4").write_bytes(data[: len(data) // 2])
    (root / "cut.mp4").write_bytes(CLIP.read_bytes()[:200_000])  # index at the end is lost
    (root / "empty.webm").write_bytes(b"")
    (root / "notes.mkv").write_text("not a video\n" * 50)
    with_audio(root / "talk.mp4")
    (root / "speech.wav").write_bytes((AUDIO / "arctic_a0007.wav").read_bytes())  # not a video extension
    return root


def run(raw, out, *extra):
    return build.main(["--modality", "video", "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1", *extra])


def members(out):
    return read_shards(out)[0]


def test_probe_skip_and_keep_partial(raw, tmp_path):
    out = tmp_path / "s"
    assert run(raw, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"cut.mp4", "empty.webm", "notes.mkv"}
    assert reasons["empty.webm"] == "empty file" and "not decodable" in reasons["notes.mkv"]
    assert manifest["ignored_files"] == 1
    assert [w["path"] for w in manifest["warnings"]] == ["partial.mp4"]

    samples = members(out)
    clip = samples[sample_key("carphone.mp4")]
    assert clip["mp4"] == CLIP.read_bytes()
    meta = json.loads(clip["json"])
    assert (meta["frames"], meta["width"], meta["height"], meta["codec"], meta["has_audio"]) == (120, 176, 144, "h264", False)
    assert meta["fps"] == pytest.approx(29.97, abs=0.01) and meta["duration"] == pytest.approx(4.004, abs=0.01)
    partial = json.loads(samples[sample_key("partial.mp4")]["json"])
    assert partial["partial"] is True and 0 < partial["frames"] < 120
    assert json.loads(samples[sample_key("talk.mp4")]["json"])["has_audio"] is True


def test_partial_files_skipped_on_request(raw, tmp_path):
    out = tmp_path / "s"
    assert run(raw, out, "--partial", "skip") == 0
    reasons = {s["path"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]}
    assert reasons["partial.mp4"].startswith("partial: decodes only")


def test_transcode_resize_keyframes_and_audio_track(raw, tmp_path):
    out = tmp_path / "t"
    assert run(raw, out, "--short-side", "64", "--keyframe-interval", "8", "--extract-audio") == 0
    samples = members(out)
    clip = samples[sample_key("carphone.mp4")]
    meta = json.loads(clip["json"])
    assert meta["transcoded"] and (meta["height"], meta["width"]) == (64, 78) and meta["frames"] == 120
    with av.open(io.BytesIO(clip["mp4"])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.width, s.codec_context.height) == ("h264", 78, 64)
        keyframes = [p.pts for p in c.demux(s) if p.is_keyframe]
    assert len(keyframes) == 120 // 8
    talk = samples[sample_key("talk.mp4")]
    wave, sr = sf.read(io.BytesIO(talk["flac"]), always_2d=True)
    assert sr == 16000 and wave.shape[1] == 1 and abs(len(wave) / sr - 4.0) < 0.1
    assert json.loads(talk["json"])["audio"]["sample_rate"] == 16000
    assert "flac" not in clip  # no audio track, no entry


def remux(src, dst, fmt):
    """The same H.264 packets in another container."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def speech_only(dst, fmt, codec, rate):
    """Real speech alone in a container that usually holds video."""
    wave, sr = sf.read(AUDIO / "arctic_a0007.wav", dtype="float32")
    with av.open(str(dst), "w", format=fmt) as out:
        track = out.add_stream(codec, rate=rate)
        track.layout = "mono"
        resampler = av.AudioResampler(format=track.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
        frame.sample_rate = sr
        for piece in resampler.resample(frame) + resampler.resample(None):
            out.mux(track.encode(piece))
        out.mux(track.encode())


def test_containers_are_chosen_by_content_not_by_name(tmp_path):
    from modalmae.data.video import VideoDecoder

    raw = tmp_path / "raw"
    raw.mkdir()
    remux(CLIP, raw / "clip.ts", "mpegts")
    remux(CLIP, raw / "clip.flv", "flv")
    remux(CLIP, raw / "clip.mkv", "matroska")
    shutil.copy(CLIP, raw / "really_mp4.mkv")  # the name says Matroska, the bytes are MP4
    moving_bar(raw / "bar.ogv", "ogg", codec="libvpx")
    moving_bar(raw / "bar.wmv", "asf", codec="wmv2")
    speech_only(raw / "speech.ogg", "ogg", "libopus", 48000)
    speech_only(raw / "speech.mp4", "mp4", "aac", 16000)
    (raw / "photo.mp4").write_bytes(_png())  # FFmpeg opens it, as a picture
    (raw / "notes.txt").write_text("not media")
    out = tmp_path / "video"
    assert run(raw, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["speech.ogg"] == reasons["speech.mp4"] == "no video stream (audio only)"
    assert "not a video container" in reasons["photo.mp4"]
    assert manifest["ignored_by_suffix"] == {".txt": 1}
    samples = members(out)
    stored = {json.loads(s["json"])["source"]: [k for k in s if k != "json"] for s in samples.values()}
    assert stored == {
        "clip.ts": ["ts"], "clip.flv": ["flv"], "clip.mkv": ["mkv"], "really_mp4.mkv": ["mp4"], "bar.ogv": ["ogv"], "bar.wmv": ["wmv"],
    }
    # Every container gives the loader the same centre clip as the original file.
    decode = VideoDecoder(num_frames=4, stride=2, crop_size=64, train=False)
    original = decode({"mp4": CLIP.read_bytes(), "json": json.dumps({"frames": 120}).encode()}, None)[0]["video"]
    for source in ("clip.ts", "clip.flv", "clip.mkv", "really_mp4.mkv"):
        assert torch.equal(decode(samples[sample_key(source)], None)[0]["video"], original), source
    bar = decode(samples[sample_key("bar.ogv")], None)[0]["video"]
    assert bar.shape == (3, 4, 64, 64) and bar.std() > 0.5  # the moving bar, not a blank frame

    # The same speech files are usable audio in an audio build.
    audio_out = tmp_path / "audio"
    assert build.main(["--modality", "audio", "--input", str(raw), "--output", str(audio_out), "--quiet", "--workers", "1"]) == 0
    kept = {json.loads(s["json"])["source"] for s in members(audio_out).values()}
    assert {"speech.ogg", "speech.mp4"} <= kept


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_broken_audio_track_costs_the_audio_not_the_video(tmp_path):
    """Garbage in every audio packet of a real clip: the video is kept, the audio left out with
    the reason (--extract-audio)."""
    import random

    src = DATA / "av" / "sintel_2s.mp4"
    (tmp_path / "in").mkdir()
    rng = random.Random(0)
    with av.open(str(src)) as inp, av.open(str(tmp_path / "in" / "broken.mp4"), "w", format="mp4") as out:
        streams = {s.type: out.add_stream_from_template(s) for s in (inp.streams.video[0], inp.streams.audio[0])}
        for packet in inp.demux(inp.streams.video[0], inp.streams.audio[0]):
            if packet.dts is None:
                continue
            target = streams[packet.stream.type]
            if packet.stream.type == "audio":
                noise = av.Packet(bytes(rng.randrange(256) for _ in range(packet.size)))
                noise.pts, noise.dts, noise.time_base, noise.duration = packet.pts, packet.dts, packet.time_base, packet.duration
                packet = noise
            packet.stream = target
            out.mux(packet)
    assert build.main(["--modality", "video", "--extract-audio", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet", "--workers", "1"]) == 0
    (sample,) = members(tmp_path / "out").values()
    assert "mp4" in sample and "flac" not in sample
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 1 and "audio track left out: not decodable" in json.dumps(manifest)
