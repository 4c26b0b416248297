"""build_shards on real speech with bad files among the good ones, through the CLI's main(argv)."""

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
from dataclasses import replace

import av
import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from conftest import AUDIO, load_script, read_shards
from modalmae.formats.schema import sample_key
from modalmae.modalities import MODALITIES
from modalmae.shards import audio

cli = load_script("pipelines/build_shards.py")
SPEECH = ["Front_Center.wav", "arctic_a0007.wav", "sense_and_sensibility_01_austen_64kb-0880.wav"]  # 48k, 16k, 16k
ALARM = "sense_and_sensibility_01_austen_64kb-0930.wav"
GOOD = [f"speech/{n}" for n in SPEECH] + [f"alarm/{ALARM}"]  # stored as their original bytes
DISGUISED = "speech/really_flac.wav"  # FLAC bytes under a .wav name: stored as what they are
GOOD_ALL = sorted(GOOD + ["alarm/clip.mp4", DISGUISED])
BAD = {  # path -> what its skip reason must say
    "speech/empty.wav": "empty file",
    "speech/truncated.wav": "truncated",  # the WAV header's data size
    "speech/cut.flac": "truncated",  # STREAMINFO's frame count, then a decoder error
    "speech/cut.mp3": "truncated",  # the Xing header's frame count, fewer decoded
    "speech/notes.wav": "not decodable audio (libsndfile",
    "speech/noise.mp3": "not decodable audio (libsndfile",
    "silent_video.mp4": "no audio stream",
}


def make_mp4(path, *, with_audio: bool, with_video: bool):
    """An mp4 made with PyAV: AAC audio of real speech (4.0 s) and/or a few frames of video."""
    wave, sr = sf.read(AUDIO / "arctic_a0007.wav", dtype="float32")
    with av.open(str(path), "w") as out:
        if with_video:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if with_audio:
            track = out.add_stream("aac", rate=sr)
            track.layout = "mono"
        if with_video:
            for i in range(5):
                out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")))
            out.mux(video.encode())
        if with_audio:
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[start : start + 1024][None], format="flt", layout="mono")
                frame.sample_rate = sr
                out.mux(track.encode(frame))
            out.mux(track.encode())


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Read-only input folder shared by the tests of this file."""
    root = tmp_path_factory.mktemp("raw")
    (root / "speech").mkdir()
    (root / "alarm").mkdir()
    for path in GOOD:
        shutil.copy(AUDIO / path.split("/")[1], root / path)
    make_mp4(root / "alarm" / "clip.mp4", with_audio=True, with_video=True)
    wave, sr = sf.read(AUDIO / SPEECH[2], dtype="int16")
    sf.write(root / DISGUISED, wave, sr, format="FLAC")
    (root / "speech" / "empty.wav").write_bytes(b"")
    (root / "speech" / "truncated.wav").write_bytes((AUDIO / SPEECH[1]).read_bytes()[:2000])
    for fmt in ("flac", "mp3"):  # a real file's first half
        encoded = io.BytesIO()
        sf.write(encoded, wave, sr, format=fmt.upper())
        (root / "speech" / f"cut.{fmt}").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    (root / "speech" / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    (root / "speech" / "noise.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    make_mp4(root / "silent_video.mp4", with_audio=False, with_video=True)
    (root / "README.txt").write_text("ignored: not a media file")
    (root / ".hidden.wav").write_bytes((AUDIO / SPEECH[1]).read_bytes())
    (root / ".cache").mkdir()
    (root / ".cache" / "copy.wav").write_bytes((AUDIO / SPEECH[1]).read_bytes())
    return root


def run(raw, out, *extra):
    return cli.main(["--modality", "audio", "--input", str(raw), "--output", str(out), "--quiet", "--workers", "1", *extra])


def manifest_of(out):
    return json.loads((out / "manifest.json").read_text())


def read_tars(out):
    return read_shards(out)


def hashes(out):
    """sha256 of each shard (and of any unfinished .tmp), not of the stats records (they hold timings)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar*"))}


def test_round_trip_with_bad_files(raw, tmp_path, capsys):
    out = tmp_path / "shards"
    assert run(raw, out) == 0
    manifest = manifest_of(out)
    assert manifest["num_samples"] == len(GOOD_ALL) == sum(s["num_samples"] for s in manifest["shards"])
    assert manifest["total_bytes"] == sum((out / s["name"]).stat().st_size for s in manifest["shards"])
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(BAD)
    for path, expected in BAD.items():
        assert expected in reasons[path], (path, reasons[path])
    assert "PyAV" in reasons["speech/noise.mp3"]  # the container fallback was tried too
    assert manifest["ignored_files"] == 1  # README.txt; hidden files are not even counted
    assert manifest["options"]["transcode"] is False and manifest["options"]["max_count"] == 1000
    printed = capsys.readouterr().out
    assert f"{len(GOOD_ALL)} samples in 1 shard(s)" in printed and f"{len(BAD)} file(s) skipped" in printed
    assert "speech/empty.wav: empty file" in printed

    samples, order = read_tars(out)
    assert order == [sample_key(p) for p in GOOD_ALL]  # each good file exactly once, in input order
    for path in GOOD:
        s = samples[sample_key(path)]
        assert set(s) == {"wav", "json"} and s["wav"] == (raw / path).read_bytes()  # original bytes
        meta, info = json.loads(s["json"]), sf.info(raw / path)
        assert meta["source"] == path and meta["format"] == "wav" and meta["sample_rate"] == info.samplerate
        assert meta["frames"] == info.frames and meta["channels"] == 1
        assert meta["duration"] == pytest.approx(info.duration, abs=1e-6)
        assert "label" not in meta
    disguised = samples[sample_key(DISGUISED)]
    assert set(disguised) == {"flac", "json"} and disguised["flac"] == (raw / DISGUISED).read_bytes()
    assert json.loads(disguised["json"])["format"] == "flac"
    clip = samples[sample_key("alarm/clip.mp4")]
    assert set(clip) == {"flac", "json"}
    wave, sr = sf.read(io.BytesIO(clip["flac"]), always_2d=True)
    meta = json.loads(clip["json"])
    assert (meta["format"], meta["sample_rate"], meta["channels"], meta["frames"]) == ("flac", sr, 1, len(wave))
    assert sr == 16000 and abs(len(wave) / sr - sf.info(AUDIO / "arctic_a0007.wav").duration) < 0.1

    # webdataset sees the same samples: raw bytes, no decoders
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    seen = [(s["__key__"], s["json"], s.get("wav", s.get("flac"))) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert [k for k, _, _ in seen] == order
    assert all(samples[k]["json"] == j and data in samples[k].values() for k, j, data in seen)


def test_shard_limits(raw, tmp_path):
    # Shard i holds the usable files of the i-th pair of candidates: a skipped file makes its
    # own shard smaller (or leaves it out) and moves nothing else.
    candidates = sorted(GOOD_ALL + list(BAD))
    assert run(raw, tmp_path / "a", "--max-count", "2") == 0
    pairs = [candidates[i : i + 2] for i in range(0, len(candidates), 2)]
    expected = [(f"shard-{i:06d}.tar", sum(p in GOOD_ALL for p in pair)) for i, pair in enumerate(pairs) if set(pair) & set(GOOD_ALL)]
    assert [(s["name"], s["num_samples"]) for s in manifest_of(tmp_path / "a")["shards"]] == expected
    assert {1, 2} <= {n for _, n in expected} and len(expected) < len(pairs)  # the input has both cases
    assert run(raw, tmp_path / "b", "--max-size", "1k") == 0  # every good file is over 1 kB: one per shard
    assert [s["num_samples"] for s in manifest_of(tmp_path / "b")["shards"]] == [1] * len(GOOD_ALL)
    assert read_tars(tmp_path / "a")[1] == read_tars(tmp_path / "b")[1]  # same samples, same order


def test_rebuild_is_byte_identical_and_parallel_matches(raw, tmp_path):
    assert run(raw, tmp_path / "a", "--max-count", "2") == 0
    assert run(raw, tmp_path / "b", "--max-count", "2") == 0
    assert run(raw, tmp_path / "c", "--max-count", "2", "--workers", "2") == 0
    first = hashes(tmp_path / "a")
    assert len(first) == len(manifest_of(tmp_path / "a")["shards"]) > 1 and not any(name.endswith(".tmp") for name in first)
    assert hashes(tmp_path / "b") == first and hashes(tmp_path / "c") == first
    assert manifest_of(tmp_path / "c")["shards"] == manifest_of(tmp_path / "a")["shards"]
    assert manifest_of(tmp_path / "c")["skipped"] == manifest_of(tmp_path / "a")["skipped"]


def test_interrupted_build_leaves_complete_shards_and_rerun_recovers(raw, tmp_path, monkeypatch, capsys):
    clean = tmp_path / "clean"
    assert run(raw, clean, "--max-count", "2") == 0
    out = tmp_path / "out"
    assert run(raw, out, "--max-count", "1") == 0  # an earlier build with more shards
    earlier = sorted(p.name for p in out.glob("shard-*.tar"))
    (out / "shard-000099.tar.tmp").write_bytes(b"left by a killed run")
    real = audio.prepare

    def interrupted(path, relpath, options):
        if relpath == "speech/arctic_a0007.wav":  # the 5th candidate: in the third shard
            raise KeyboardInterrupt
        return real(path, relpath, options)

    spec = MODALITIES["audio"]
    monkeypatch.setitem(MODALITIES, "audio", replace(spec, builder=replace(spec.builder, prepare=interrupted)))
    assert run(raw, out, "--max-count", "2") == 130
    assert "interrupted" in capsys.readouterr().err
    # this run's first two shards are complete under their final names, with their records; the
    # third, half-written one was deleted; no manifest says the folder is unfinished
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp"))
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    assert (out / "shard-000001.stats.json").exists()
    assert json.loads((out / "shard-000002.stats.json").read_text())["files"] == 1  # still the earlier build's

    monkeypatch.setitem(MODALITIES, "audio", spec)
    assert run(raw, out, "--max-count", "2") == 0
    assert hashes(out) == hashes(clean)  # the earlier build's extra shards are gone
    assert (out / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert "2 shard(s) finished by an earlier run of this build were kept" in capsys.readouterr().out
    assert set(earlier) - set(hashes(clean))  # there were stale shards to remove


def test_transcode_gives_mono_16k_flac(raw, tmp_path):
    assert run(raw, tmp_path / "t", "--transcode") == 0
    samples, order = read_tars(tmp_path / "t")
    assert len(order) == len(GOOD_ALL)
    rates = set()
    for s in samples.values():
        assert set(s) == {"flac", "json"}
        wave, sr = sf.read(io.BytesIO(s["flac"]), always_2d=True)
        meta = json.loads(s["json"])
        assert sr == 16000 and wave.shape[1] == 1 and sf.info(io.BytesIO(s["flac"])).subtype == "PCM_16"
        assert (meta["format"], meta["sample_rate"], meta["channels"], meta["frames"]) == ("flac", 16000, 1, len(wave))
        source = raw / meta["source"]
        if source.suffix == ".wav":
            rates.add(sf.info(source).samplerate)
            assert len(wave) / sr == pytest.approx(sf.info(source).duration, abs=1e-3)
            assert np.abs(wave).max() > 0.05  # speech, not silence
    assert rates == {16000, 48000}


def test_labels_from_parent_and_csv(raw, tmp_path, caplog):
    assert run(raw, tmp_path / "p", "--label-from-parent") == 0
    metas = [json.loads(s["json"]) for s in read_tars(tmp_path / "p")[0].values()]
    assert {m["source"]: m["label"] for m in metas} == {p: p.split("/")[0] for p in GOOD_ALL}

    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], [GOOD[0], "female"], [f"alarm/{ALARM}", "reader"], ["alarm/clip.mp4", "male"]])
    with caplog.at_level(logging.WARNING):
        assert run(raw, tmp_path / "c", "--labels", str(table)) == 0
    metas = {m["source"]: m for m in (json.loads(s["json"]) for s in read_tars(tmp_path / "c")[0].values())}
    assert {p: m.get("label") for p, m in metas.items()} == {
        GOOD[0]: "female", GOOD[1]: None, GOOD[2]: None, f"alarm/{ALARM}": "reader", "alarm/clip.mp4": "male", DISGUISED: None,
    }
    assert "3 file(s) not in the labels CSV" in caplog.text  # once, with the count
    with pytest.raises(SystemExit) as exc:
        run(raw, tmp_path / "x", "--labels", str(table), "--label-from-parent")
    assert exc.value.code == 2


def test_exit_codes(tmp_path, capsys):
    useless = tmp_path / "useless"
    useless.mkdir()
    (useless / "bad.wav").write_bytes(b"")
    assert run(useless, tmp_path / "o") == 1
    assert "none of the 1 audio file(s)" in capsys.readouterr().err
    assert manifest_of(tmp_path / "o")["skipped"] == [{"path": "bad.wav", "reason": "empty file"}]

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "notes.txt").write_text("no audio here")
    assert run(nothing, tmp_path / "o2") == 1
    assert "no audio file under" in capsys.readouterr().err and not (tmp_path / "o2").exists()

    for argv in (
        ["--input", str(tmp_path / "missing")],
        ["--input", str(useless / "bad.wav")],
        ["--input", str(useless), "--max-size", "lots"],
        ["--input", str(useless), "--workers", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--modality", "audio", "--output", str(tmp_path / "o3"), *argv])
        assert exc.value.code == 2, argv
    assert "no such directory" in capsys.readouterr().err


def test_size_parsing():
    assert cli.parse_size("1e9") == 10**9
    assert cli.parse_size("500M") == 500 * 10**6
    assert cli.parse_size("2g") == 2 * 10**9
    assert cli.parse_size("512MiB") == 512 * 2**20
    assert cli.parse_size("1.5k") == 1500


@pytest.mark.parametrize(
    ("subtype", "fmt", "stored", "dtype"),
    [
        ("PCM_16", "WAV", True, "int16"),  # checked only: integer samples are finite by type
        ("PCM_24", "FLAC", True, "int16"),
        ("FLOAT", "WAV", True, "float32"),  # could hold NaN: converted and checked
        ("PCM_16", "WAV", False, "float32"),  # transcoded: resampled as floats
    ],
)
def test_stored_integer_audio_is_decoded_without_the_float_conversion(monkeypatch, subtype, fmt, stored, dtype):
    """Every frame is still decoded (a cut file is still found, see BAD); only the dtype differs."""
    signal = np.sin(np.arange(48_000) / 7.0).astype(np.float32)[:, None] * 0.5
    buffer = io.BytesIO()
    sf.write(buffer, signal, 16_000, format=fmt, subtype=subtype)
    asked = []
    real = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: asked.append(k.get("dtype")) or real(self, *a, **k))
    blocks, _ = audio.open_blocks(buffer.getvalue(), "." + fmt.lower(), stored=stored)
    frames = sum(len(block) for block, _ in audio.finite_blocks(blocks))
    assert frames == 48_000 and set(asked) == {dtype}
