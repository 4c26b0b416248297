"""Resume at any stop point: a ``ShardStream`` started from the ``StreamPosition`` saved after k
batches continues with exactly the batches the uninterrupted stream gives after k. Elastic
resume, across runs of changing layouts, each continued from all ranks' positions of the one
before: every sample of every epoch once, the remainder in equal shares, then whole epochs.

The DataLoader is emulated without worker processes, as ``ShardStream.__iter__`` and the loader
behave: loader worker w serves slot ``(w + next_worker) % W`` and batch j comes from loader
worker ``j % W`` (tests/streaming/test_stream_resume.py checks the same through a real DataLoader)."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from hypothesis import assume, example, given
from hypothesis import strategies as st

from modalmae.data.shards import exact_pieces, resolve_shards
from modalmae.data.stream import ShardStream, StreamPosition, collate

from ._support import examples
from .shardsets import brace, copies_decoder, key_decoder, write_shards

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


# ----------------------------------------------------------------------------- elastic resume


def elastic_layouts(draw, fewest: int) -> dict:
    world = draw(st.integers(1, min(3, fewest)))
    workers = draw(st.integers(1, min(3, fewest // world)))
    return {"world": world, "workers": workers, "batch": draw(st.integers(1, 3)), "buffer": draw(st.integers(1, 4))}


@st.composite
def elastic_cases(draw):
    num_sources = draw(st.integers(1, 2))
    sources = [draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)) for _ in range(num_sources)]
    fewest = min(sum(s) for s in sources)
    hops = [elastic_layouts(draw, fewest) for _ in range(draw(st.integers(2, 3)))]
    assume(hops[-1] != hops[-2])  # the last run continues another layout (a same-layout hop may come before)
    return {
        "sources": sources, "hops": hops, "copies": draw(st.integers(1, 2)), "padded": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)), "shuffle": draw(st.booleans()),
        "weights": draw(st.lists(st.integers(1, 3), min_size=num_sources, max_size=num_sources)),
        # batches every rank of each stopped run consumed (the same on every rank: equal steps)
        "stops": [draw(st.integers(0, 10)) for _ in hops[:-1]],
    }


def slot_reads(stream: ShardStream, worker: int, workers: int, until: list[int]) -> Iterator[dict]:
    """What one slot of a run read to the end (emulated): its items up to the first one of an
    epoch after ``until`` in every source."""
    reached = [0] * len(until)
    for n, item in enumerate(stream.slot_items(worker, workers)):
        assert n < 5000, "the run does not get through its epochs"
        reached[item["__source__"]] = item["__epoch__"]
        if all(e > u for e, u in zip(reached, until)):
            return
        yield item


@examples(2)
@given(case=elastic_cases())
@example(case={  # the second run stops right at the end of the first one's remainder
    "sources": [[3, 3, 2]], "copies": 1, "padded": True, "seed": 1, "shuffle": True, "weights": [1], "stops": [1, 2],
    "hops": [{"world": 2, "workers": 2, "batch": 1, "buffer": 3}, {"world": 3, "workers": 1, "batch": 1, "buffer": 3},
             {"world": 2, "workers": 3, "batch": 1, "buffer": 3}],
})
def test_elastic_resume_gives_every_sample_of_the_interrupted_epochs_once_in_equal_shares(case):
    """Runs of changing layouts (processes, workers, batch size, shuffle buffer), each stopped
    after some batches and continued by the next from all its ranks' positions: over all of
    them every sample of every epoch is trained on exactly once; the last run cuts what was
    left into equal segments and equal quotas, then reads whole epochs of its own layout."""
    with tempfile.TemporaryDirectory() as tmp:
        sets, firsts = [], [0]
        for i, sizes in enumerate(case["sources"]):
            sets.append(resolve_shards(write_shards(Path(tmp) / f"src{i}", sizes, first=firsts[-1])))
            firsts.append(firsts[-1] + sum(sizes))
        copies, hops, last = case["copies"], case["hops"], len(case["hops"]) - 1

        def stream(hop: dict, rank: int) -> ShardStream:
            return ShardStream(
                sets if len(sets) > 1 else sets[0], copies_decoder(copies), weights=case["weights"], rank=rank,
                world_size=hop["world"], seed=case["seed"], shuffle_buffer=hop["buffer"], shuffle_shards=case["shuffle"],
                pad_to=hop["batch"] if case["padded"] else None, items_per_sample=copies,
            )

        # Item = (run, rank, worker, source, epoch, key, pad), for every item trained on.
        trained: list[tuple] = []
        states: list[dict] = []
        for run, hop in enumerate(hops):
            streams = [stream(hop, r) for r in range(hop["world"])]
            if run > 0:
                before = hops[run - 1]
                for r, s in enumerate(streams):
                    if hop == before:  # the same layout: each rank its own position, as before
                        s.start = states[r]
                    else:
                        s.continue_from(states, stream(before, 0).layout(before["workers"]))
            if run == last:
                break
            states = []
            for r, s in enumerate(streams):
                batches = loader_batches(s, hop["workers"], hop["batch"], case["stops"][run], s.start.get("next_worker", 0))
                position = StreamPosition(len(sets), hop["workers"], s.start)
                for b in batches:
                    position.update(b)
                    trained += [(run, r, *i) for i in zip(b["__worker__"], b["__source__"], b["__epoch__"], b["key"], b["__pad__"])]
                states.append(saved(position))
        # The last run reads to the end of the epoch after the last one any stopped run began.
        until = [max([i[4] for i in trained if i[3] == src], default=0) + 1 for src in range(len(sets))]
        new = hops[last]
        for r, s in enumerate(streams):
            for w in range(new["workers"]):
                read = slot_reads(s, w, new["workers"], until)
                trained += [(last, r, w, i["__source__"], i["__epoch__"], i["key"], i["__pad__"]) for i in read]

        new_slots = [(last, r, w) for r in range(new["world"]) for w in range(new["workers"])]
        for src, shards in enumerate(sets):
            keys = {f"s{n:05d}" for n in range(firsts[src], firsts[src + 1])}
            for epoch in range(until[src] + 1):
                items = [(i[:3], i[5], i[6]) for i in trained if i[3:5] == (src, epoch)]  # (slot, key, pad)
                givers: dict[str, set] = {}
                for slot, key, pad in items:
                    if not pad:
                        givers.setdefault(key, set()).add(slot)
                assert set(givers) == keys, f"source {src} epoch {epoch}: never trained on: {sorted(keys - set(givers))}"
                twice = {k: g for k, g in givers.items() if len(g) > 1}
                assert not twice, f"source {src} epoch {epoch}: trained on by several slots: {twice}"
                assert max(Counter((slot, key) for slot, key, pad in items if not pad).values()) <= copies, "a slot gave a sample again"
                # The last run's share of the epoch: equal segments (and, padded, equal quotas).
                if any(slot[0] == last for slot, _, _ in items):
                    segments = [len({k for sl, k, pad in items if sl == slot and not pad}) for slot in new_slots]
                    assert max(segments) - min(segments) <= 1, f"source {src} epoch {epoch}: unequal segments {segments}"
                    if case["padded"]:
                        counts = [sum(sl == slot for sl, _, _ in items) for slot in new_slots]
                        assert len(set(counts)) == 1 and counts[0] % new["batch"] == 0, f"unequal quotas {counts}"
                        # no more padding than the longest segment needs
                        assert counts[0] - new["batch"] < max(segments) * copies <= counts[0]
            # The epoch after those: whole, in the last layout's exact segments.
            starts = dict(zip(shards.urls, itertools.accumulate([firsts[src], *(shards.sizes[u] for u in shards.urls)])))
            for _, r, w in new_slots:
                pieces = exact_pieces(
                    shards, epoch=until[src], seed=case["seed"], rank=r, world_size=new["world"], worker=w,
                    num_workers=new["workers"], shuffle=case["shuffle"],
                )
                read = {i[5] for i in trained if i[:5] == (last, r, w, src, until[src]) and not i[6]}
                assert read == {f"s{starts[p.url] + n:05d}" for p in pieces for n in p.indices()}
