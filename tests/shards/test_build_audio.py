"""build_shards on real speech with bad files among the good ones."""

import csv
import hashlib
import io
import json
import shutil
import tarfile

import av
import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from conftest import AUDIO, load_script
from modalmae.data.schema import sample_key

build = load_script("pipelines/build_shards.py")
GOOD = ["arctic_a0007.wav", "Front_Center.wav", "sense_and_sensibility_01_austen_64kb-0880.wav", "sense_and_sensibility_01_austen_64kb-0930.wav"]


def make_mp4(path, *, with_audio: bool, with_video: bool):
    """An mp4 made here with PyAV: AAC audio of real speech and/or a few frames of video."""
    wave, sr = sf.read(AUDIO / "arctic_a0007.wav", dtype="float32")
    with av.open(str(path), "w") as out:
        if with_video:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if with_audio:
            audio = out.add_stream("aac", rate=sr)
            audio.layout = "mono"
        if with_video:
            for i in range(5):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
                out.mux(video.encode(frame))
            out.mux(video.encode())
        if with_audio:
            for start in range(0, len(wave), 1024):
                chunk = wave[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = sr
                out.mux(audio.encode(frame))
            out.mux(audio.encode())


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "raw"
    (root / "speech").mkdir(parents=True)
    (root / "alarm").mkdir()
    for name in GOOD[:3]:
        shutil.copy(AUDIO / name, root / "speech" / name)
    shutil.copy(AUDIO / GOOD[3], root / "alarm" / GOOD[3])
    make_mp4(root / "alarm" / "clip.mp4", with_audio=True, with_video=True)
    # bad files
    (root / "speech" / "empty.wav").write_bytes(b"")
    (root / "speech" / "truncated.wav").write_bytes((AUDIO / GOOD[0]).read_bytes()[:2000])
    (root / "speech" / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    (root / "speech" / "noise.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    make_mp4(root / "silent_video.mp4", with_audio=False, with_video=True)
    (root / "README.txt").write_text("ignored: not a media file")
    (root / ".hidden.wav").write_bytes((AUDIO / GOOD[0]).read_bytes())
    return root


def run(raw, out, *extra):
    return build.main(["--modality", "audio", "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1", *extra])


def read_tars(out):
    samples = {}
    for tar_path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_round_trip_with_bad_files(raw, tmp_path, capsys):
    out = tmp_path / "shards"
    assert run(raw, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    good = [f"speech/{n}" for n in GOOD[:3]] + [f"alarm/{GOOD[3]}", "alarm/clip.mp4"]
    assert manifest["num_samples"] == len(good) == sum(s["num_samples"] for s in manifest["shards"])
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"speech/empty.wav", "speech/truncated.wav", "speech/notes.wav", "speech/noise.mp3", "silent_video.mp4"}
    assert reasons["speech/empty.wav"] == "empty file"
    assert "truncated" in reasons["speech/truncated.wav"]
    assert "not decodable" in reasons["speech/notes.wav"] and "not decodable" in reasons["speech/noise.mp3"]
    assert reasons["silent_video.mp4"] == "no audio stream"
    assert manifest["ignored_files"] == 1  # README.txt; the hidden file is not even counted
    assert "5 file(s) skipped" in capsys.readouterr().out

    samples = read_tars(out)
    assert set(samples) == {sample_key(p) for p in good}
    for path in good[:4]:
        s = samples[sample_key(path)]
        assert s["wav"] == (raw / path).read_bytes()  # original bytes, untouched
        meta = json.loads(s["json"])
        info = sf.info(raw / path)
        assert meta["source"] == path and meta["sample_rate"] == info.samplerate
        assert meta["frames"] == info.frames and meta["channels"] == 1
        assert meta["duration"] == pytest.approx(info.duration, abs=1e-4)
        assert "label" not in meta
    clip = samples[sample_key("alarm/clip.mp4")]
    assert set(clip) == {"flac", "json"}
    wave, sr = sf.read(io.BytesIO(clip["flac"]))
    assert sr == 16000 and abs(len(wave) / sr - 4.0) < 0.1  # the 4 s speech track

    # webdataset reads the same samples (raw bytes, no decoders)
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert sorted(keys) == sorted(samples)


def test_shard_limits(raw, tmp_path):
    out = tmp_path / "a"
    assert run(raw, out, "--max-count", "2") == 0
    assert [s["num_samples"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == [2, 2, 1]
    out = tmp_path / "b"
    assert run(raw, out, "--max-size", "1k") == 0
    assert [s["num_samples"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == [1] * 5


def test_rebuild_is_byte_identical_and_parallel_matches(raw, tmp_path):
    assert run(raw, tmp_path / "a", "--max-count", "2") == 0
    assert run(raw, tmp_path / "b", "--max-count", "2", "--workers", "2") == 0
    for shard in sorted((tmp_path / "a").glob("*.tar")):
        twin = tmp_path / "b" / shard.name
        assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest()
    assert not list((tmp_path / "a").glob("*.tmp"))


def test_interrupted_build_leaves_complete_shards_and_rerun_recovers(raw, tmp_path, monkeypatch):
    from modalmae.shards import audio, build as build_module

    clean = tmp_path / "clean"
    assert run(raw, clean, "--max-count", "2") == 0
    out = tmp_path / "out"
    calls = {"n": 0}
    real = audio.prepare

    def flaky(path, relpath, options):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(path, relpath, options)

    monkeypatch.setattr(audio, "prepare", flaky)
    monkeypatch.setitem(build_module.MODALITIES, "audio", (audio, audio.AudioOptions))
    with pytest.raises(KeyboardInterrupt):
        run(raw, out, "--max-count", "2")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar"]  # complete ones only, no .tmp, no manifest
    monkeypatch.setattr(audio, "prepare", real)
    assert run(raw, out, "--max-count", "2") == 0
    for shard in clean.glob("*.tar"):
        assert shard.read_bytes() == (out / shard.name).read_bytes()
    # a smaller rebuild removes the shards it no longer writes
    assert run(raw, out, "--max-count", "10") == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]


def test_transcode_gives_mono_16k_flac(raw, tmp_path):
    out = tmp_path / "t"
    assert run(raw, out, "--transcode") == 0
    for key, s in read_tars(out).items():
        assert set(s) == {"flac", "json"}
        wave, sr = sf.read(io.BytesIO(s["flac"]), always_2d=True)
        meta = json.loads(s["json"])
        assert sr == 16000 and wave.shape[1] == 1 and meta["sample_rate"] == 16000
        source = raw / meta["source"]
        if source.suffix == ".wav":
            assert len(wave) / sr == pytest.approx(sf.info(source).duration, abs=1e-3)


def test_labels_from_parent_and_csv(raw, tmp_path):
    out = tmp_path / "p"
    assert run(raw, out, "--label-from-parent") == 0
    labels = {json.loads(s["json"])["source"]: json.loads(s["json"])["label"] for s in read_tars(out).values()}
    assert labels[f"speech/{GOOD[0]}"] == "speech" and labels["alarm/clip.mp4"] == "alarm"
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], [f"speech/{GOOD[0]}", "male"], [f"alarm/{GOOD[3]}", "female"]])
    out = tmp_path / "c"
    assert run(raw, out, "--labels", str(table)) == 0
    metas = {json.loads(s["json"])["source"]: json.loads(s["json"]) for s in read_tars(out).values()}
    assert metas[f"speech/{GOOD[0]}"]["label"] == "male" and metas[f"alarm/{GOOD[3]}"]["label"] == "female"
    assert "label" not in metas[f"speech/{GOOD[1]}"]


def test_exit_codes(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "bad.wav").write_bytes(b"")
    assert run(empty, tmp_path / "o") == 1
    assert "no usable audio file" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["skipped"][0]["reason"] == "empty file"
    with pytest.raises(SystemExit) as exc:
        run(tmp_path / "missing", tmp_path / "o2")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        build.main(["--modality", "audio", "--input", str(empty), "--max-size", "lots"])
    assert exc.value.code == 2


def test_size_parsing():
    assert build.parse_size("1e9") == 10**9
    assert build.parse_size("500M") == 500 * 1024**2
    assert build.parse_size("2g") == 2 * 1024**3
