"""Finding shards, assigning them to (rank, worker) slots, and reading samples out of them.

Each DataLoader worker of each rank reads only the shards of its own slot: the shard list is
permuted once per epoch with a seed every rank shares, each rank takes every R-th shard of it
and each of its W workers every W-th of those. No rank opens, let alone decodes, a shard it
would throw away (the failure modes of ``Accelerator.prepare`` on iterable datasets and of
webdataset's default splitters are listed in DESIGN.md).
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from braceexpand import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_iterator

from modalmae.data.schema import MANIFEST_NAME, SHARD_PATTERN

SHARD_GLOB = SHARD_PATTERN.replace("{index:06d}", "[0-9]" * 6)


@dataclass
class ShardSet:
    """The shards of one dataset and what its manifest says about them."""

    urls: list[str]
    num_samples: int | None = None  # from the manifest; None when there is none
    sizes: dict[str, int] = field(default_factory=dict)  # url -> samples in it
    modality: str | None = None


def _from_manifest(path: Path) -> ShardSet:
    try:
        manifest = json.loads(path.read_text())
        shards = manifest["shards"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable modalmae manifest ({e})") from e
    urls = [str(path.parent / s["name"]) for s in shards]
    return ShardSet(
        urls=urls,
        num_samples=int(manifest["num_samples"]),
        sizes={u: int(s["num_samples"]) for u, s in zip(urls, shards)},
        modality=manifest.get("modality"),
    )


def resolve_shards(spec: str | os.PathLike) -> ShardSet:
    """A folder (its manifest.json, else its *.tar when they are not build_shards output), a
    manifest file, or a brace pattern.

    ``shards/speech``, ``shards/speech/manifest.json`` and
    ``shards/speech/shard-{000000..000003}.tar`` all name the same shards; only the first two
    know the epoch length.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(path / MANIFEST_NAME)
        if glob.glob(str(path / SHARD_GLOB)):
            # build_shards deletes the manifest when it starts and writes it last: these shards
            # may mix an interrupted build with an older one.
            raise FileNotFoundError(
                f"{spec}: shards without {MANIFEST_NAME}, so their build did not finish; rerun "
                f"build_shards.py, or name the shards with a brace pattern to use them anyway"
            )
        urls = sorted(glob.glob(str(path / "*.tar")))
        if not urls:
            raise FileNotFoundError(f"{spec}: folder has neither {MANIFEST_NAME} nor *.tar shards")
        return ShardSet(urls=urls)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: manifest not found")
        return _from_manifest(path)
    urls = list(braceexpand(spec))
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, first: {missing[0]}")
    return ShardSet(urls=urls)


def slot_shards(urls: list[str], *, epoch: int, seed: int, rank: int, world_size: int, worker: int, num_workers: int, shuffle: bool = True) -> list[str]:
    """The shards that (rank, worker) reads in ``epoch``; disjoint slots covering every shard.

    Ranks take every ``world_size``-th shard of the epoch's order (their counts differ by at
    most one), and a rank's workers split its list the same way, so ranks may run different
    numbers of workers without ever sharing a shard.
    """
    order = list(urls)
    if shuffle:
        # Same permutation on every rank: it depends on (seed, epoch) only.
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[rank::world_size][worker::num_workers]


def shards_per_rank(num_shards: int, *, rank: int, world_size: int) -> int:
    return len(range(rank, num_shards, world_size))


def iter_shard(url: str) -> Iterator[dict]:
    """Raw samples of one tar: {"__key__", "__url__", ext: bytes, ...}; no decoding at all."""
    with wds.gopen(url, "rb") as stream:
        files = tar_file_iterator(stream)
        for sample in group_by_keys(({**f, "__url__": url} for f in files)):
            yield sample
