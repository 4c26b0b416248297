"""Resuming the streaming dataset: exactly where the consumed batches stopped, with the same layout
or another one (elastic: other numbers of processes and workers), on small tars."""

import itertools

import pytest
import torch
from stream_data import decode, keys_of, take, write_shards

from modalmae.data.shards import ShardSet, resolve_shards
from modalmae.data.stream import ShardStream, StreamPosition, collate, make_loader


def run_position(batches, workers=1):
    position = StreamPosition(1, workers)
    for b in batches:
        position.update(b)
    return position.state()


@pytest.mark.parametrize("workers,resampled", [(0, False), (2, False), (2, True)])
def test_resume_continues_exactly_where_the_consumed_batches_stopped(tmp_path, workers, resampled):
    shards = resolve_shards(write_shards(tmp_path / "ds", [6, 6, 6, 5]))
    kw = {"rank": 1, "world_size": 2, "seed": 3, "pad_to": 2, "shuffle_buffer": 4, "resampled": resampled}

    def batches(start=None, n=None):
        loader = make_loader(ShardStream(shards, decode, start=start, **kw), batch_size=2, num_workers=workers)
        return list(itertools.islice(loader, n))

    whole = batches(n=14)  # into the second epoch (6 batches each)
    first = whole[:5]
    rest = batches(start=run_position(first, workers), n=9)
    assert keys_of(first + rest) == keys_of(whole)  # the same items, in the same order
    assert [b["__index__"] for b in first + rest] == [b["__index__"] for b in whole]


def test_resume_does_not_reopen_shards_already_consumed(tmp_path):
    from modalmae.data import remote

    shards = resolve_shards(write_shards(tmp_path / "ds", [5] * 6))
    stream = ShardStream(shards, decode, seed=0, shuffle_buffer=2, shuffle_shards=False)
    items = take(stream, 17)  # shards 0-2 are done (buffer 2), shard 3 is being read
    remote.BYTES_READ.clear()
    state = run_position([collate(items)])
    resumed = take(ShardStream(shards, decode, seed=0, shuffle_buffer=2, shuffle_shards=False, start=state), 12)
    assert {i["__key__"] for i in resumed}.isdisjoint(i["__key__"] for i in items)
    assert len(resumed) + len(items) == 29  # the rest of the epoch (sample 13 is corrupt)
    opened = {url.rsplit("/", 1)[1] for url in remote.BYTES_READ}
    assert "shard-000000.tar" not in opened and "shard-000001.tar" not in opened


def elastic_layout(world, workers=1, **kw):
    return ShardStream(ShardSet(urls=["x"]), decode, world_size=world, **kw).layout(workers)


def elastic_start(shards, consumed, kw):
    """Two ranks continuing the one-process run that yielded ``consumed``: per rank, the first
    whole epoch of the new layout and the items it reads before it."""
    starts = []
    for rank in range(2):
        stream = ShardStream(shards, decode, rank=rank, world_size=2, **kw)
        stream.continue_from([run_position([collate(consumed)])], elastic_layout(1, **kw))
        count, first_whole = stream.remainder(1)
        starts.append((first_whole, take(stream, count)))
    return starts


def test_an_elastic_start_opens_only_the_shards_with_samples_left(tmp_path):
    """One process stops two shards into the epoch; two continue with what is left of it,
    opening only the shards that hold some of it, and between them give each such sample once."""
    from modalmae.data import remote

    shards = resolve_shards(write_shards(tmp_path / "ds", [5] * 6))
    kw = {"seed": 0, "shuffle_buffer": 2, "shuffle_shards": False, "pad_to": 1}
    consumed = take(ShardStream(shards, decode, **kw), 17)  # shards 0-1 are done (buffer 2), shard 3 is being read
    remote.BYTES_READ.clear()
    starts = elastic_start(shards, consumed, kw)
    assert [first_whole for first_whole, _ in starts] == [1, 1]
    rest = [i for _, items in starts for i in items if not i["__pad__"]]
    assert sorted(int(i["value"]) for i in consumed + rest) == [v for v in range(30) if v != 13]  # 13 is corrupt
    opened = {url.rsplit("/", 1)[1] for url in remote.BYTES_READ}
    assert opened == {i["__url__"].rsplit("/", 1)[1] for i in rest}
    assert opened.isdisjoint({"shard-000000.tar", "shard-000001.tar"})


def test_positions_keep_only_the_runs_that_still_bear_on_what_is_left(tmp_path):
    """Each elastic start carries the run it continues; that run's own origin goes along only
    while one of its part-consumed epochs is not behind every slot of the run (so a position
    stays small however many times a run is resumed elastically)."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [4, 4, 4]))
    kw = {"seed": 1, "shuffle_buffer": 3, "pad_to": 1}

    def run(world, steps, before=None):
        states = []
        for rank in range(world):
            stream = ShardStream(shards, decode, rank=rank, world_size=world, **kw)
            if before is not None:
                stream.continue_from(*before)
            position = StreamPosition(1, 1, stream.start)
            if steps:
                position.update(collate(take(stream, steps)))
            states.append(position.state())
        return states, elastic_layout(world, **kw)

    def depth(state):
        origin, n = state.get("origin"), 0
        while origin is not None:
            origin, n = origin["origin"], n + 1
        return n

    first = run(2, 2)  # 2 x 2 of epoch 0's 12 samples
    inside = run(3, 1, first)  # 8 left over 3 slots: each stops inside its share
    assert depth(inside[0][0]) == 1
    assert depth(run(2, 0, inside)[0][0]) == 2  # what is left of epoch 0 still depends on the first run
    past = run(3, 4, first)  # through the share of epoch 0 (3 items each) into epoch 1
    assert depth(run(2, 0, past)[0][0]) == 1  # epoch 0 is behind every slot: the first run is forgotten


def test_the_remainder_is_what_is_left_of_the_interrupted_epoch_only(tmp_path):
    """remainder(): (0, 0) for a stream that continues nothing, None without equal epochs (no
    padding, or several sources), and after a run stopped in its second epoch, the items left of
    that epoch alone: the two new ranks read them, each sample once, and the next whole epoch is 2."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [5] * 6))
    kw = {"seed": 0, "shuffle_buffer": 2, "shuffle_shards": False, "pad_to": 1}
    assert ShardStream(shards, decode, **kw).remainder(1) == (0, 0)
    assert ShardStream(shards, decode, seed=0).remainder(1) is None
    assert ShardStream([shards, shards], decode, **kw).remainder(1) is None
    consumed = take(ShardStream(shards, decode, **kw), 29 + 12)  # the whole first epoch (13 is corrupt), then 12
    assert {int(i["__epoch__"]) for i in consumed} == {0, 1}
    starts = elastic_start(shards, consumed, kw)
    assert [first_whole for first_whole, _ in starts] == [2, 2]
    assert {int(i["__epoch__"]) for _, items in starts for i in items} == {1}
    rest = [i for _, items in starts for i in items if not i["__pad__"]]
    second = [int(i["value"]) for i in consumed if i["__epoch__"] == 1] + [int(i["value"]) for i in rest]
    assert sorted(second) == [v for v in range(30) if v != 13]


def value_of(sample, rng):
    return {"value": torch.tensor(int(sample["txt"]))}


def loader_batches(stream, workers, steps, batch_size=2):
    """The first ``steps`` batches a DataLoader with ``workers`` workers takes from ``stream`` (one
    from each worker in turn), read in this process."""
    slots = [stream.slot_items(w, workers) for w in range(workers)]
    return [collate([next(slots[step % workers]) for _ in range(batch_size)]) for step in range(steps)]


@pytest.mark.parametrize("world,workers,quota", [(3, 1, 4), (2, 2, 2)])
def test_continue_from_recuts_what_the_stopped_run_left_over_the_new_slots(tmp_path, world, workers, quota):
    """2 processes x 2 workers (batch 2) stop 3 steps into an epoch of 20 samples: each rank took
    2 batches from worker 0 and 1 from worker 1, 12 samples in all. A run of another layout
    continues: the 8 samples left, and only those, are cut into even segments (8 over 3 slots:
    3, 3, 2; over 4: 2 each), and every slot yields the same quota, its segment padded to a
    multiple of the batch (ceil(3 / 2) * 2 = 4; 2), before the next whole epoch: every rank runs
    the same number of steps. The new positions carry the old ranks' positions along."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [5, 5, 5, 5]))
    kw = {"seed": 2, "shuffle_buffer": 3, "pad_to": 2}
    states, consumed = [], []
    for rank in range(2):
        old = ShardStream(shards, value_of, rank=rank, world_size=2, **kw)
        position = StreamPosition(1, 2)
        for batch in loader_batches(old, 2, 3):
            position.update(batch)
            consumed += batch["value"].tolist()
        states.append(position.state())
    assert states[0]["next_worker"] == 1 and len(set(consumed)) == 12
    rest, per_rank, segments = [], [], []
    for rank in range(world):
        stream = ShardStream(shards, value_of, rank=rank, world_size=world, **kw)
        stream.continue_from(states, old.layout(2))
        assert stream.start["origin"]["ranks"] == states
        items, first_whole = stream.remainder(workers)
        per_rank.append(items)
        assert first_whole == 1
        for w in range(workers):
            slot = stream.slot_items(w, workers)
            mine = [next(slot) for _ in range(quota)]
            assert {i["__epoch__"] for i in mine} == {0} and next(slot)["__epoch__"] == 1
            real = [int(i["value"]) for i in mine if not i["__pad__"]]
            rest += real
            segments.append(len(real))
    assert per_rank == [quota * workers] * world  # the same steps on every rank
    assert sorted(consumed + rest) == list(range(20))  # nothing consumed seen again, nothing lost
    assert sorted(segments) == sorted(8 * (s + 1) // (world * workers) - 8 * s // (world * workers) for s in range(world * workers))


def test_continue_from_reads_an_empty_rank_state_as_a_rank_that_consumed_nothing(tmp_path):
    """A rank's state may be empty (a stream's ``start`` before any step): it stands for
    StreamPosition's state of nothing consumed, and the whole epoch is still ahead."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [3, 3]))
    stream = ShardStream(shards, value_of, seed=0, pad_to=1, epochs=1)
    stream.continue_from([{}], stream.layout(1))
    assert stream.start["origin"]["ranks"] == [StreamPosition(1, 1).state()]
    assert sorted(int(i["value"]) for i in stream) == list(range(6))


def test_continue_from_refuses_a_run_it_cannot_replay(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [3, 3]))
    layout = elastic_layout(2)
    with pytest.raises(ValueError, match="^a resampled stream has no epochs to continue$"):
        ShardStream(shards, decode, resampled=True).continue_from([{}, {}], layout)
    with pytest.raises(ValueError, match=r"^continuing another layout's epoch needs every shard's size \(a manifest\)$"):
        ShardStream(ShardSet(urls=shards.urls), decode).continue_from([{}, {}], layout)
    with pytest.raises(ValueError, match=r"^1 rank position\(s\) for a run of 2$"):
        ShardStream(shards, decode).continue_from([{}], layout)


def test_position_records_each_slots_count_and_the_next_worker():
    """After a batch from worker w of n, the next one comes from (w + 1) mod n; each slot keeps
    its own count and last index per source and epoch."""
    position = StreamPosition(1, 3)
    batch = {"__worker__": [0, 0], "__source__": [0, 0], "__epoch__": [0, 0], "__index__": [4, 5]}
    position.update(batch)
    assert position.next_worker == 1
    position.update({**batch, "__worker__": [2, 2], "__index__": [0, 1]})
    assert position.next_worker == 0
    for workers in (0, 1):  # loading in the main process is one slot, slot 0, every time
        alone = StreamPosition(1, workers)
        alone.update(batch)
        assert (alone.num_workers, alone.next_worker) == (1, 0)
    assert position.state()["slots"] == {
        "0": {"mixed": 2, "sources": [{"epoch": 0, "index": 5, "count": 2}]},
        "2": {"mixed": 2, "sources": [{"epoch": 0, "index": 1, "count": 2}]},
    }
