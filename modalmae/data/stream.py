"""A modality-agnostic shard stream: slot's samples -> shuffle buffer -> decode -> items.

``ShardStream`` is an ``IterableDataset`` that runs in DataLoader workers. Each (rank, worker)
slot reads only its own part of each epoch (``modalmae.data.shards``), epoch after epoch. A
decoder is a plain function of a raw sample and a ``random.Random`` returning an item (or a list
of items: several clips of one video); a sample it cannot decode is counted and skipped.

Equal steps. With ``pad_to=batch_size`` and a manifest, every slot's epoch holds exactly the same
number of items, a multiple of the batch size: the slot's segment once (a pass, shuffled), then
as much of its start again as needed (less than a batch: segments differ by at most one sample;
items marked ``__pad__``, decoded with other augmentations). The
DataLoader takes one batch from each worker in turn, so a rank's epoch ends exactly at a batch
boundary and every rank runs the same number of steps per epoch. The stream never ends (unless
``epochs`` is given), so no rank waits at an epoch end for another.

Determinism. Every random choice comes from a generator seeded by (seed, source, epoch, rank,
worker): the shuffle buffer's with one generator per pass, and each sample's augmentation with
one of its own (seeded by its position), so the same seed and world size give the same items.

Resume. Items carry their position (``__worker__``, ``__source__``, ``__epoch__``,
``__index__``: the sample's place in the slot's epoch); ``StreamPosition`` follows what the
training loop consumed, and a stream built with that ``start`` continues right after it. The
samples before the position are not decoded again: the shuffle buffer's choices depend only on
sample counts, so they are replayed on placeholders, and shards whose samples all came out
before the position are not even opened. The position is exact to the sample (of a
multi-item decoder, the rest of a sample whose first items were consumed is dropped). Without
a manifest the samples before the position are read again, though not decoded.

Elastic resume. A position holds for its own layout (processes x workers, batch size, shuffle
buffer, items per sample). ``continue_from`` starts a stream of another layout from the
positions of ALL ranks of the stopped run: since each slot's order is a function of (seed,
source, epoch, rank, worker, layout), the same replay run on sample numbers says exactly which
samples (shard, number in shard) each old slot consumed, without reading a shard. For each
source, the first epoch not finished on every old slot (and any later one some slot began)
goes on with the samples no old slot consumed: in the epoch's line order, cut into equal
contiguous segments for the new slots (``modalmae.data.epochs``, ``shards.Remainder``), each slot padded to the same
quota (a slot whose segment is empty, with fewer samples left than slots, pads with one
borrowed sample), so every rank still runs the same number of steps; later epochs are the new
layout's own. The new positions carry the old run (``origin``), so a resume in the new layout
stays exact, and a further elastic resume replays both (an origin is dropped once no epoch it
left in part is still ahead of any slot).

Mixing. Given several shard sets (and weights), each worker draws the source of every item at
random with those weights; each source keeps its own epochs and positions.

Verification. A shard whose manifest gives its sha256 is checked whole before any of its samples
is used (``verify=False`` turns this off): a shard that does not match is reported and gives
none, its samples counted as skipped like those of any unreadable shard.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from modalmae.data.alloc import tune_worker
from modalmae.data.epochs import Layout, Origin, SlotPlan, finished, plan_slot, shuffled, slot_seed
from modalmae.data.shards import Piece, ShardSet, resampled_pieces, segment_length, shards_per_rank

log = logging.getLogger(__name__)

SampleDecoder = Callable[[dict, random.Random], "dict | list[dict]"]  # raw sample -> item(s)


class CastFloats:
    """A sample decoder whose floating tensors under ``keys`` leave it as ``dtype`` when they are
    wider (fp32 -> bf16; fp16 stays fp16, no narrower to cast to): a run that
    trains in bf16 ships its inputs in bf16, half the bytes through the loader's shared memory.
    ``modalmae.modalities.model_input`` makes them fp32 again on the device, so the model sees
    its inputs rounded to the precision it trains in (autocast rounds them so for its first
    matrix product anyway; the reconstruction targets are now rounded too)."""

    def __init__(self, decode: SampleDecoder, keys: Sequence[str], dtype: torch.dtype) -> None:
        self.decode, self.keys, self.dtype = decode, tuple(keys), dtype

    def __call__(self, sample: dict, rng: random.Random) -> dict | list[dict] | None:
        decoded = self.decode(sample, rng)
        for item in decoded if isinstance(decoded, list) else [] if decoded is None else [decoded]:
            for key in self.keys:
                value = item.get(key)
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.element_size() > self.dtype.itemsize:
                    item[key] = value.to(self.dtype)
        return decoded


class _Missing:
    """Stands for a sample a shard did not give (truncated or unreadable): counted as skipped."""


class _Passed:
    """Stands for a sample of a shard not reopened on resume (it came out before the position)."""


MISSING, PASSED = _Missing(), _Passed()


class ShardStream(IterableDataset):
    def __init__(
        self,
        shards: ShardSet | Sequence[ShardSet],
        decode: SampleDecoder | Sequence[SampleDecoder],
        *,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        epochs: int | None = None,
        resampled: bool = False,
        pad_to: int | None = None,
        items_per_sample: int = 1,
        start: dict | None = None,
        verify: bool = True,
    ) -> None:
        """``shards``/``decode``: one source, or one decoder per source (or one for all).
        ``weights``: how often each source is drawn (default: in proportion to its samples when
        every manifest gives them, else equally). ``pad_to``: pad each slot's epoch to the same
        multiple of this (the batch size) so every rank runs the same steps; needs manifests.
        ``start``: a ``StreamPosition.state()`` of this rank to continue from. ``verify``: check
        each shard against its manifest's sha256 (when it has one) before using its samples."""
        super().__init__()
        self.sources = [shards] if isinstance(shards, ShardSet) else list(shards)
        decoders = [decode] * len(self.sources) if callable(decode) else list(decode)
        if len(decoders) != len(self.sources):
            raise ValueError(f"{len(decoders)} decoders for {len(self.sources)} shard sets")
        for source in self.sources:
            if not source.urls:
                raise ValueError(f"{source.name or 'shard set'}: no shards")
            if not resampled and not source.has_sizes and shards_per_rank(len(source.urls), rank=rank, world_size=world_size) == 0:
                raise ValueError(
                    f"{source.name}: {len(source.urls)} shard(s) without a manifest cannot feed {world_size} ranks: "
                    f"every rank needs one. Use the folder with its manifest.json, or fewer processes."
                )
            if source.has_sizes and source.num_samples < world_size:
                raise ValueError(f"{source.name}: {source.num_samples} samples cannot feed {world_size} ranks")
        if weights is None:
            known = all(s.num_samples for s in self.sources)
            weights = [s.num_samples if known else 1.0 for s in self.sources]
        if len(weights) != len(self.sources) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per shard set ({len(self.sources)}), got {list(weights)}")
        self.decoders, self.weights = decoders, [w / sum(weights) for w in weights]
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.shuffle_shards, self.epochs = shuffle_buffer, shuffle_shards, epochs
        self.resampled, self.pad_to, self.items_per_sample = resampled, pad_to, items_per_sample
        self.start, self.verify = start, verify

    @property
    def start(self) -> dict:
        """Where this rank's stream continues from: a ``StreamPosition.state()``."""
        return self._start

    @start.setter
    def start(self, start: dict | None) -> None:
        self._start = start or {}
        origin = self._start.get("origin")
        self._origin = None if origin is None else Origin(origin, self.sources, self.seed)

    def layout(self, num_workers: int) -> Layout:
        """This stream's layout with ``num_workers`` loader workers per rank."""
        return Layout(
            world_size=self.world_size, workers=max(1, num_workers), pad_to=None if self.resampled else self.pad_to,
            items_per_sample=self.items_per_sample, shuffle_buffer=self.shuffle_buffer, shuffle_shards=self.shuffle_shards,
        )

    def continue_from(self, states: list[dict], layout: Layout) -> None:
        """Start where a run of another ``layout`` (processes, workers, batch size, shuffle
        buffer) stopped, given ``states``: the ``StreamPosition.state()`` of every one of its
        ranks, in rank order (the same list on every rank of this run).

        Each source goes on with the first epoch that run had not finished on every slot: the
        samples of it no slot consumed are cut afresh into this stream's slots (equal segments,
        padded to the same quota), as are those of any later epoch some slot had begun; then
        whole epochs follow. Raises ValueError when the run cannot be replayed."""
        if self.resampled:
            raise ValueError("a resampled stream has no epochs to continue")
        if any(not s.has_sizes for s in self.sources):
            raise ValueError("continuing another layout's epoch needs every shard's size (a manifest)")
        if len(states) != layout.world_size:
            raise ValueError(f"{len(states)} rank position(s) for a run of {layout.world_size}")
        # The run being continued may itself have continued another: one copy of that origin
        # (the same in every rank's state) goes along, for the epochs it still bears on.
        older = next((s["origin"] for s in states if s.get("origin")), None)
        starts = [0] * len(self.sources)
        if older is not None:
            starts = [Origin(older, self.sources, self.seed).bounds(i)[0] for i in range(len(self.sources))]
        ranks = [{"next_worker": s.get("next_worker", 0), "slots": s.get("slots", {})} for s in states]
        origin = Origin({"layout": layout.state(), "start": starts, "ranks": ranks, "origin": older}, self.sources, self.seed)
        origin.prune()
        self.start = {"origin": origin.state()}

    def _start_epoch(self, source: int) -> int:
        """Where a slot without a position for ``source`` begins: the first epoch the run this
        stream continues had not finished (0 for a fresh stream)."""
        return 0 if self._origin is None else self._origin.bounds(source)[0]

    def remainder(self, num_workers: int) -> tuple[int, int] | None:
        """For a single padded source started by ``continue_from``: (the items this rank reads
        before its first whole epoch, that epoch). None for other streams."""
        if len(self.sources) > 1 or self.quota(0, num_workers) is None:
            return None
        if self._origin is None:
            return 0, 0
        layout, (lo, hi) = self.layout(num_workers), self._origin.bounds(0)
        items = sum(self._plan(0, e, 0, num_workers).quota for e in range(lo, hi + 1)) * layout.workers
        return items, max(lo, hi + 1)

    def _plan(self, source: int, epoch: int, worker: int, num_workers: int) -> SlotPlan:
        return plan_slot(
            self.sources[source], source=source, epoch=epoch, seed=self.seed, layout=self.layout(num_workers), rank=self.rank,
            worker=worker, origin=self._origin,
        )

    def max_workers(self) -> int:
        """Workers each rank can use: every slot must get at least one sample (or shard)."""
        return min(
            s.num_samples // self.world_size if s.has_sizes else shards_per_rank(len(s.urls), rank=self.rank, world_size=self.world_size)
            for s in self.sources
        )

    def quota(self, source: int, num_workers: int) -> int | None:
        """Items every slot yields per epoch of ``source`` (None: no equal-length epochs)."""
        shards = self.sources[source]
        if self.pad_to is None or self.resampled or not shards.has_sizes:
            return None
        return self.layout(num_workers).quota(segment_length(shards.num_samples, self.world_size * max(1, num_workers)))

    def items_per_epoch(self, num_workers: int) -> int | None:
        """Items one rank consumes per epoch of a single padded source, else None."""
        quota = self.quota(0, num_workers) if len(self.sources) == 1 else None
        return None if quota is None else quota * max(1, num_workers)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The DataLoader always asks worker 0 first: on resume, loader worker 0 takes the role
        # of the slot whose batch came next, so the interleaving continues unbroken.
        yield from self.slot_items((worker + self.start.get("next_worker", 0)) % num_workers, num_workers)

    def slot_items(self, worker: int, num_workers: int) -> Iterator[dict]:
        """The items of this rank's slot ``worker`` of ``num_workers`` (what that worker yields)."""
        start = self.start.get("slots", {}).get(str(worker), {})
        positions = start.get("sources") or [None] * len(self.sources)
        streams = [
            self._source_items(i, worker, num_workers, positions[i] or {}) for i in range(len(self.sources))
        ]
        if len(streams) == 1:
            yield from streams[0]
            return
        # Mixing: one draw per item from a per-slot generator, replayed up to the start position.
        rng = random.Random(f"{self.seed}:mix:{self.rank}:{worker}")
        for _ in range(start.get("mixed", 0)):
            rng.random()
        live, weights = list(range(len(streams))), list(self.weights)
        while live:
            i = rng.choices(range(len(live)), weights=weights)[0]
            try:
                yield next(streams[live[i]])
            except StopIteration:  # only with ``epochs``: this source is done
                del live[i], weights[i]

    def _source_items(self, source: int, worker: int, num_workers: int, position: dict) -> Iterator[dict]:
        shards, decode = self.sources[source], self.decoders[source]
        epoch = position.get("epoch", self._start_epoch(source))
        first, count = position.get("index", -1) + 1, position.get("count", 0)
        skipped = 0
        while self.epochs is None or epoch < self.epochs:
            plan = None if self.resampled else self._plan(source, epoch, worker, num_workers)
            if plan is not None and finished(plan, first, count):  # the position was the epoch's last item, or nothing is left of it
                epoch, first, count = epoch + 1, 0, 0
                continue
            quota = None if plan is None else plan.quota
            # A run of failures this long holds a whole pass: padding would cycle forever.
            give_up_after = 2 * max(plan.length, sum(p.take for p in plan.padding)) if plan and plan.length is not None else None
            slot = slot_seed(self.seed, source, epoch, self.rank, worker)
            since_decoded, decoded_any = 0, False
            for index, sample, pad in self._epoch_samples(shards, plan, worker, slot, first):
                if index < first:
                    continue  # consumed before the resume position
                if sample is MISSING:
                    decoded = None
                else:
                    try:
                        decoded = decode(sample, random.Random(f"{slot}:{index}"))
                    except Exception as e:  # noqa: BLE001 - a bad sample must never stop training
                        decoded = None
                        log.warning("skipping sample %s in %s: %s: %s", sample.get("__key__"), sample.get("__url__"), type(e).__name__, e)
                if decoded is None:
                    skipped, since_decoded = skipped + 1, since_decoded + 1
                    if give_up_after and since_decoded >= give_up_after:
                        self._give_up(shards, epoch, worker)
                        return
                    continue
                since_decoded, decoded_any = 0, True
                # A decoder may return several items per sample (repeated augmentation).
                for item in decoded if isinstance(decoded, list) else [decoded]:
                    item.update(
                        __key__=sample["__key__"], __url__=sample["__url__"], __epoch__=epoch, __index__=index,
                        __source__=source, __worker__=worker, __pad__=pad, num_skipped=skipped,
                    )
                    skipped, count = 0, count + 1
                    yield item
                    if quota is not None and count >= quota:
                        break
                if quota is not None and count >= quota:
                    break
            if not decoded_any and first == 0:
                self._give_up(shards, epoch, worker)
                return
            epoch, first, count = epoch + 1, 0, 0

    def _give_up(self, shards: ShardSet, epoch: int, worker: int) -> None:
        """A slot none of whose samples decode would loop forever: it ends, and says why."""
        log.error(
            "%s: rank %d worker %d could not read or decode any sample of its part of epoch %d (see the warnings "
            "above); this worker stops", shards.name, self.rank, worker, epoch,
        )

    def _epoch_samples(self, shards: ShardSet, plan: SlotPlan | None, worker: int, slot: str, first: int) -> Iterator[tuple[int, Any, bool]]:
        """(index, raw sample | MISSING | PASSED, is padding) of one slot's epoch, in order."""
        if plan is None:  # resampled: one endless pass
            def pieces() -> Iterator[Piece]:
                return resampled_pieces(shards, seed=self.seed, rank=self.rank, worker=worker)

            yield from ((i, s, False) for i, s in enumerate(self._pass(pieces, f"{slot}:0", first, shards.has_sizes)))
            return
        if plan.length is None:  # whole shards of unknown length: one pass
            yield from ((i, s, False) for i, s in enumerate(self._pass(lambda: iter(plan.pieces), f"{slot}:0", first, False)))
            return
        if first < plan.length:  # the segment, shuffled
            for i, sample in enumerate(self._pass(lambda: iter(plan.pieces), f"{slot}:0", first, True)):
                yield i, sample, False
        cycle = sum(p.take for p in plan.padding)
        if plan.quota is None or not cycle:
            return
        # Padding passes repeat the segment from its start, unshuffled: a shuffle buffer would
        # read the whole segment again to hand out the few samples a padding pass needs. Passes
        # before the one holding ``first`` are skipped without a look.
        for p in itertools.count(max(1, 1 + (first - plan.length) // cycle)):
            offset = plan.length + (p - 1) * cycle
            for i, sample in enumerate(self._pass(lambda: iter(plan.padding), f"{slot}:{p}", first - offset, True, 1)):
                yield offset + i, sample, True

    def _pass(self, pieces: Callable[[], Iterable[Piece]], seed: str, first: int, sizes_known: bool, buffer: int | None = None) -> Iterator:
        """One shuffled pass over ``pieces()``; samples before ``first`` may come out as PASSED."""
        buffer = self.shuffle_buffer if buffer is None else buffer
        passed = _passed_pieces(pieces(), seed, first, buffer) if sizes_known and first > 0 else set()
        yield from shuffled(_samples(pieces(), passed, verify=self.verify), buffer, random.Random(seed))


def _samples(pieces: Iterable[Piece], passed: set[int], *, verify: bool) -> Iterator[dict | _Missing | _Passed]:
    """Raw samples of each piece in turn; unreadable, corrupt or short pieces end in MISSING markers.

    Python's tarfile treats a header cut short as the end of the archive, so a truncated shard
    can end silently: the manifest's count is what reveals the missing samples. A shard failing
    its checksum (``verify``) gives no sample: all of its piece is MISSING.
    """
    for p, piece in enumerate(pieces):
        if p in passed:
            yield from itertools.repeat(PASSED, piece.take)
            continue
        count = 0
        try:
            for sample in piece.read(verify=verify):
                count += 1
                yield sample
        except Exception as e:  # noqa: BLE001 - a truncated or unreadable shard is skipped, not fatal
            log.warning("stopped reading shard %s after %d samples: %s: %s", piece.url, count, type(e).__name__, e)
        if piece.take is not None and count < piece.take:
            log.warning("shard %s gave %d of the %d samples its manifest lists", piece.url, count, piece.take)
            yield from itertools.repeat(MISSING, piece.take - count)


def _passed_pieces(pieces: Iterable[Piece], seed: str, first: int, buffer: int) -> set[int]:
    """Pieces all of whose samples come out of the shuffle before position ``first``.

    The shuffle buffer draws depend on how many samples arrive, not on what they are, so
    running it on piece numbers with the same generator replays the order exactly.
    """
    sizes: list[int] = []

    def numbers() -> Iterator[int]:
        for p, piece in enumerate(pieces):
            sizes.append(piece.take)
            yield from itertools.repeat(p, piece.take)

    out: Counter[int] = Counter()
    for n, p in enumerate(shuffled(numbers(), buffer, random.Random(seed))):
        if n >= first:
            break
        out[p] += 1
    return {p for p, c in out.items() if c == sizes[p]}


class StreamPosition:
    """What the training loop consumed of each (worker, source): a ``ShardStream`` ``start``.

    ``state()`` is JSON: {"next_worker": the slot whose batch comes next, "slots": {"<worker>":
    {"mixed": items, "sources": [{"epoch", "index", "count"} or None per source]}}, and, after
    an elastic start (``ShardStream.continue_from``), "origin": the run it continued, carried
    along unchanged (this rank's slots' epochs may be cut from what that run left)}.
    """

    def __init__(self, num_sources: int, num_workers: int, state: dict | None = None) -> None:
        self.num_sources, self.num_workers = num_sources, max(1, num_workers)
        state = state or {}
        self.next_worker = state.get("next_worker", 0)
        self.slots: dict[str, dict] = {
            w: {"mixed": s["mixed"], "sources": list(s["sources"])} for w, s in state.get("slots", {}).items()
        }
        self.origin = state.get("origin")

    def update(self, batch: dict) -> None:
        self.next_worker = (batch["__worker__"][-1] + 1) % self.num_workers
        for worker, source, epoch, index in zip(batch["__worker__"], batch["__source__"], batch["__epoch__"], batch["__index__"]):
            slot = self.slots.setdefault(str(worker), {"mixed": 0, "sources": [None] * self.num_sources})
            slot["mixed"] += 1
            pos = slot["sources"][source]
            if pos is None or pos["epoch"] != epoch:
                pos = slot["sources"][source] = {"epoch": epoch, "index": index, "count": 0}
            pos["index"], pos["count"] = index, pos["count"] + 1

    def state(self) -> dict:
        slots = {w: {"mixed": s["mixed"], "sources": [None if p is None else dict(p) for p in s["sources"]]} for w, s in self.slots.items()}
        state = {"next_worker": self.next_worker, "slots": slots}
        if self.origin is not None:
            state["origin"] = self.origin
        return state


def collate(items: list[dict]) -> dict[str, Any]:
    """Stack tensors, list everything else, and sum the per-item skip counts.

    Tensors go through ``default_collate``, which in a worker stacks straight into shared
    memory, saving a copy of every batch on its way to the training process.
    """
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "num_skipped":
            batch[key] = sum(values)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = default_collate(values)
        else:
            batch[key] = values
    return batch


def make_loader(stream: ShardStream, *, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream``; workers are capped so every one has samples to read (the
    cap is the same on every rank when the shards have a manifest), and each raises glibc's
    malloc thresholds as it starts (``modalmae.data.alloc``: the audio loader ran 1.04x and
    1.08x faster in two runs of benchmarks/audio_throughput.py)."""
    available = stream.max_workers()
    if num_workers > available:
        log.warning("rank %d can feed %d loader worker(s), not %d: using %d", stream.rank, available, num_workers, available)
        num_workers = available
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=tune_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
