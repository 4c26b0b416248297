"""AVDecoder (CAV-MAE audio-visual items) on real clips, through shards built by build_shards."""

import io
import json
import math
import pickle
import random
import shutil

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import DATA, load_script, read_shards
from modalmae.data.av import AVDecoder
from modalmae.data.shards import resolve_shards
from modalmae.data.stream import ShardStream, collate, make_loader
from modalmae.data.video import VideoDecoder
from modalmae.formats.schema import sample_key
from modalmae.tokenizers.fbank import AudioFrontend

AV = DATA / "av"
CLIPS = ("sintel_2s.mp4", "event_vp8_opus.webm", "grid_bbaf2n.mpg")
SILENT = "carphone_pristine.mp4"  # tests/data/video: H.264 without an audio track
FRONTEND = AudioFrontend()  # Audio-MAE's: 1024 frames x 128 bins, 16 kHz


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The three av clips and the silent one as video shards with --extract-audio:
    (shard folder, {file name: raw sample})."""
    raw = tmp_path_factory.mktemp("raw")
    for name in CLIPS:
        shutil.copy(AV / name, raw / name)
    shutil.copy(DATA / "video" / SILENT, raw / SILENT)
    out = tmp_path_factory.mktemp("shards") / "av"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "video", "--input", str(raw), "--output", str(out), "--extract-audio", "--workers", "1", "--quiet"]) == 0
    samples, _ = read_shards(out)
    return out, {name: samples[sample_key(name)] for name in (*CLIPS, SILENT)}


def decoder(*, train: bool, audio_seconds: float | None = None, **video) -> AVDecoder:
    settings = {"num_frames": 8, "stride": 2, "crop_size": 32, **video}
    return AVDecoder(video=VideoDecoder(train=train, flip=train, **settings), frontend=FRONTEND, audio_seconds=audio_seconds, train=train)


def pyav_offset(path) -> float:
    """Video time of the first decoded audio sample, read here with PyAV: the first audio frame's
    timestamp minus the video stream's start (where the loader counts frame 0 from)."""
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        first = next(f for f in c.decode(c.streams.audio[0]) if f.samples)
        return float(first.pts * first.time_base) - float((video.start_time or 0) * video.time_base)


def reference_fbank(flac: bytes, *, start: float, seconds: float) -> torch.Tensor:
    """The frontend's fbank of FLAC seconds [start, start + seconds), read whole with soundfile
    and cut here; zeros where the window lies outside the recording."""
    wave, sr = sf.read(io.BytesIO(flac), dtype="float32")  # [N], mono
    first, n = round(start * sr), math.ceil(seconds * sr)
    window = np.zeros(n, np.float32)
    lo, hi = max(first, 0), min(first + n, len(wave))
    window[lo - first : hi - first] = wave[lo:hi]
    return FRONTEND(torch.from_numpy(window), sr)


def test_offset_recorded_as_pyav_reports(built):
    _, samples = built
    for name in CLIPS:
        meta = json.loads(samples[name]["json"])
        offset = meta["audio"]["offset"]
        assert isinstance(offset, float)
        assert offset == pytest.approx(pyav_offset(AV / name), abs=1e-6)
        # For these files the streams' own start times tell the same (the webm's video starts 7 ms late).
        with av.open(str(AV / name)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert offset == pytest.approx(float(a.start_time * a.time_base - v.start_time * v.time_base), abs=1e-6)
    assert json.loads(samples["event_vp8_opus.webm"]["json"])["audio"]["offset"] == pytest.approx(-0.007)
    assert "audio" not in json.loads(samples[SILENT]["json"]) and "flac" not in samples[SILENT]


def test_flac_starts_at_the_first_decoded_sample(built):
    """The FLAC against the track decoded here with PyAV, mixed down and resampled to 16 kHz with
    our torch resampler (not the builder's swresample): same length, best match at lag 0."""
    from modalmae.tokenizers.fbank import resample

    _, samples = built
    for name in CLIPS:
        flac, sr = sf.read(io.BytesIO(samples[name]["flac"]), dtype="float32")  # [N]
        with av.open(str(AV / name)) as c:
            track = c.streams.audio[0]
            wave = np.concatenate([f.to_ndarray() for f in c.decode(track)], axis=1)  # planar [C, n]
            rate = track.sample_rate
        scale = 32768.0 if wave.dtype == np.int16 else 1.0  # the mpg's mp2 decodes to s16p
        ref = resample(torch.from_numpy(wave.astype(np.float32).mean(0) / scale), orig_freq=rate, new_freq=sr).numpy()
        assert len(ref) == len(flac)
        core = slice(100, len(flac) - 100)
        lags = list(range(-20, 21))
        best = lags[int(np.argmax([np.dot(ref[core], np.roll(flac, -lag)[core]) for lag in lags]))]
        assert best == 0 and np.abs(ref[core] - flac[core]).max() < 0.02


@pytest.mark.parametrize("train", [True, False])
def test_audio_window_centred_on_each_clip(built, train):
    _, samples = built
    dec = decoder(train=train, clips_per_video=3)
    for name in CLIPS:
        meta = json.loads(samples[name]["json"])
        fps, frames = meta["fps"], meta["frames"]
        span = (8 - 1) * 2 + 1  # frames a clip covers
        for item in dec(samples[name], random.Random(7)):
            start_frame = item["clip_start"].item() * fps
            assert start_frame == pytest.approx(round(start_frame), abs=1e-6)
            if not train:
                assert round(start_frame) == (frames - span) // 2
            centre = item["clip_start"].item() + span / fps / 2
            assert item["audio_start"].item() + dec.audio_seconds / 2 == pytest.approx(centre, abs=1e-9)
    # A video shorter than the clip repeats its last frame: the clip spans the whole video.
    long = decoder(train=False, num_frames=16, stride=4)
    meta = json.loads(samples["event_vp8_opus.webm"]["json"])
    (item,) = long(samples["event_vp8_opus.webm"], random.Random(0))
    assert item["clip_start"].item() == 0.0
    assert item["audio_start"].item() + long.audio_seconds / 2 == pytest.approx(meta["frames"] / meta["fps"] / 2)


def test_fbank_matches_soundfile_reference(built):
    _, samples = built
    seen = {"over the start": 0, "inside": 0, "over both ends": 0}
    cases = [(decoder(train=True, clips_per_video=4), 3), (decoder(train=True, clips_per_video=4, audio_seconds=1.0), 5)]
    for dec, seed in cases:
        for name in CLIPS:
            sample = samples[name]
            offset = json.loads(sample["json"])["audio"]["offset"]
            length = sf.info(io.BytesIO(sample["flac"])).duration
            for item in dec(sample, random.Random(seed)):
                start = item["audio_start"].item() - offset  # in FLAC seconds
                end = start + dec.audio_seconds
                kind = "over both ends" if start < 0 and end > length else "over the start" if start < 0 else "inside" if end <= length else None
                if kind:
                    seen[kind] += 1
                assert item["has_audio"].item() is True
                torch.testing.assert_close(item["fbank"], reference_fbank(sample["flac"], start=start, seconds=dec.audio_seconds), rtol=0, atol=1e-5)
    assert all(seen.values()), seen
    # Shards built before the offset was recorded: the FLAC starts at video time 0.
    old = dict(samples["event_vp8_opus.webm"])
    meta = json.loads(old["json"])
    del meta["audio"]["offset"]
    old["json"] = json.dumps(meta).encode()
    dec = decoder(train=False, audio_seconds=0.5)
    (item,) = dec(old, random.Random(0))
    torch.testing.assert_close(item["fbank"], reference_fbank(old["flac"], start=item["audio_start"].item(), seconds=0.5), rtol=0, atol=1e-5)


def test_video_without_audio_still_gives_an_item(built):
    _, samples = built
    (item,) = decoder(train=True)(samples[SILENT], random.Random(0))
    assert item["has_audio"].dtype == torch.bool and not item["has_audio"].item()
    assert item["fbank"].shape == (1024, 128) and not item["fbank"].any()
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert torch.isfinite(item["video"]).all() and item["video"].std() > 0.1


def test_loader_batches(built):
    folder, _ = built
    dec = pickle.loads(pickle.dumps(decoder(train=True, clips_per_video=2)))  # as loader workers get it
    stream = ShardStream(resolve_shards(folder), dec, epochs=1, shuffle_buffer=1, items_per_sample=2)
    (batch,) = list(make_loader(stream, batch_size=8, num_workers=0))  # 4 videos x 2 clips
    assert batch["video"].shape == (8, 3, 8, 32, 32) and batch["fbank"].shape == (8, 1024, 128)
    assert batch["has_audio"].dtype == torch.bool and batch["has_audio"].shape == (8,)
    assert batch["has_audio"].sum() == 6  # the silent video's two clips
    assert batch["clip_start"].dtype == batch["audio_start"].dtype == torch.float64
    assert batch["label"] == [None] * 8
    silent = ~batch["has_audio"]
    assert not batch["fbank"][silent].any() and batch["fbank"][~silent].std() > 0.1
    assert collate(dec(json_free(built[1][SILENT]), random.Random(0)))["has_audio"].tolist() == [False, False]


def json_free(sample: dict) -> dict:
    """The sample without its json: the decoder probes frames and fps from the bytes."""
    return {k: v for k, v in sample.items() if k != "json"}


def test_nan_and_oversized_audio_refused(built):
    _, samples = built
    # The builder's FLAC is 16-bit PCM and FLAC holds integer samples only, so a NaN cannot reach
    # one; a float WAV can carry one, and the decoder reads any audio entry the same way.
    assert not any("FLOAT" in subtype or "DOUBLE" in subtype for subtype in sf.available_subtypes("FLAC"))
    wave = np.zeros(16000 * 3, np.float32)
    wave[8000] = np.nan
    buffer = io.BytesIO()
    sf.write(buffer, wave, 16000, format="WAV", subtype="FLOAT")
    sample = {k: v for k, v in samples["grid_bbaf2n.mpg"].items() if k != "flac"}
    sample["wav"] = buffer.getvalue()
    with pytest.raises(ValueError, match="NaN or inf"):
        decoder(train=False)(sample, random.Random(0))
    # A window that does not reach the bad sample is fine (only the window is decoded).
    (item,) = decoder(train=False, num_frames=4, stride=1, audio_seconds=0.5)(sample, random.Random(0))
    assert torch.isfinite(item["fbank"]).all()
    # The silence around the recording is sized by the header's rate: a 1.6 kB file claiming
    # 8 channels at 4 MHz would ask for 328 M zeros.
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((100, 8), np.float32), 4_000_000, format="WAV", subtype="PCM_16")
    sample["wav"] = buffer.getvalue()
    with pytest.raises(ValueError, match="too large"):
        decoder(train=False)(sample, random.Random(0))


def test_train_flags_must_agree():
    with pytest.raises(ValueError, match="VideoDecoder"):
        AVDecoder(video=VideoDecoder(train=False), frontend=FRONTEND, train=True)
