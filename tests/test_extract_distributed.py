"""Feature extraction over several processes: each embeds its own part of the samples and the
main process writes the rows of a one-process run, in its order.

Eleven speech windows of three recordings in four shards (3 + 3 + 3 + 2): with 2 processes of 2
loader workers the line is cut into 2 + 3 + 3 + 3 samples, each boundary inside a shard.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, load_script
from modalmae.data.shards import iter_shard, resolve_shards
from modalmae.data.stream import ShardStream, make_loader
from modalmae.train.downstream import line_places, merge_parts, save_part
from test_downstream import save_random_encoder, write_windows

SAMPLES = 11


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_windows(raw, per_source=4)
    (raw / min(p.name for p in raw.iterdir()) / "w003.wav").unlink()  # 4 + 4 + 3 windows
    out = tmp_path_factory.mktemp("shards") / "windows"
    build = load_script("pipelines/build_shards.py")
    args = ["--modality", "audio", "--input", str(raw), "--output", str(out), "--label-from-parent", "--max-count", "3", "--workers", "1", "--quiet"]
    assert build.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 3, 3, 2]
    return out


def line_keys(shards) -> list[str]:
    """Every key in the shards' order (the order of a one-process, one-worker run)."""
    return [s["__key__"] for url in shards.urls for s in iter_shard(url)]


def broken(bad: str):
    """A decoder of nothing but keys, that cannot decode the sample ``bad``."""
    def decode(sample, rng):
        if sample["__key__"] == bad:
            raise ValueError("unreadable on purpose")
        return {"x": torch.zeros(1), "label": None}

    return decode


def one_pass(shards, decode, *, rank=0, world_size=1):
    return ShardStream(shards, decode, rank=rank, world_size=world_size, epochs=1, shuffle_buffer=1, shuffle_shards=False)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores, briefly
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "brace-pattern"])
def test_parts_merge_into_the_order_of_a_one_process_loader(odd_shards, tmp_path, manifest):
    """Any split over processes and workers, put back in the order a real one-process DataLoader
    gives, for every worker count and batch size; one undecodable sample stays out."""
    shards = resolve_shards(odd_shards if manifest else str(odd_shards / "shard-{000000..000003}.tar"))
    assert shards.has_sizes == manifest
    place = {k: i for i, k in enumerate(line_keys(shards))}
    bad = line_keys(shards)[6]  # in the third shard: inside the second process's part
    decode = broken(bad)
    reordered = set()  # (workers, batch size) whose one-process order is not the shards' order
    for workers in (0, 2, 3):
        for batch_size in (1, 2, 4):
            loader = make_loader(one_pass(shards, decode), batch_size=batch_size, num_workers=workers)
            expected = [k for batch in loader for k in batch["__key__"]]
            assert sorted(expected) == sorted(set(line_keys(shards)) - {bad})
            if expected != [k for k in line_keys(shards) if k != bad]:
                reordered.add((workers, batch_size))
            for world_size, rank_workers in ((2, 2), (3, 1), (2, 1)):
                paths = []
                for rank in range(world_size):
                    stream = one_pass(shards, decode, rank=rank, world_size=world_size)
                    items = [it for w in range(rank_workers) for it in stream.slot_items(w, rank_workers)]
                    keys = [it["__key__"] for it in items]
                    shard, offset = line_places([(it["__url__"], it["__worker__"], it["__index__"]) for it in items], stream, num_workers=rank_workers)
                    # a feature that names its key: the merge must move features with their rows
                    features = np.array([[place[k], rank] for k in keys], np.float32).reshape(len(keys), 2)
                    paths.append(tmp_path / f"part{rank}.npz")
                    save_part(paths[-1], keys=keys, features=features, labels=[""] * len(keys), shard=shard, offset=offset, skipped=0)
                merged_keys, merged_features, labels, _ = merge_parts(paths, stream, num_workers=workers, batch_size=batch_size)
                context = f"workers {workers}, batch {batch_size}, {world_size} x {rank_workers}"
                assert list(merged_keys) == expected, context
                assert np.array_equal(merged_features[:, 0], [place[k] for k in merged_keys]), context
                assert list(labels) == [""] * len(expected)
    # several loader workers interleave their batches: the merge had to reorder, not just sort
    assert {(2, 1), (2, 2), (3, 1)} <= reordered, reordered


def test_a_process_without_rows_merges(odd_shards, tmp_path):
    """A process none of whose samples decode writes an empty part (features [0, 0]); the merge
    keeps the other's rows, features with their keys, and of nothing at all gives nothing."""
    shards = resolve_shards(odd_shards)
    streams = [one_pass(shards, broken(""), rank=r, world_size=2) for r in range(2)]
    items = [it for w in range(2) for it in streams[0].slot_items(w, 2)]
    keys = [it["__key__"] for it in items]
    shard, offset = line_places([(it["__url__"], it["__worker__"], it["__index__"]) for it in items], streams[0], num_workers=2)
    features = np.arange(len(keys) * 3, dtype=np.float32).reshape(len(keys), 3)
    none = np.zeros(0, np.int64)
    save_part(tmp_path / "a.npz", keys=keys, features=features, labels=["x"] * len(keys), shard=shard, offset=offset, skipped=0)
    save_part(tmp_path / "b.npz", keys=[], features=np.zeros((0, 0), np.float32), labels=[], shard=none, offset=none, skipped=6)
    merged_keys, merged_features, labels, skipped = merge_parts([tmp_path / "b.npz", tmp_path / "a.npz"], streams[1], num_workers=2, batch_size=2)
    assert sorted(merged_keys) == sorted(keys) and skipped == 6 and list(labels) == ["x"] * len(keys)
    for key, row in zip(merged_keys, merged_features):
        assert np.array_equal(row, features[keys.index(key)])
    merged_keys, merged_features, labels, skipped = merge_parts([tmp_path / "b.npz"], streams[1], num_workers=2, batch_size=2)
    assert len(merged_keys) == len(labels) == 0 and merged_features.shape == (0, 0) and skipped == 6


def launch_two(args: list[str]) -> subprocess.CompletedProcess:
    """Two real CPU processes (gloo), as DESIGN.md gives them."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "pipelines" / "extract_features.py"), *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.distributed
def test_two_processes_write_the_rows_of_one_process_in_its_order(odd_shards, tmp_path):
    checkpoint = save_random_encoder(tmp_path / "model")
    args = ["--checkpoint", str(checkpoint), "--shards", str(odd_shards), "--workers", "2", "--batch-size", "2", "--quiet"]
    extract = load_script("pipelines/extract_features.py")
    assert extract.main([*args, "--output", str(tmp_path / "one.npz")]) == 0
    proc = launch_two([*args[:-1], "--output", str(tmp_path / "out" / "two.npz")])  # with the progress bar
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(f"{SAMPLES} samples x 192 features") == 1  # only the main process reports
    # one bar, the main process's, over its own part: 5 of the 11 samples (the other has 6)
    assert "features: 100%" in proc.stderr and " 5/5 " in proc.stderr and "/6 " not in proc.stderr, proc.stderr[-2000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "out" / "two.npz")
    assert sorted(one["keys"]) == sorted(line_keys(resolve_shards(odd_shards))) and len(one["keys"]) == SAMPLES
    assert list(two["keys"]) == list(one["keys"]) and list(two["labels"]) == list(one["labels"])
    assert len(set(one["labels"])) == 3 and "" not in set(one["labels"])
    assert two["features"].shape == one["features"].shape == (SAMPLES, 192) and two["features"].dtype == np.float32
    # Same rows, other batches (and one thread per process instead of two): float rounding only.
    np.testing.assert_allclose(two["features"], one["features"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(one["features"][0], one["features"][1])  # the rows do differ: order matters
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["two.npz"]  # the parts' folder is gone


@pytest.mark.distributed
def test_a_process_without_shards_stops_every_process_with_the_reason(tmp_path, odd_shards):
    """One shard without a manifest for two processes: the second has nothing to read. Both stop
    before any work, each saying why (no traceback of ours), and nothing is written."""
    checkpoint = save_random_encoder(tmp_path / "model")
    one_shard = str(odd_shards / "shard-{000000..000000}.tar")
    proc = launch_two(["--checkpoint", str(checkpoint), "--shards", one_shard, "--output", str(tmp_path / "out" / "f.npz")])
    assert proc.returncode != 0
    assert proc.stderr.count("extract_features.py: error: --shards:") == 2, proc.stderr[-3000:]
    assert "1 shard(s) without a manifest cannot feed 2 ranks" in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr and "[rank1]: Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
