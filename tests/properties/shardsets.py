"""Small real shard folders for the stream properties (not a test module)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def write_shards(folder: Path, sizes: list[int], *, manifest: bool = True, first: int = 0) -> Path:
    """Tars ``shard-000000.tar``, ... holding ``sizes[i]`` samples each (keys ``s00000``, ...,
    numbered from ``first``; one ``txt`` member with the number), and a manifest with checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    entries, n = [], first
    for i, size in enumerate(sizes):
        name = f"shard-{i:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for _ in range(size):
                payload = str(n).encode()
                info = tarfile.TarInfo(f"s{n:05d}.txt")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                n += 1
        data = (folder / name).read_bytes()
        entries.append({"name": name, "num_samples": size, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"modality": "test", "num_samples": n - first, "shards": entries}))
    return folder


def brace(folder: Path, count: int) -> str:
    """The brace pattern naming the ``count`` shards of ``folder`` (no manifest, no sizes)."""
    return str(folder / f"shard-{{000000..{count - 1:06d}}}.tar")


def key_decoder(sample: dict, rng) -> dict:
    """The least a decoder can be: the sample's key (and a draw of its generator)."""
    return {"key": sample["__key__"], "draw": rng.random()}


def copies_decoder(copies: int):
    """A decoder giving ``copies`` items per sample (repeated augmentation)."""

    def decode(sample: dict, rng) -> list[dict]:
        return [{"key": sample["__key__"], "copy": c} for c in range(copies)]

    return decode
