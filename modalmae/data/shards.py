"""Finding shards and planning which samples each (rank, worker) slot reads.

Exact mode (the default, with a manifest): every epoch the shards are put in an order shared by
all ranks (a permutation seeded by (seed, epoch)), their N samples laid end to end, and the line
cut into ``R x W`` contiguous segments, one per slot (rank r's worker w is slot ``r * W + w``).
Every *sample* is decoded by exactly one slot per epoch, and the segments differ by at most one
sample, so padding every slot to the same batch count costs less than a batch. A shard that
straddles two segments is opened by both slots, the second seeking past (or, remote, reading
without decoding) the first one's samples: a rank reads at most its share plus one shard.
Giving whole shards to slots instead would make the slots' lengths differ by up to a shard,
which equal steps per epoch would have to pad with re-read shards.

Without sample counts (a brace pattern, no manifest) slots get whole shards: rank r takes
every R-th shard of the epoch's order and its workers every W-th of those.

Resampled mode: each slot draws whole shards with replacement, from a generator seeded by
(seed, rank, worker), without end.

A manifest is data: the shards it names are checked (``remote.shard_url``: no ``pipe:``, nothing
outside its folder), and their checksums travel with the pieces, to be verified when read.

No rank opens, let alone decodes, data of another rank's share beyond those boundary shards.
(``Accelerator.prepare`` on an iterable dataset would instead dispatch every batch from rank 0,
or make every rank read the whole stream and keep 1/n; webdataset's default node splitter
refuses more than one process.)
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand

from modalmae.data.remote import Checksum, is_remote, iter_shard, open_url, shard_url
from modalmae.formats.schema import MANIFEST_NAME, SHARD_PATTERN

__all__ = ["Piece", "ShardSet", "exact_pieces", "iter_shard", "resampled_pieces", "resolve_shards"]

SHARD_GLOB = SHARD_PATTERN.replace("{index:06d}", "[0-9]" * 6)


@dataclass
class ShardSet:
    """The shards of one dataset and what its manifest says about them."""

    urls: list[str]
    num_samples: int | None = None  # from the manifest; None when there is none
    sizes: dict[str, int] = field(default_factory=dict)  # url -> samples in it
    modality: str | None = None
    name: str = ""  # what the user named it (the spec), for messages and per-source metrics
    checksums: dict[str, Checksum] = field(default_factory=dict)  # url -> its bytes' sha256, from the manifest

    @property
    def has_sizes(self) -> bool:
        return bool(self.urls) and all(u in self.sizes for u in self.urls)


def _from_manifest(location: str, spec: str) -> ShardSet:
    """A manifest file or URL; its shard names are relative to it, or data sources' URLs."""
    try:
        with open_url(location) as f:
            manifest = json.loads(f.read())
        shards = manifest["shards"]
        names = [s["name"] for s in shards]
        num_samples, sizes = int(manifest["num_samples"]), [int(s["num_samples"]) for s in shards]
        checksums = [Checksum(s["sha256"], int(s["bytes"])) if "sha256" in s else None for s in shards]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{location}: not a readable modalmae manifest ({type(e).__name__}: {e})") from e
    urls = [shard_url(location, name) for name in names]
    return ShardSet(
        urls=urls,
        num_samples=num_samples,
        sizes=dict(zip(urls, sizes)),
        modality=manifest.get("modality"),
        name=spec,
        checksums={u: c for u, c in zip(urls, checksums) if c is not None},
    )


def resolve_shards(spec: str | os.PathLike, *, modality: str | tuple[str, ...] | None = None) -> ShardSet:
    """A folder (its manifest.json, else its *.tar when they are not build_shards output), a
    manifest file, or a brace pattern; each may also be a URL (``https://host/ds/``,
    ``s3://bucket/ds/manifest.json``, ``pipe:...``; see ``modalmae.data.remote``).

    ``shards/speech``, ``shards/speech/manifest.json`` and
    ``shards/speech/shard-{000000..000003}.tar`` all name the same shards; only the first two
    know the epoch length. A remote URL ending in ``/`` names the folder holding a manifest.
    ``modality``: the kind(s) of shards the caller reads; a manifest saying otherwise is an error.
    """
    shards = _resolve(spec)
    kinds = (modality,) if isinstance(modality, str) else modality
    if kinds and shards.modality is not None and shards.modality not in kinds:
        modality = kinds[0]
        raise ValueError(
            f"{shards.name}: these are {shards.modality} shards (says their manifest.json), but this run reads "
            f"{modality} shards; build {modality} shards with build_shards.py --modality {modality}"
        )
    return shards


def _resolve(spec: str | os.PathLike) -> ShardSet:
    if isinstance(spec, (list, tuple)):
        raise TypeError("resolve_shards takes one spec; resolve each of a list (pretrain() resolves cfg.shards itself)")
    spec = str(spec)
    if is_remote(spec):
        if spec.endswith(".json"):
            return _from_manifest(spec, spec)
        if spec.endswith("/"):
            return _from_manifest(spec + MANIFEST_NAME, spec)
        return ShardSet(urls=list(braceexpand(spec)), name=spec)
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(str(path / MANIFEST_NAME), spec)
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
        return ShardSet(urls=urls, name=spec)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: manifest not found")
        return _from_manifest(spec, spec)
    urls = list(braceexpand(spec))
    missing = [u for u in urls if not is_remote(u) and not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, first: {missing[0]}")
    return ShardSet(urls=urls, name=spec)


@dataclass(frozen=True)
class Piece:
    """Samples ``skip .. skip + take`` of one shard (``take`` None: to its end, count unknown)."""

    url: str
    skip: int = 0
    take: int | None = None
    checksum: Checksum | None = None  # the whole shard's, from its manifest

    def read(self, *, verify: bool = True) -> Iterator[dict]:
        """The samples; with ``verify`` and a checksum, only once the whole shard matches it."""
        return iter_shard(self.url, skip=self.skip, take=self.take, checksum=self.checksum if verify else None)


def epoch_order(urls: list[str], *, epoch: int, seed: int, shuffle: bool = True) -> list[str]:
    """The shard order of ``epoch``; the same on every rank (it depends on (seed, epoch) only)."""
    order = list(urls)
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def exact_pieces(shards: ShardSet, *, epoch: int, seed: int, rank: int, world_size: int, worker: int, num_workers: int, shuffle: bool = True) -> list[Piece]:
    """What (rank, worker) reads in ``epoch`` in exact mode (see the module docstring)."""
    order = epoch_order(shards.urls, epoch=epoch, seed=seed, shuffle=shuffle)
    if not shards.has_sizes:
        return [Piece(u, checksum=shards.checksums.get(u)) for u in order[rank::world_size][worker::num_workers]]
    total = sum(shards.sizes[u] for u in order)
    slot, num_slots = rank * num_workers + worker, world_size * num_workers
    start, end = slot * total // num_slots, (slot + 1) * total // num_slots
    pieces, offset = [], 0
    for url in order:
        size = shards.sizes[url]
        lo, hi = max(start, offset), min(end, offset + size)
        if lo < hi:
            pieces.append(Piece(url, lo - offset, hi - lo, shards.checksums.get(url)))
        offset += size
    return pieces


def segment_length(num_samples: int, num_slots: int) -> int:
    """The longest exact-mode segment: ceil(N / slots)."""
    return -(-num_samples // num_slots)


def resampled_pieces(shards: ShardSet, *, seed: int, rank: int, worker: int) -> Iterator[Piece]:
    """Whole shards drawn with replacement, without end, from a per-(rank, worker) generator."""
    rng = random.Random(f"{seed}:resampled:{rank}:{worker}")
    while True:
        url = rng.choice(shards.urls)
        yield Piece(url, 0, shards.sizes.get(url), shards.checksums.get(url))


def shards_per_rank(num_shards: int, *, rank: int, world_size: int) -> int:
    return len(range(rank, num_shards, world_size))
