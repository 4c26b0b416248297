"""Exact epochs over generated shard sizes, ranks, workers and batch sizes: the slots' pieces of
an epoch read every sample exactly once, in equal segments, and padding gives every rank the
same number of items (at the piece level, then on small real shards). What is left of an
epoch after a stop (an elastic resume's remainder) is cut the same way."""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import assume, given
from hypothesis import strategies as st

from modalmae.data.remote import Checksum
from modalmae.data.shards import (
    Piece,
    Remainder,
    ShardSet,
    epoch_order,
    exact_pieces,
    resolve_shards,
    segment_length,
    shards_per_rank,
)
from modalmae.data.stream import ShardStream

from ._support import examples
from .shardsets import copies_decoder, write_shards

seeds = st.integers(0, 2**31 - 1)


@st.composite
def shard_sets(draw, *, empty_shards: bool = True, checksums: bool = False):
    sizes = draw(st.lists(st.integers(0 if empty_shards else 1, 12), min_size=1, max_size=8))
    assume(sum(sizes) > 0)
    urls = [f"/data/part {i}/shard-{i:06d}.tar" for i in range(len(sizes))]
    sums = {u: Checksum(f"{i:064x}", 1000 + i) for i, u in enumerate(urls) if checksums and i % 2 == 0}
    return ShardSet(urls=urls, num_samples=sum(sizes), sizes=dict(zip(urls, sizes)), checksums=sums)


def epoch_samples(shards: ShardSet, order: list[str], pieces) -> list[int]:
    """The place in the epoch's line of every sample ``pieces`` read, in reading order."""
    starts, offset = {}, 0
    for url in order:
        starts[url] = offset
        offset += shards.sizes[url]
    return [starts[p.url] + i for p in pieces for i in range(p.skip, p.skip + p.take)]


@examples(3)
@given(
    shards=shard_sets(checksums=True), world=st.integers(1, 4), workers=st.integers(1, 4), epoch=st.integers(0, 5), seed=seeds,
    shuffle=st.booleans(),
)
def test_exact_pieces_cut_the_epoch_into_equal_contiguous_segments(shards, world, workers, epoch, seed, shuffle):
    total, slots = shards.num_samples, world * workers
    order = epoch_order(shards.urls, epoch=epoch, seed=seed, shuffle=shuffle)
    line, lengths = [], []
    for rank in range(world):
        for worker in range(workers):
            pieces = exact_pieces(
                shards, epoch=epoch, seed=seed, rank=rank, world_size=world, worker=worker, num_workers=workers, shuffle=shuffle,
            )
            for p in pieces:
                assert p.take is not None and p.take >= 1 and p.skip >= 0 and p.skip + p.take <= shards.sizes[p.url]
                assert p.checksum == shards.checksums.get(p.url)
            assert len({p.url for p in pieces}) == len(pieces), "a shard opened twice by one slot"
            mine = epoch_samples(shards, order, pieces)
            assert mine == list(range(len(line), len(line) + len(mine))), "a slot's samples are no contiguous segment"
            line += mine
            lengths.append(len(mine))
    assert line == list(range(total))  # slot after slot: every sample of the epoch exactly once
    assert max(lengths) - min(lengths) <= 1 and max(lengths) == segment_length(total, slots)
    if total >= slots:
        assert min(lengths) >= 1


@examples(2)
@given(urls=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=10, unique=True), epoch=st.integers(0, 50), seed=seeds)
def test_epoch_order_is_a_permutation_shared_by_every_rank(urls, epoch, seed):
    order = epoch_order(urls, epoch=epoch, seed=seed)
    assert sorted(order) == sorted(urls)
    assert order == epoch_order(list(urls), epoch=epoch, seed=seed)  # depends on (seed, epoch) only
    assert epoch_order(urls, epoch=epoch, seed=seed, shuffle=False) == urls


@examples(2)
@given(num_shards=st.integers(1, 12), world=st.integers(1, 5), workers=st.integers(1, 4), epoch=st.integers(0, 3), seed=seeds)
def test_without_sizes_slots_share_whole_shards(num_shards, world, workers, epoch, seed):
    urls = [f"s{i}.tar" for i in range(num_shards)]
    shards = ShardSet(urls=urls)
    seen = []
    for rank in range(world):
        mine = [
            p for w in range(workers)
            for p in exact_pieces(shards, epoch=epoch, seed=seed, rank=rank, world_size=world, worker=w, num_workers=workers)
        ]
        assert all(p.skip == 0 and p.take is None for p in mine)
        assert len(mine) == shards_per_rank(num_shards, rank=rank, world_size=world)
        seen += [p.url for p in mine]
    assert sorted(seen) == sorted(urls)
    counts = [shards_per_rank(num_shards, rank=r, world_size=world) for r in range(world)]
    assert sum(counts) == num_shards and max(counts) - min(counts) <= 1


@examples(3)
@given(
    shards=shard_sets(), world=st.integers(1, 4), workers=st.integers(0, 4), batch=st.integers(1, 8),
    copies=st.integers(1, 3), padded=st.booleans(),
)
def test_quota_is_the_longest_segment_rounded_up_to_whole_batches(shards, world, workers, batch, copies, padded):
    assume(shards.num_samples >= world)
    stream = ShardStream(shards, copies_decoder(copies), world_size=world, pad_to=batch if padded else None, items_per_sample=copies)
    assert stream.max_workers() == shards.num_samples // world
    quota = stream.quota(0, workers)
    if not padded:
        assert quota is None and stream.items_per_epoch(workers) is None
        return
    longest = segment_length(shards.num_samples, world * max(1, workers)) * copies
    assert quota % batch == 0 and longest <= quota < longest + batch
    assert stream.items_per_epoch(workers) == quota * max(1, workers)


def shard_start(sizes: list[int], url: str) -> int:
    """The number of the first sample of shard ``url`` (write_shards numbers them in shard order)."""
    return sum(sizes[: int(url[-10:-4])])


@st.composite
def stream_cases(draw):
    sizes = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
    world = draw(st.integers(1, min(3, sum(sizes))))
    workers = draw(st.integers(1, min(3, sum(sizes) // world)))
    return sizes, world, workers


@examples(4)
@given(
    case=stream_cases(), batch=st.integers(1, 5), copies=st.integers(1, 2), buffer=st.integers(1, 6), seed=seeds,
    shuffle=st.booleans(), padded=st.booleans(),
)
def test_a_real_epoch_gives_every_sample_once_and_every_rank_the_same_items(case, batch, copies, buffer, seed, shuffle, padded):
    sizes, world, workers = case
    with tempfile.TemporaryDirectory() as tmp:
        shards = resolve_shards(write_shards(Path(tmp) / "ds", sizes))
        real: Counter[str] = Counter()
        per_rank = []
        for rank in range(world):
            stream = ShardStream(
                shards, copies_decoder(copies), rank=rank, world_size=world, seed=seed, shuffle_buffer=buffer,
                shuffle_shards=shuffle, epochs=1, pad_to=batch if padded else None, items_per_sample=copies,
            )
            assert stream.max_workers() >= workers
            quota = stream.quota(0, workers)
            count = 0
            for worker in range(workers):
                items = list(stream.slot_items(worker, workers))
                pieces = exact_pieces(shards, epoch=0, seed=seed, rank=rank, world_size=world, worker=worker, num_workers=workers, shuffle=shuffle)
                segment = sum(p.take for p in pieces)
                assert len(items) == (segment * copies if quota is None else quota)
                assert all(i["__worker__"] == worker and i["__epoch__"] == 0 and i["__source__"] == 0 for i in items)
                pads = [i["__pad__"] for i in items]
                assert pads == sorted(pads), "padding before the segment's last item"
                own = [i["key"] for i in items if not i["__pad__"]]
                assert len(own) == segment * copies and len(set(own)) == segment
                # padding: the segment again from its start, unshuffled (in the pieces' order), whole samples
                in_order = [f"s{shard_start(sizes, p.url) + j:05d}" for p in pieces for j in range(p.skip, p.skip + p.take)]
                padding = [i["key"] for i in items if i["__pad__"]]
                again = itertools.cycle([k for k in in_order for _ in range(copies)])  # a segment shorter than a batch: again and again
                assert padding == list(itertools.islice(again, len(padding))), "padding is not the segment's start"
                indices = [i["__index__"] for i in items]
                assert indices == sorted(indices) and sorted(set(indices)) == list(range(len(set(indices))))
                real.update(own)
                count += len(items)
            per_rank.append(count)
            if padded:
                assert count == stream.items_per_epoch(workers)
        # over all ranks and workers: every sample exactly once (times its copies)
        assert real == Counter({f"s{n:05d}": copies for n in range(sum(sizes))})
        if padded:
            assert len(set(per_rank)) == 1, f"ranks' epochs differ: {per_rank}"


@examples(3)
@given(
    shards=shard_sets(checksums=True), world=st.integers(1, 4), workers=st.integers(1, 4), epoch=st.integers(0, 5), seed=seeds,
    shuffle=st.booleans(), data=st.data(),
)
def test_an_epochs_remainder_is_cut_into_equal_disjoint_segments_of_what_is_left(shards, world, workers, epoch, seed, shuffle, data):
    """What an elastic resume re-cuts: the samples of an epoch no slot of the stopped run
    consumed, in the epoch's line order, into one contiguous segment per new slot."""
    order = epoch_order(shards.urls, epoch=epoch, seed=seed, shuffle=shuffle)
    line = [(u, n) for u in order for n in range(shards.sizes[u])]
    taken = data.draw(st.sets(st.sampled_from(line)) if line else st.just(set()), label="consumed")
    consumed: dict[str, bytearray] = {}
    for url, n in taken:
        consumed.setdefault(url, bytearray(shards.sizes[url]))[n] = 1
    rest = Remainder(shards, order, consumed)
    left = [s for s in line if s not in taken]
    assert rest.size == len(left)
    slots, cut, lengths = world * workers, [], []
    for slot in range(slots):
        pieces = rest.pieces(slot, slots)
        for p in pieces:
            assert p.take == len(p.indices()) >= 1 and p.skip == p.indices()[0] and p.checksum == shards.checksums.get(p.url)
            assert (p.keep is None) == (list(p.indices()) == list(range(p.skip, p.skip + p.take)))
        assert len({p.url for p in pieces}) == len(pieces), "a shard opened twice by one slot"
        mine = [(p.url, n) for p in pieces for n in p.indices()]
        cut += mine
        lengths.append(len(mine))
        if not mine and left:  # fewer samples left than slots: padding borrows one of them
            (borrowed,) = [(p.url, n) for p in rest.borrowed(slot, slots) for n in p.indices()]
            assert borrowed in left
    assert cut == left, "the segments, slot after slot, are not what is left of the line"
    assert max(lengths) - min(lengths) <= 1 and max(lengths) == segment_length(len(left), slots)
    if not taken:  # nothing consumed: the cut of a whole epoch
        for rank, worker in itertools.product(range(world), range(workers)):
            whole = exact_pieces(
                shards, epoch=epoch, seed=seed, rank=rank, world_size=world, worker=worker, num_workers=workers, shuffle=shuffle,
            )
            assert rest.pieces(rank * workers + worker, slots) == whole


def test_a_piece_with_holes_reads_only_the_samples_it_keeps(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [6]))
    url = shards.urls[0]
    piece = Piece(url, 1, 3, shards.checksums[url], keep=(1, 2, 4))
    assert [s["__key__"] for s in piece.read()] == ["s00001", "s00002", "s00004"]
