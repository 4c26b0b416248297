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

What a stopped run left of an epoch (``Remainder``: the epoch's line without the samples it
consumed) is cut the same way, into equal contiguous segments for the slots of the run that
continues it with another layout (an elastic resume, ``modalmae.data.stream``); a shard with
consumed samples among its remaining ones is read once over, keeping only those (``Piece.keep``).

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand

from modalmae.data.remote import Checksum, is_remote, iter_shard, open_url, shard_url
from modalmae.formats.schema import MANIFEST_NAME, SHARD_PATTERN

__all__ = ["Piece", "Remainder", "ShardSet", "exact_pieces", "iter_shard", "resampled_pieces", "resolve_shards"]

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
    """Samples ``skip .. skip + take`` of one shard (``take`` None: to its end, count unknown).

    ``keep``: the piece of an epoch's remainder (see ``Remainder``) has holes where samples were
    already consumed; it then gives only these sample numbers (sorted, the first is ``skip``),
    ``take`` of them, read in one go over the shard."""

    url: str
    skip: int = 0
    take: int | None = None
    checksum: Checksum | None = None  # the whole shard's, from its manifest
    keep: tuple[int, ...] | None = None

    def indices(self) -> Sequence[int]:
        """The shard's sample numbers this piece gives, in order (needs a known ``take``)."""
        return self.keep if self.keep is not None else range(self.skip, self.skip + self.take)

    def read(self, *, verify: bool = True) -> Iterator[dict]:
        """The samples; with ``verify`` and a checksum, only once the whole shard matches it."""
        checksum = self.checksum if verify else None
        if self.keep is None:
            return iter_shard(self.url, skip=self.skip, take=self.take, checksum=checksum)
        return self._read_kept(checksum)

    def _read_kept(self, checksum: Checksum | None) -> Iterator[dict]:
        # One read over the span (the holes are few: the samples a shuffle buffer had handed out
        # near a slot's stop), rather than one opening of the shard per run of kept samples.
        wanted = set(self.keep)
        span = iter_shard(self.url, skip=self.skip, take=self.keep[-1] - self.skip + 1, checksum=checksum)
        for number, sample in enumerate(span, start=self.skip):
            if number in wanted:
                yield sample


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


@dataclass
class Remainder:
    """What is left of one epoch once a stopped run consumed some of its samples: the epoch's
    line (``order``: its shards in the epoch's order, their samples end to end) without those,
    to be cut like a whole epoch into equal contiguous segments, one per slot of the run that
    continues it. Left with nothing consumed, the cut is ``exact_pieces``'s.

    ``consumed``: url -> one byte per sample of that shard, 1 where consumed (a bitmap, not a
    set of numbers: an epoch may hold millions of samples)."""

    shards: ShardSet
    order: list[str]
    consumed: dict[str, bytearray]

    def __post_init__(self) -> None:
        self.left = [self.shards.sizes[u] - (self.consumed[u].count(1) if u in self.consumed else 0) for u in self.order]
        self.size = sum(self.left)  # samples left in the epoch

    def pieces(self, slot: int, num_slots: int) -> list[Piece]:
        """Slot ``slot``'s segment of the remainder (empty when fewer samples are left than slots)."""
        return self._between(slot * self.size // num_slots, (slot + 1) * self.size // num_slots)

    def borrowed(self, slot: int, num_slots: int) -> list[Piece]:
        """What an empty segment pads with: the one sample left at its cut point (a repeat: the
        slot whose segment holds it reads it as well)."""
        at = slot * self.size // num_slots % self.size
        return self._between(at, at + 1)

    def _between(self, start: int, end: int) -> list[Piece]:
        pieces, offset = [], 0
        for url, left in zip(self.order, self.left):
            lo, hi = max(start, offset), min(end, offset + left)
            if lo < hi:
                marks = self.consumed.get(url)
                numbers = range(self.shards.sizes[url]) if marks is None else [i for i, m in enumerate(marks) if not m]
                pieces.append(_piece(url, numbers[lo - offset : hi - offset], self.shards.checksums.get(url)))
            offset += left
            if offset >= end:
                break
        return pieces


def _piece(url: str, numbers: Sequence[int], checksum: Checksum | None) -> Piece:
    """A piece giving these sample numbers (sorted) of one shard: a plain range when they follow on."""
    if numbers[-1] - numbers[0] + 1 == len(numbers):
        return Piece(url, numbers[0], len(numbers), checksum)
    return Piece(url, numbers[0], len(numbers), checksum, keep=tuple(numbers))


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
