"""Shared test fixtures: paths to the real media shipped in tests/data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
AUDIO = DATA / "audio"
REPO = Path(__file__).parent.parent

# Two cores: keep torch from oversubscribing when pytest and loader workers share them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def audio_dir() -> Path:
    return AUDIO


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
