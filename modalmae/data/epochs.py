"""Where each slot's part of an epoch comes from: the exact-mode cut, and, after an elastic
resume, the cut of what the stopped run left (see ``modalmae.data.stream`` for the whole story).

- ``Layout``: how a run cut and ordered its epochs (processes x workers, padding, shuffle).
- ``plan_slot``: one (rank, worker) slot's pieces of one epoch of one source, and its quota.
- ``Origin``: the run an elastic start continues. Which samples each of its slots consumed is
  replayed, not read: a slot's plan is a function of the layout, and its shuffle buffer's
  choices depend only on sample counts, so running the buffer on sample numbers (``shuffled``)
  gives the slot's order, of which its saved position says how much went.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from modalmae.data.shards import Piece, Remainder, ShardSet, epoch_order, exact_pieces, segment_length


@dataclass(frozen=True)
class Layout:
    """How a run cut and ordered its epochs: what replaying its consumption needs (with the
    seed and the shard sets, which an elastic resume keeps)."""

    world_size: int
    workers: int  # slots per rank (a loader with 0 workers reads as 1 slot)
    pad_to: int | None
    items_per_sample: int
    shuffle_buffer: int
    shuffle_shards: bool = True

    @property
    def num_slots(self) -> int:
        return self.world_size * self.workers

    def quota(self, longest: int) -> int | None:
        """Items every slot yields in an epoch whose longest segment holds ``longest`` samples."""
        if self.pad_to is None:
            return None
        return -(-longest * self.items_per_sample // self.pad_to) * self.pad_to

    def state(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SlotPlan:
    """One slot's part of one epoch of one source."""

    pieces: list[Piece]  # its segment, read once in a shuffled pass
    padding: list[Piece]  # what padding passes repeat: the segment, or a borrowed sample when it is empty
    length: int | None  # samples in ``pieces`` (None: shards of unknown size)
    quota: int | None  # items it yields (None: not padded; 0: nothing is left of this epoch)


def slot_seed(seed: int, source: int, epoch: int, rank: int, worker: int) -> str:
    return f"{seed}:{source}:{epoch}:{rank}:{worker}"


def plan_slot(shards: ShardSet, *, source: int, epoch: int, seed: int, layout: Layout, rank: int, worker: int, origin: Origin | None) -> SlotPlan:
    """Slot (rank, worker)'s part of ``epoch`` under ``layout``: its exact-mode segment, or, in an
    epoch the run continued from (``origin``) stopped in, its segment of what that run left."""
    slot = rank * layout.workers + worker
    if origin is not None and origin.covers(source, epoch):
        rest = origin.remainder(source, epoch, shuffle=layout.shuffle_shards)
        pieces = rest.pieces(slot, layout.num_slots)
        padding = pieces or (rest.borrowed(slot, layout.num_slots) if rest.size else [])
        quota = layout.quota(segment_length(rest.size, layout.num_slots)) if rest.size else (None if layout.pad_to is None else 0)
        return SlotPlan(pieces, padding, sum(p.take for p in pieces), quota)
    pieces = exact_pieces(
        shards, epoch=epoch, seed=seed, rank=rank, world_size=layout.world_size, worker=worker,
        num_workers=layout.workers, shuffle=layout.shuffle_shards,
    )
    if not shards.has_sizes:
        return SlotPlan(pieces, pieces, None, None)
    return SlotPlan(pieces, pieces, sum(p.take for p in pieces), layout.quota(segment_length(shards.num_samples, layout.num_slots)))


def finished(plan: SlotPlan, first: int, count: int) -> bool:
    """Whether a slot that consumed ``count`` items, up to sample ``first - 1``, is done with the epoch."""
    if plan.quota is not None:
        return count >= plan.quota
    return plan.length is not None and first >= plan.length


class Origin:
    """The run an elastic start continues (``ShardStream.continue_from``): its layout, every one
    of its ranks' ``StreamPosition`` state, the epoch its slots without a position started at
    (per source), and the run it continued in turn, if any of that still matters.

    For each source, that run consumed epochs before ``lo`` whole, epochs ``lo..hi`` in part
    (``bounds``) and nothing after. Which samples of a part-consumed epoch it consumed is
    replayed, not read: each slot's plan is a function of the layout (and of what the run before
    it left), and its shuffle buffer's choices depend only on sample counts, so running the
    buffer on sample numbers gives the slot's order, of which its position says how much went."""

    def __init__(self, state: dict, sources: list[ShardSet], seed: int) -> None:
        self.layout = Layout(**state["layout"])
        self.ranks: list[dict] = state["ranks"]
        self.start: list[int] = state["start"]
        if len(self.ranks) != self.layout.world_size or len(self.start) != len(sources):
            raise ValueError(
                f"a data origin of {len(self.ranks)} rank(s) and {len(self.start)} source(s) "
                f"for {self.layout.world_size} and {len(sources)}"
            )
        self.sources, self.seed = sources, seed
        self.older = None if state.get("origin") is None else Origin(state["origin"], sources, seed)
        self._bounds: dict[int, tuple[int, int]] = {}
        self._consumed: dict[tuple[int, int], dict[str, bytearray]] = {}
        self._remainders: dict[tuple[int, int, bool], Remainder] = {}

    def state(self) -> dict:
        return {
            "layout": self.layout.state(), "start": list(self.start), "ranks": self.ranks,
            "origin": None if self.older is None else self.older.state(),
        }

    def prune(self) -> None:
        """Forget the run before this one once it bears on no epoch this one reached: every
        position of this run, and the first epoch it had not finished, come after the last
        epoch the older run left in part (then neither the plans of this run's positions nor
        what is left depend on it)."""
        if self.older is None:
            return
        for source in range(len(self.sources)):
            reached = [pos["epoch"] for r, w in self._slots() if (pos := self._position(r, w, source)) is not None]
            if min([self.bounds(source)[0], *reached]) <= self.older.bounds(source)[1]:
                return
        self.older = None

    def _position(self, rank: int, worker: int, source: int) -> dict | None:
        slot = self.ranks[rank].get("slots", {}).get(str(worker))
        return None if slot is None else slot["sources"][source]

    def _slots(self) -> Iterator[tuple[int, int]]:
        return itertools.product(range(self.layout.world_size), range(self.layout.workers))

    def plan(self, source: int, epoch: int, rank: int, worker: int) -> SlotPlan:
        return plan_slot(
            self.sources[source], source=source, epoch=epoch, seed=self.seed, layout=self.layout, rank=rank, worker=worker,
            origin=self.older,
        )

    def bounds(self, source: int) -> tuple[int, int]:
        """(lo, hi): the epochs of ``source`` this run consumed only in part (none when hi < lo)."""
        if source not in self._bounds:
            lo, hi = None, -1 if self.older is None else self.older.bounds(source)[1]
            for rank, worker in self._slots():
                pos = self._position(rank, worker, source)
                if pos is None:
                    epoch = self.start[source]
                else:
                    hi = max(hi, pos["epoch"])
                    plan = self.plan(source, pos["epoch"], rank, worker)
                    epoch = pos["epoch"] + finished(plan, pos["index"] + 1, pos["count"])
                lo = epoch if lo is None else min(lo, epoch)
            self._bounds[source] = (lo, hi)
        return self._bounds[source]

    def covers(self, source: int, epoch: int) -> bool:
        lo, hi = self.bounds(source)
        return lo <= epoch <= hi

    def consumed(self, source: int, epoch: int) -> dict[str, bytearray]:
        """The samples of ``epoch`` this run and those before it consumed (url -> 1 per sample)."""
        key = (source, epoch)
        if key in self._consumed:
            return self._consumed[key]
        shards = self.sources[source]
        before = self.older.consumed(source, epoch) if self.older is not None and self.older.covers(source, epoch) else {}
        marks = {url: bytearray(m) for url, m in before.items()}
        for rank, worker in self._slots():
            pos = self._position(rank, worker, source)
            if pos is None or pos["epoch"] < epoch:
                continue  # the slot had not reached this epoch
            plan = self.plan(source, epoch, rank, worker)
            if pos["epoch"] > epoch:  # its whole segment
                for p in plan.pieces:
                    shard = marks.setdefault(p.url, bytearray(shards.sizes[p.url]))
                    if p.keep is None:
                        shard[p.skip : p.skip + p.take] = b"\x01" * p.take
                    else:
                        for n in p.keep:
                            shard[n] = 1
                continue
            # the first samples of its shuffled pass, as the stream gave them
            numbers = ((p.url, n) for p in plan.pieces for n in p.indices())
            order = shuffled(numbers, self.layout.shuffle_buffer, random.Random(slot_seed(self.seed, source, epoch, rank, worker) + ":0"))
            for url, n in itertools.islice(order, min(pos["index"] + 1, plan.length)):
                marks.setdefault(url, bytearray(shards.sizes[url]))[n] = 1
        self._consumed[key] = marks
        return marks

    def remainder(self, source: int, epoch: int, *, shuffle: bool) -> Remainder:
        key = (source, epoch, shuffle)
        if key not in self._remainders:
            shards = self.sources[source]
            order = epoch_order(shards.urls, epoch=epoch, seed=self.seed, shuffle=shuffle)
            self._remainders[key] = Remainder(shards, order, self.consumed(source, epoch))
        return self._remainders[key]


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Reservoir-style shuffle buffer: yields a random buffered item once ``size`` are held."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
