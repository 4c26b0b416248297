"""Sample assignment, padding, mixing and the loader of the streaming dataset, on small tars
(resuming: test_stream_resume.py)."""

import hashlib
import itertools
import json
import platform
import random

import pytest
import torch
from stream_data import decode, keys_of, take, write_shards

from modalmae.data.shards import Piece, ShardSet, exact_pieces, resolve_shards
from modalmae.data.stream import ShardStream, collate, make_loader


def piece_samples(pieces, sizes, starts):
    return [starts[p.url] + i for p in pieces for i in range(p.skip, p.skip + (p.take or sizes[p.url]))]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (2, 3), (3, 4)])
def test_exact_slots_split_every_epoch_into_equal_disjoint_segments(world, workers):
    sizes = [10, 10, 10, 10, 10, 10, 7]  # odd shard count, a short last shard
    urls = [f"s{i}" for i in range(len(sizes))]
    starts = dict(zip(urls, [sum(sizes[:i]) for i in range(len(sizes))]))
    shards = ShardSet(urls=urls, num_samples=sum(sizes), sizes=dict(zip(urls, sizes)))
    orders = []
    for epoch in range(3):
        seen, lengths, opened = [], [], {}
        for rank in range(world):
            for worker in range(workers):
                pieces = exact_pieces(shards, epoch=epoch, seed=5, rank=rank, world_size=world, worker=worker, num_workers=workers)
                seen += piece_samples(pieces, shards.sizes, starts)
                lengths.append(sum(p.take for p in pieces))
                opened[rank] = opened.get(rank, 0) + len(pieces)
        assert sorted(seen) == list(range(sum(sizes)))  # every sample exactly once
        assert max(lengths) - min(lengths) <= 1
        # a rank opens its share of shards plus at most one more per slot boundary
        assert max(opened.values()) <= -(-len(urls) // world) + workers
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_without_sizes_slots_take_whole_shards():
    urls = [f"s{i}" for i in range(11)]
    shards = ShardSet(urls=urls)
    seen = [p.url for r in range(3) for w in range(2) for p in exact_pieces(shards, epoch=0, seed=0, rank=r, world_size=3, worker=w, num_workers=2)]
    assert sorted(seen) == sorted(urls)


def test_resolve_folder_manifest_and_brace(tmp_path):
    folder = write_shards(tmp_path / "ds", [3, 2, 4])
    by_folder, by_manifest = resolve_shards(folder), resolve_shards(folder / "manifest.json")
    by_brace = resolve_shards(str(folder / "shard-{000000..000002}.tar"))
    assert by_folder.urls == by_manifest.urls == by_brace.urls
    assert by_folder.num_samples == 9 and by_brace.num_samples is None
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_shards(str(folder / "shard-{000000..000005}.tar"))
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_shards(tmp_path)
    # our shards without their manifest: an unfinished build, refused
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        resolve_shards(folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.tar").write_bytes((folder / "shard-000000.tar").read_bytes())
    assert resolve_shards(other).urls == [str(other / "a.tar")]  # foreign tars: globbed


def test_stream_reads_every_sample_once_per_epoch_and_skips_corrupt(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [5, 5, 5, 5]))
    items = take(ShardStream(shards, decode, seed=1, shuffle_buffer=4), 19)  # one epoch minus sample 13
    values = sorted(int(i["value"]) for i in items)
    assert values == [v for v in range(20) if v != 13]
    assert sum(i["num_skipped"] for i in items) == 1
    assert {i["__epoch__"] for i in items} == {0}
    # same seed, same order; other seed, other order
    again = take(ShardStream(shards, decode, seed=1, shuffle_buffer=4), 19)
    other = take(ShardStream(shards, decode, seed=2, shuffle_buffer=4), 19)
    assert [i["__key__"] for i in items] == [i["__key__"] for i in again]
    assert [i["__key__"] for i in items] != [i["__key__"] for i in other]


@pytest.mark.parametrize("world", [2, 3])
def test_padded_epochs_give_every_rank_the_same_batches_and_every_sample_once(tmp_path, world):
    shards = resolve_shards(write_shards(tmp_path / "ds", [4, 4, 4, 4, 3]))  # 19 samples, 5 shards
    real, per_rank = [], []
    for rank in range(world):
        stream = ShardStream(shards, decode, rank=rank, world_size=world, seed=0, epochs=1, pad_to=2, shuffle_buffer=3)
        batches = list(make_loader(stream, batch_size=2, num_workers=2))
        assert all(len(b["__key__"]) == 2 for b in batches)
        per_rank.append(len(batches))
        assert len(batches) * 2 == stream.items_per_epoch(2)
        real += [k for k, pad in keys_of(batches) if not pad]
    assert len(set(per_rank)) == 1  # same steps on every rank
    assert sorted(real) == sorted(f"s{i:05d}" for i in range(19) if i != 13)  # 13 is corrupt


@pytest.mark.parametrize("pad_to,resampled,manifest,sources,quota", [
    (2, False, True, 1, 6),  # 19 samples over 2 ranks x 2 workers: longest segment 5, padded to 6 (a multiple of 2)
    (None, False, True, 1, None),  # no padding: slots' epochs differ
    (2, True, True, 1, None),  # resampled: no epochs at all
    (2, False, False, 1, None),  # no manifest: segment lengths unknown
    (2, False, True, 2, 6),  # several sources: each has its quota, but a rank's epoch mixes them
])
def test_quota_and_items_per_epoch_exist_only_for_equal_padded_epochs(pad_to, resampled, manifest, sources, quota):
    """quota(): the items every slot yields per epoch of a source, None unless padded epochs of
    known sizes; items_per_epoch(): a rank's items per epoch (quota x workers), for one source only."""
    sizes = [4, 4, 4, 4, 3]
    urls = [f"s{i}" for i in range(len(sizes))]
    shards = ShardSet(urls=urls, num_samples=sum(sizes), sizes=dict(zip(urls, sizes))) if manifest else ShardSet(urls=urls)
    stream = ShardStream([shards] * sources, decode, world_size=2, pad_to=pad_to, resampled=resampled)
    assert stream.quota(0, 2) == quota
    assert stream.items_per_epoch(2) == (None if quota is None or sources > 1 else 2 * quota)


def test_resampled_mode_draws_shards_with_replacement_per_rank(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [3] * 4))
    def urls(rank, seed=0):
        return [i["__url__"] for i in take(ShardStream(shards, decode, rank=rank, world_size=2, seed=seed, resampled=True, shuffle_buffer=1), 60)]
    a, b = urls(0), urls(1)
    assert a == urls(0) and a != b and a != urls(0, seed=1)
    counts = [a.count(u) for u in shards.urls]
    assert max(counts) != min(counts)  # drawn with replacement, not cycled


def test_resampled_shards_are_verified_against_their_manifest_checksums(tmp_path):
    """A shard drawn with replacement carries its manifest sha256, like a piece of an exact epoch,
    for the reader to verify (test_a_piece_with_holes_... shows a piece refusing a wrong one)."""
    from modalmae.data.shards import resampled_pieces

    folder = write_shards(tmp_path / "ds", [3, 3])
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["sha256"] = hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shards = resolve_shards(folder)
    pieces = list(itertools.islice(resampled_pieces(shards, seed=0, rank=0, worker=0), 8))
    assert {p.url for p in pieces} == set(shards.urls)
    assert all(p.checksum == shards.checksums[p.url] and p.checksum.sha256 for p in pieces)


def test_mixing_draws_sources_by_weight(tmp_path):
    a = resolve_shards(write_shards(tmp_path / "a", [10, 10]))
    b = resolve_shards(write_shards(tmp_path / "b", [10, 10]))
    items = take(ShardStream([a, b], decode, weights=[3, 1], seed=0, shuffle_buffer=4), 400)
    share = sum(i["__source__"] == 0 for i in items) / len(items)
    assert 0.68 < share < 0.82  # 0.75 expected; binomial sd ~0.02
    with pytest.raises(ValueError, match="one non-negative weight"):
        ShardStream([a, b], decode, weights=[1])


@pytest.mark.parametrize("pad_to", [None, 2])
def test_an_undecodable_slot_ends_with_a_message_instead_of_spinning(tmp_path, caplog, pad_to):
    shards = resolve_shards(write_shards(tmp_path / "ds", [4]))
    assert list(ShardStream(shards, lambda s, r: 1 / 0, pad_to=pad_to)) == []
    said = f"{shards.name}: rank 0 worker 0 could not read or decode any sample of its part of epoch 0 (see the warnings above); this worker stops"
    assert said in caplog.text


@pytest.mark.parametrize("good_first", [False, True])
def test_a_padded_slot_gives_up_after_two_passes_of_failures_in_a_row(tmp_path, caplog, good_first):
    """Rank 0 of 2 over 7 samples padded to 8 holds a 3-sample segment and cycles it as padding: a
    run of 2 x 3 failures since the last decoded sample ends the slot, not one fewer or more."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [7]))
    calls = []

    def flaky(sample, rng):
        calls.append(sample["__key__"])
        if good_first and len(calls) == 1:
            return {"value": torch.tensor(0)}
        raise ValueError("unreadable")

    items = list(ShardStream(shards, flaky, world_size=2, pad_to=8, shuffle_buffer=1))
    assert len(items) == int(good_first)
    assert len(calls) == int(good_first) + 6
    assert calls[:3] == calls[3:6]  # the padding pass repeats the segment
    assert "could not read or decode any sample" in caplog.text


def test_a_skipped_sample_is_logged_with_its_key_shard_and_error(tmp_path, caplog):
    shards = resolve_shards(write_shards(tmp_path / "ds", [7, 7]))
    items = list(ShardStream(shards, decode, epochs=1))  # decode refuses sample 13, the second shard's last
    assert len(items) == 13 and sum(i["num_skipped"] for i in items) == 1
    url = next(u for u in shards.urls if u.endswith("shard-000001.tar"))
    assert [r.getMessage() for r in caplog.records] == [f"skipping sample s00013 in {url}: ValueError: corrupt"]


def test_a_resampled_stream_is_one_endless_pass_over_its_slots_draws(tmp_path):
    """Resampled: the shards come in the order resampled_pieces draws them for this rank and slot,
    each read whole, and the epoch never advances (no plan, no padding)."""
    from modalmae.data.shards import resampled_pieces

    shards = resolve_shards(write_shards(tmp_path / "ds", [3] * 4))
    items = take(ShardStream(shards, decode, rank=1, world_size=2, seed=4, resampled=True, shuffle_buffer=1), 60)
    drawn = list(itertools.islice(resampled_pieces(shards, seed=4, rank=1, worker=0), 20))
    assert [i["__url__"] for i in items] == [p.url for p in drawn for _ in range(3)]
    assert {i["__epoch__"] for i in items} == {0} and not any(i["__pad__"] for i in items)


def test_truncated_shard_is_skipped_not_fatal(tmp_path):
    folder = write_shards(tmp_path / "ds", [4, 4])
    shard = folder / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside the first shard's second sample
    stream = ShardStream(resolve_shards(folder), decode, epochs=1, shuffle_buffer=1, shuffle_shards=False)
    items = list(stream)
    assert {int(i["value"]) for i in items} == {0, 4, 5, 6, 7}
    assert sum(i["num_skipped"] for i in items) == 3  # the manifest's count reveals the loss


def test_collate_stacks_tensors_and_sums_skips():
    batch = collate([{"x": torch.ones(2), "k": "a", "num_skipped": 1}, {"x": torch.zeros(2), "k": "b", "num_skipped": 2}])
    assert batch["x"].shape == (2, 2) and batch["k"] == ["a", "b"] and batch["num_skipped"] == 3


def test_shuffle_buffer_permutes_but_keeps_items():
    from modalmae.data.epochs import shuffled

    out = list(shuffled(iter(range(50)), 8, random.Random(0)))
    assert sorted(out) == list(range(50)) and out != list(range(50))


def mapped_for_a_large_block(sample, rng):
    """Whether glibc serves a freshly freed-and-reallocated 64 MB block by mmap in this process
    (its default thresholds: yes; ``modalmae.data.alloc``'s: no, from the heap)."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    before = libc.mallinfo2().hblkhd
    block = bytearray(64 << 20)
    mapped = libc.mallinfo2().hblkhd - before >= 64 << 20
    del block
    return {"mapped": torch.tensor(mapped)}


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_loader_workers_keep_large_blocks_in_the_heap(tmp_path):
    """make_loader's workers start with modalmae.data.alloc's malloc thresholds: a 64 MB block
    comes from the heap there, while this process (glibc's defaults) maps it."""
    shards = resolve_shards(write_shards(tmp_path / "ds", [2, 2]))
    assert mapped_for_a_large_block(None, None)["mapped"].item()  # the test process is untouched
    batches = list(make_loader(ShardStream(shards, mapped_for_a_large_block, epochs=1), batch_size=2, num_workers=2))
    assert len(batches) == 2 and not any(b["mapped"].any() for b in batches)


def fbank_of(sample, rng):
    n = int(sample["txt"])
    return {"fbank": torch.full((4, 3), n + 1 / 3), "count": torch.tensor(n), "weights": torch.full((2,), 1 / 3)}


def test_a_bf16_run_ships_its_inputs_in_bf16_and_the_model_gets_fp32(tmp_path):
    from modalmae.data.stream import CastFloats
    from modalmae.modalities import MODALITIES, model_input

    shards = resolve_shards(write_shards(tmp_path / "ds", [2, 2]))
    cast = CastFloats(fbank_of, ["fbank"], torch.bfloat16)
    two = CastFloats(lambda s, rng: [fbank_of(s, rng), fbank_of(s, rng)], ["fbank"], torch.bfloat16)({"txt": b"5"}, None)
    assert [item["fbank"].dtype for item in two] == [torch.bfloat16] * 2  # repeated augmentation: every item
    batches = list(make_loader(ShardStream(shards, cast, epochs=1), batch_size=2, num_workers=1))
    assert len(batches) == 2
    for batch in batches:
        # Only the model's input travels in bf16; other floats and integers are untouched.
        assert batch["fbank"].dtype == torch.bfloat16 and batch["weights"].dtype == torch.float32 and batch["count"].dtype == torch.int64
        x = model_input(MODALITIES["audio"], batch, "cpu")
        assert x.dtype == torch.float32
        want = torch.stack([fbank_of({"txt": str(int(n)).encode()}, None)["fbank"] for n in batch["count"]])
        assert torch.equal(x, want.bfloat16().float()) and not torch.equal(x, want)  # rounded to bf16, nothing else


def test_iter_reads_the_slot_of_its_loader_worker(tmp_path, monkeypatch):
    """Inside a DataLoader worker, __iter__ yields that worker's slot (run here in-process with
    the worker's info stood in); in the main process, the whole rank's part; and a resumed stream
    whose next batch was slot 1's hands loader worker 0 slot 1."""
    from types import SimpleNamespace

    from modalmae.data import stream as stream_module

    shards = resolve_shards(write_shards(tmp_path / "ds", [4, 4, 4, 4]))

    def items(info, **kw):
        monkeypatch.setattr(stream_module, "get_worker_info", lambda: info)
        return [int(i["value"]) for i in ShardStream(shards, decode, epochs=1, shuffle_buffer=1, **kw)]

    def worker(i, n):
        return SimpleNamespace(id=i, num_workers=n)

    slot0, slot1 = items(worker(0, 2)), items(worker(1, 2))
    assert slot0 and slot1 and not set(slot0) & set(slot1)
    assert sorted(slot0 + slot1) == sorted(items(None)) == [v for v in range(16) if v != 13]
    assert items(worker(0, 2), start={"next_worker": 1, "slots": {}}) == slot1
    assert items(worker(1, 2), start={"next_worker": 1, "slots": {}}) == slot0
    # three workers, next batch from slot 1: loader workers 0, 1, 2 read slots 1, 2, 0
    thirds = [items(worker(i, 3)) for i in range(3)]
    assert [items(worker(i, 3), start={"next_worker": 1, "slots": {}}) for i in range(3)] == thirds[1:] + thirds[:1]


def test_cast_floats_narrows_only_the_wider_floats_under_its_keys():
    """CastFloats hands the decoder its generator, passes on what it returns (None: a skipped
    sample), and casts a floating tensor under its keys only when that saves bytes: integers,
    floats no wider than the dtype (fp16 under a bf16 cast: same bytes, re-rounding gains
    nothing), keys the item lacks and keys not listed are left as decoded."""
    from modalmae.data.stream import CastFloats

    def decoder(sample, rng):
        return {"x": torch.tensor([rng.random()], dtype=torch.float64), "n": torch.tensor([3]),
                "h": torch.ones(2, dtype=torch.float16), "y": torch.ones(2)}

    item = CastFloats(decoder, ["x", "n", "h", "absent"], torch.bfloat16)({}, random.Random(7))
    assert torch.equal(item["x"], torch.tensor([random.Random(7).random()]).bfloat16())
    assert [item[k].dtype for k in ("n", "h", "y")] == [torch.int64, torch.float16, torch.float32]
    assert "absent" not in item
    assert CastFloats(lambda s, rng: None, ["x"], torch.bfloat16)({}, random.Random(0)) is None


def test_a_piece_with_holes_reads_only_its_span_and_verifies_its_shard(tmp_path):
    """A remainder's piece with holes (``keep``) reads its shard from the first kept sample to
    the last, as far as the plain piece over that span and no further; and like any piece, with
    its manifest's checksum it gives nothing of a shard whose bytes do not match (unless
    ``verify=False``)."""
    from modalmae.data import remote
    from modalmae.data.remote import Checksum, ChecksumMismatch

    path = write_shards(tmp_path / "ds", [12]) / "shard-000000.tar"
    url, data = str(path), path.read_bytes()

    def read(piece, **kw):
        remote.BYTES_READ.clear()
        return [s["__key__"] for s in piece.read(**kw)], remote.BYTES_READ[url]

    kept = ["s00002", "s00004", "s00006"]
    keys, read_bytes = read(Piece(url, 2, 3, keep=(2, 4, 6)))
    assert keys == kept
    assert read_bytes == read(Piece(url, 2, 5))[1] < len(data)  # samples 2..6, not the shard's rest
    good, bad = Checksum(hashlib.sha256(data).hexdigest(), len(data)), Checksum("0" * 64, len(data))
    assert read(Piece(url, 2, 3, good, keep=(2, 4, 6)))[0] == kept
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        read(Piece(url, 2, 3, bad, keep=(2, 4, 6)))
    assert read(Piece(url, 2, 3, bad, keep=(2, 4, 6)), verify=False)[0] == kept


@pytest.mark.parametrize(("asked", "used"), [(0, 0), (1, 1), (3, 3), (5, 3)])
def test_make_loader_caps_its_workers_and_configures_them(tmp_path, caplog, asked, used):
    """Rank 1 of 2 over 6 samples can feed 3 workers (one sample each at least): more are capped,
    with a warning naming the rank and both counts. Workers, when there are any, are persistent,
    prefetch 4 batches and start with the malloc thresholds; memory is pinned only on request."""
    from modalmae.data.alloc import tune_worker

    stream = ShardStream(resolve_shards(write_shards(tmp_path / "s", [2, 2, 2])), decode, rank=1, world_size=2)
    with caplog.at_level("WARNING", logger="modalmae.data.stream"):
        loader = make_loader(stream, batch_size=2, num_workers=asked)
    assert loader.num_workers == used and loader.pin_memory is False
    assert (loader.persistent_workers, loader.prefetch_factor, loader.worker_init_fn) == ((True, 4, tune_worker) if used else (False, None, None))
    warned = [r.getMessage() for r in caplog.records]
    assert warned == (["rank 1 can feed 3 loader worker(s), not 5: using 3"] if asked > used else [])
    assert make_loader(stream, batch_size=2, num_workers=0, pin_memory=True).pin_memory is True


def test_without_a_manifest_each_rank_can_feed_one_worker_per_shard_it_reads(tmp_path):
    """No sample counts: workers split whole shards, so rank r of 2 over 5 shards has 3 or 2."""
    shards = resolve_shards(str(write_shards(tmp_path / "s", [2] * 5, manifest=False) / "shard-{000000..000004}.tar"))
    assert [ShardStream(shards, decode, rank=r, world_size=2).max_workers() for r in (0, 1)] == [3, 2]
    sized = resolve_shards(write_shards(tmp_path / "m", [2] * 5))  # 10 samples: 5 per rank
    assert [ShardStream(sized, decode, rank=r, world_size=2).max_workers() for r in (0, 1)] == [5, 5]
