"""Small shard sets for the streaming tests: tars of numbered samples, a decoder, and readers."""

import io
import json
import tarfile

import torch


def write_shards(folder, sizes, *, manifest=True):
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    n = 0
    for i, size in enumerate(sizes):
        name = f"shard-{i:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for _ in range(size):
                for ext, payload in (("txt", str(n).encode()), ("json", json.dumps({"i": n}).encode())):
                    info = tarfile.TarInfo(f"s{n:05d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                n += 1
        entries.append({"name": name, "num_samples": size, "bytes": (folder / name).stat().st_size})
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"modality": "test", "num_samples": n, "shards": entries}))
    return folder


def decode(sample, rng):
    if sample["txt"] == b"13":
        raise ValueError("corrupt")
    return {"value": torch.tensor(int(sample["txt"]))}


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def keys_of(batches):
    return [(k, pad) for b in batches for k, pad in zip(b["__key__"], b["__pad__"])]
