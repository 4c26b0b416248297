"""Shard assignment and the streaming dataset, on small tars written here."""

import io
import json
import random
import tarfile

import pytest
import torch

from modalmae.data.shards import resolve_shards, slot_shards
from modalmae.data.stream import ShardStream, collate, make_loader


def write_shards(folder, sizes, *, manifest=True):
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    n = 0
    for i, size in enumerate(sizes):
        name = f"shard-{i:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for _ in range(size):
                for ext, payload in (("txt", str(n).encode()), ("json", json.dumps({"i": n}).encode())):
                    info = tarfile.TarInfo(f"s{n:05d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                n += 1
        entries.append({"name": name, "num_samples": size, "bytes": (folder / name).stat().st_size})
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"modality": "test", "num_samples": n, "shards": entries}))
    return folder


def decode(sample, rng):
    if sample["txt"] == b"13":
        raise ValueError("corrupt")
    return {"value": torch.tensor(int(sample["txt"]))}


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (2, 3), (2, 4)])
def test_slots_are_disjoint_and_cover_every_shard(world, workers):
    urls = [f"s{i}" for i in range(11)]
    for epoch in range(3):
        seen, per_rank = [], []
        for rank in range(world):
            mine = []
            for worker in range(workers):
                mine += slot_shards(urls, epoch=epoch, seed=5, rank=rank, world_size=world, worker=worker, num_workers=workers)
            per_rank.append(len(mine))
            seen += mine
        assert sorted(seen) == sorted(urls)
        assert max(per_rank) - min(per_rank) <= 1  # ranks get balanced shares
    a = slot_shards(urls, epoch=0, seed=5, rank=0, world_size=2, worker=0, num_workers=1)
    b = slot_shards(urls, epoch=1, seed=5, rank=0, world_size=2, worker=0, num_workers=1)
    assert a != b  # reshuffled every epoch


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


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


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


def test_ranks_read_disjoint_shards_with_workers(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [3] * 5))
    keys = {}
    for rank in range(2):
        stream = ShardStream(shards, decode, rank=rank, world_size=2, seed=0, epochs=1)
        loader = make_loader(stream, batch_size=2, num_workers=2)
        keys[rank] = [(k, u) for b in loader for k, u in zip(b["__key__"], b["__url__"])]
    urls0, urls1 = {u for _, u in keys[0]}, {u for _, u in keys[1]}
    assert not urls0 & urls1 and len(urls0 | urls1) == 5
    all_keys = [k for r in keys.values() for k, _ in r]
    assert len(all_keys) == len(set(all_keys)) == 14  # 15 samples, s00013 is corrupt
    assert "s00013" not in all_keys


def test_too_few_shards_for_the_ranks_is_a_clear_error(tmp_path):
    shards = resolve_shards(write_shards(tmp_path / "ds", [3]))
    with pytest.raises(ValueError, match="cannot feed 2 ranks"):
        ShardStream(shards, decode, rank=1, world_size=2)


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
    from modalmae.data.stream import _shuffled

    out = list(_shuffled(iter(range(50)), 8, random.Random(0)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
