"""Shared test fixtures: paths to the real media shipped in tests/data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
AUDIO = DATA / "audio"
REPO = Path(__file__).parent.parent

# Two cores: keep torch from oversubscribing when pytest and loader workers share them.
# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) one thread: its workers are forked, and
# a child forked after OpenMP threads have run hangs at its first parallel op.
torch.set_num_threads(1 if os.environ.get("MUTANT_UNDER_TEST") else max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Under mutation testing, the fastest tests first: mutmut runs a mutant's tests with -x, so a
    failing test found early ends the run (times from mutmut's own stats run, in mutants/)."""
    stats = Path("mutmut-stats.json")
    if not os.environ.get("MUTANT_UNDER_TEST") or not stats.is_file():
        return
    seconds = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: seconds.get(item.nodeid, float("inf")))


@pytest.fixture
def audio_dir() -> Path:
    return AUDIO


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The speech clips of tests/data/audio as audio shards of 2 samples each (8 samples)."""
    out = tmp_path_factory.mktemp("shards") / "speech"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "audio", "--input", str(AUDIO), "--output", str(out), "--max-count", "2", "--workers", "1", "--quiet"]) == 0
    return out


def load_script(relative: str):
    """Import a CLI script (pipelines/*.py, recipes/*.py) as a module, to call its main(argv)."""
    import importlib.util

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def read_shards(folder) -> tuple[dict[str, dict[str, bytes]], list[str]]:
    """{key: {ext: bytes}} of every ``shard-*.tar`` in ``folder``, and the keys in shard order."""
    import tarfile

    samples, order = {}, []
    for tar_path in sorted(Path(folder).glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if key not in samples:
                    order.append(key)
                assert ext not in samples.setdefault(key, {}), f"{m.name} twice"
                samples[key][ext] = tar.extractfile(m).read()
    return samples, order


def moving_bar(path, fmt: str, *, codec: str = "mpeg4", frames: int = 12):
    """A short 64 x 48 clip of a white bar moving right, encoded with PyAV; returns ``path``."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            picture = np.zeros((48, 64, 3), np.uint8)
            picture[:, 4 * i : 4 * i + 8] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    return path


def huge_video() -> bytes:
    """A real 8192 x 8192 video of 2 frames (QuickTime Animation, grey: 670 kB, made in 0.2 s);
    decoded as 16-frame RGB float clips it would ask for 16 x 8192^2 x 3 x 4 bytes = 12.9 GB."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mov") as out:
        stream = out.add_stream("qtrle", rate=2)
        stream.width = stream.height = 8192
        stream.pix_fmt = "gray"
        frame = av.VideoFrame(8192, 8192, "gray")
        frame.planes[0].update(bytes(frame.planes[0].buffer_size))
        for pts in range(2):
            frame.pts = pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()
