"""Resume at any stop point: a ``ShardStream`` started from the ``StreamPosition`` saved after k
batches continues with exactly the batches the uninterrupted stream gives after k.

The DataLoader is emulated without worker processes, as ``ShardStream.__iter__`` and the loader
behave: loader worker w serves slot ``(w + next_worker) % W`` and batch j comes from loader
worker ``j % W`` (tests/streaming/test_stream.py checks the same through a real DataLoader)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from modalmae.data.shards import resolve_shards
from modalmae.data.stream import ShardStream, StreamPosition, collate

from ._support import examples
from .shardsets import brace, key_decoder, write_shards

FIELDS = ("key", "draw", "__key__", "__url__", "__epoch__", "__index__", "__worker__", "__source__", "__pad__")


def loader_batches(stream: ShardStream, workers: int, batch_size: int, count: int, next_worker: int = 0) -> list[dict]:
    """The first ``count`` batches a DataLoader with ``workers`` workers (0: in-process) gives."""
    slots = max(1, workers)
    its = [stream.slot_items((w + next_worker) % slots, slots) for w in range(slots)]
    out = []
    for j in itertools.count():
        if len(out) == count:
            return out
        chunk = list(itertools.islice(its[j % slots], batch_size))
        assert chunk, "the stream ended"  # endless streams here
        out.append(collate(chunk))


def rows(batches: list[dict]) -> list[tuple]:
    return [tuple(b[f][i] for f in FIELDS) for b in batches for i in range(len(b["__key__"]))]


def saved(position: StreamPosition) -> dict:
    """The position as a checkpoint stores it: through JSON."""
    state = json.loads(json.dumps(position.state()))
    assert StreamPosition(position.num_sources, position.num_workers, state).state() == state
    return state


@st.composite
def resume_cases(draw):
    num_sources = draw(st.integers(1, 2))
    sources = [draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)) for _ in range(num_sources)]
    manifest = draw(st.booleans())
    resampled = draw(st.booleans())
    fewest = min(sum(s) if manifest else len(s) for s in sources)
    world = draw(st.integers(1, min(2, fewest)))
    rank = draw(st.integers(0, world - 1))
    feeds = min((sum(s) if manifest else len(range(rank, len(s), world))) // (1 if not manifest else world) for s in sources)
    workers = draw(st.integers(0, min(3, max(0, feeds))))
    return {
        "sources": sources, "manifest": manifest, "resampled": resampled, "world": world, "rank": rank, "workers": workers,
        "batch": draw(st.integers(1, 4)), "padded": draw(st.booleans()), "buffer": draw(st.integers(1, 5)),
        "shuffle": draw(st.booleans()), "seed": draw(st.integers(0, 1000)),
        "weights": draw(st.lists(st.integers(1, 4), min_size=num_sources, max_size=num_sources)),
        "stops": sorted(draw(st.lists(st.integers(0, 16), min_size=1, max_size=3))),
        "more": draw(st.integers(1, 12)),
    }


@examples(5)
@given(case=resume_cases())
def test_resume_from_any_saved_position_continues_the_same_batches(case):
    with tempfile.TemporaryDirectory() as tmp:
        sets, first = [], 0
        for i, sizes in enumerate(case["sources"]):
            folder = write_shards(Path(tmp) / f"src{i}", sizes, manifest=case["manifest"], first=first)
            first += sum(sizes)
            sets.append(resolve_shards(folder if case["manifest"] else brace(folder, len(sizes))))
        workers, batch = case["workers"], case["batch"]

        def stream(start=None) -> ShardStream:
            return ShardStream(
                sets if len(sets) > 1 else sets[0], key_decoder, weights=case["weights"], rank=case["rank"],
                world_size=case["world"], seed=case["seed"], shuffle_buffer=case["buffer"], shuffle_shards=case["shuffle"],
                resampled=case["resampled"], pad_to=batch if case["padded"] else None, start=start,
            )

        stops = case["stops"]
        whole = loader_batches(stream(), workers, batch, stops[-1] + case["more"])
        # Stop at the first point, resume, stop again at the next from the resumed run, and so on.
        position, start, done = StreamPosition(len(sets), workers), None, 0
        for stop in stops:
            resumed = loader_batches(stream(start), workers, batch, stop - done + case["more"], (start or {}).get("next_worker", 0))
            assert rows(resumed) == rows(whole[done:stop + case["more"]]), f"resumed after {done} batches: not the same items"
            for b in resumed[: stop - done]:
                position.update(b)
            start = saved(position)
            position = StreamPosition(len(sets), workers, start)
            done = stop


def test_resume_after_the_last_item_of_an_unpadded_epoch(tmp_path):
    """Without pad_to, a position at a slot's last item of an epoch goes on with the next epoch
    (it once replayed the segment as padding of the old one)."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [2]))
    whole = loader_batches(ShardStream(shards, key_decoder, shuffle_buffer=1), 0, 1, 4)
    position = StreamPosition(1, 0)
    for b in whole[:2]:  # the epoch's two samples
        position.update(b)
    resumed = loader_batches(ShardStream(shards, key_decoder, shuffle_buffer=1, start=position.state()), 0, 1, 2)
    assert [b["__epoch__"] for b in resumed] == [[1], [1]]
    assert rows(resumed) == rows(whole[2:])
