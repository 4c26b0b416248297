"""Re-encoded samples (video --short-side / --keyframe-interval, FLAC audio) are the same bytes
whichever process makes them, on however many cores, in whatever order."""

import json
import os
import re
import shutil
import subprocess
import sys

import av
import pytest
import soundfile as sf

from conftest import AUDIO, DATA, REPO, read_shards
from modalmae.shards import audio, build_shards, video

CLIP = DATA / "av" / "sintel_2s.mp4"  # H.264 854x480, 48 frames, MP3 stereo audio
SPEECH = AUDIO / "Front_Center.wav"  # 48 kHz: --transcode resamples it
VIDEO_OPTIONS = video.Options(short_side=240, keyframe_interval=8, extract_audio=True)

# Runs in a child process restricted to one CPU, so x264 and FFmpeg count one core there;
# prints the samples as json with their bytes in hex.
CHILD = """
import json, os, sys
from pathlib import Path
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from modalmae.shards import audio, video
clip, speech = Path(sys.argv[1]), Path(sys.argv[2])
samples = [
    video.prepare(clip, clip.name, video.Options(short_side=240, keyframe_interval=8, extract_audio=True)),
    audio.prepare(speech, speech.name, audio.Options(transcode=True)),
]
print(json.dumps([{"files": {k: v.hex() for k, v in s.files.items()}, "meta": s.meta} for s in samples]))
"""


def x264_settings(mp4: bytes) -> dict[str, str]:
    """The options x264 wrote into the stream it encoded (its SEI), name -> value."""
    start = mp4.index(b"x264 - core")
    text = mp4[start : mp4.index(b"\x00", start)].decode("ascii", "replace")
    return dict(re.findall(r"(\w+)=(\S+)", text.split(" options: ", 1)[1]))


def test_x264_runs_on_one_thread_without_mbtree_and_the_json_names_it():
    sample = video.prepare(CLIP, CLIP.name, VIDEO_OPTIONS)
    mp4 = sample.files["mp4"]
    settings = x264_settings(mp4)
    # What decided the bytes before: a thread per core slicing each frame, a threaded lookahead,
    # and macroblock-tree ratecontrol reading uninitialised memory.
    assert (settings["threads"], settings["lookahead_threads"], settings["sliced_threads"], settings["mbtree"]) == ("1", "1", "0", "0")
    assert b"Lavf" not in mp4  # no FFmpeg version string in the container
    core = re.search(rb"x264 - core (\d+)", mp4).group(1).decode()
    assert sample.meta["encoder"] == {
        "name": "libx264", "version": f"core {core}", "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "libavformat": ".".join(map(str, av.library_versions["libavformat"])),
        "libswscale": ".".join(map(str, av.library_versions["libswscale"])),
    }
    flac_meta = sample.meta["audio"]["encoder"]
    assert flac_meta["name"] == "libFLAC" and flac_meta["version"].startswith("reference libFLAC")
    assert flac_meta["version"] == audio.flac_vendor(sample.files["flac"]) and flac_meta["libsndfile"] == sf.__libsndfile_version__


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_same_bytes_on_one_core_as_on_all_and_after_other_work():
    """x264 left to itself counts the CPUs this process may use: a 1-CPU child and this process
    (2 CPUs on the dev machine) then encoded different bytes. This process has encoded other
    clips first, so its encoder state and stack differ from the fresh child's too."""
    for other in (DATA / "av" / "event_vp8_opus.webm", DATA / "video" / "carphone_pristine.mp4"):
        video.prepare(other, other.name, video.Options(short_side=96, extract_audio=True))
    here = [
        video.prepare(CLIP, CLIP.name, VIDEO_OPTIONS),
        audio.prepare(SPEECH, SPEECH.name, audio.Options(transcode=True)),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHILD, str(CLIP), str(SPEECH)], capture_output=True, text=True, env=env, check=True, timeout=120)
    there = json.loads(result.stdout.strip().splitlines()[-1])
    for mine, theirs in zip(here, there, strict=True):
        assert {k: v.hex() for k, v in mine.files.items()} == theirs["files"]
        assert mine.meta == theirs["meta"]
    assert set(here[0].files) == {"mp4", "flac"} and set(here[1].files) == {"flac"}


def test_builds_with_one_and_two_workers_give_identical_shards(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(CLIP, raw / "sintel.mp4")
    shutil.copy(DATA / "av" / "event_vp8_opus.webm", raw / "event.webm")
    tars = []
    for workers in (1, 2, 2):
        out = tmp_path / f"out{len(tars)}"
        manifest = build_shards(builder=video.BUILDER, input_dir=raw, output_dir=out, options=VIDEO_OPTIONS, workers=workers, progress=False)
        assert manifest["num_samples"] == 2 and not manifest["skipped"]
        tars.append({p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))})
    assert tars[0] == tars[1] == tars[2]
    samples, _ = read_shards(tmp_path / "out0")
    assert all(json.loads(s["json"])["transcoded"] and "flac" in s for s in samples.values())
