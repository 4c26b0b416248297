"""Several real CPU processes (gloo) training from one shard set: exact epochs, equal steps,
identical weights, a deterministic order, and a resume that sees no sample twice.

Eight speech clips in three shards (3 + 3 + 2: an odd count), two loader workers per process,
batch 1: the epoch is cut into 2 x 2 (or 3 x 2) slots of 2 (or 1-2) clips.
"""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from conftest import AUDIO, REPO, load_script

pytestmark = pytest.mark.distributed

ARGS = [
    "--model", "tiny", "--num-frames", "64", "--batch-size", "1", "--workers", "2", "--lr", "1e-3",
    "--warmup-steps", "2", "--log-every", "1", "--save-every", "1000", "--no-progress", "--log-keys",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "speech"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "audio", "--input", str(AUDIO), "--output", str(out), "--max-count", "3", "--workers", "1", "--quiet"]) == 0
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 3
    return out


def launch(processes, shards, run, *extra):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    if processes == 2:  # the config file the README gives for two CPU processes
        how = ["--config_file", str(REPO / "recipes" / "configs" / "cpu_2proc.yaml")]
    else:
        how = ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *how,
        str(REPO / "recipes" / "audio_mae.py"), "--shards", str(shards), "--output", str(run), *ARGS, *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def keys(run, rank):
    """[(step, epoch, key, pad)] this rank trained on, in order."""
    lines = (run / "keys" / f"rank{rank}.jsonl").read_text().splitlines()
    return [(rec["step"], epoch, key, pad) for rec in map(json.loads, lines) for _, epoch, key, pad in rec["items"]]


def all_keys(shards):
    from modalmae.data.shards import iter_shard, resolve_shards

    return {s["__key__"] for url in resolve_shards(shards).urls for s in iter_shard(url)}


def test_three_processes_exact_epochs_equal_steps_same_weights(shards, tmp_path):
    run = tmp_path / "run"
    launch(3, shards, run, "--epochs", "2")
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in range(3)]
    assert len({r["weights_digest"] for r in ranks}) == 1
    assert len({r["steps"] for r in ranks}) == 1 and len({r["items_per_epoch"] for r in ranks}) == 1
    for epoch in (0, 1):
        per_rank = [[k for _, e, k, pad in keys(run, r) if e == epoch and not pad] for r in range(3)]
        everything = [k for rank_keys in per_rank for k in rank_keys]
        assert len(everything) == len(set(everything)), f"epoch {epoch}: a sample read twice"
        assert set(everything) == all_keys(shards), f"epoch {epoch}: samples missing"
        # every rank trains on the same number of items per epoch (its part, padded)
        counts = Counter(pad for r in range(3) for _, e, _, pad in keys(run, r) if e == epoch)
        assert ranks[0]["items_per_epoch"] == 4  # ceil(8 clips / 6 slots) = 2 per worker
        assert counts == {False: 8, True: 3 * 4 - 8}


def test_two_processes_resume_mid_epoch_continues_the_same_order(shards, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    launch(2, shards, whole, "--max-steps", "8")
    launch(2, shards, split, "--max-steps", "3")  # ends with a checkpoint at step 3, mid-epoch
    first = [keys(split, r) for r in range(2)]
    launch(2, shards, split, "--max-steps", "8", "--resume", "latest")
    for r in range(2):
        # the same seed gives the same order, and the resumed run picks it up where it stopped
        resumed = keys(split, r)
        assert resumed[: len(first[r])] == first[r] and len(first[r]) == 3
        assert resumed == keys(whole, r)
        epoch0 = [k for _, e, k, pad in resumed if e == 0 and not pad]
        assert len(epoch0) == len(set(epoch0))
    ranks = [json.loads((whole / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]


def test_elastic_resume_with_other_processes_and_workers_trains_on_every_sample_once(shards, tmp_path):
    """One run stopped mid-epoch twice and resumed each time in another layout: 2 processes x
    2 workers -> 3 x 1 -> 2 x 3, the last with --epochs (counted in its own layout). Over the
    three, every clip of every epoch is trained on exactly once, and the processes of each run
    take the same number of steps.

    8 clips, batch 1. Run 1: 4 slots of 2 clips, one step (2 clips). Run 2: 6 left on 3 slots
    of 2, one of its two steps. Run 3: 3 left on 6 slots (three pad with a borrowed clip: 3
    steps), then epoch 1 in 6 slots of 1-2 clips (6 steps): 2 + 3 + 6 = 11 for --epochs 2."""
    run = tmp_path / "run"
    layouts = [(2, 2, ["--max-steps", "1"]), (3, 1, ["--max-steps", "2"]), (2, 3, ["--epochs", "2"])]
    steps = [0]
    for i, (processes, workers, until) in enumerate(layouts):
        launch(processes, shards, run, "--workers", str(workers), *until, *(["--resume", "latest"] if i else []))
        ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in range(processes)]
        steps.append(steps[-1] + ranks[0]["steps"])
        assert len({r["steps"] for r in ranks}) == 1, f"run {i + 1}: ranks took different numbers of steps"
        assert len({r["weights_digest"] for r in ranks}) == 1
    assert steps == [0, 1, 2, 11]
    trained = [item for r in range(3) for item in keys(run, r)]  # every run's ranks, old and new
    for epoch in (0, 1):
        real = [k for _, e, k, pad in trained if e == epoch and not pad]
        assert sorted(real) == sorted(all_keys(shards)), f"epoch {epoch}: {Counter(real)}"
    assert any(pad for step, e, _, pad in trained if e == 0 and step > 2), "run 3 pads its share of epoch 0's remainder"
    position = json.loads((run / "checkpoints" / "step_0000011" / "data_rank0.json").read_text())
    assert (position["world_size"], position["workers"]) == (2, 3) and "origin" in position["stream"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 12)) and metrics[-1]["epoch"] == 2.0


@pytest.mark.parametrize(
    "name,kind,processes,machines",
    [("gpu_1", "NO", 1, 1), ("gpu_8", "MULTI_GPU", 8, 1), ("two_nodes", "MULTI_GPU", 16, 2), ("fsdp_8gpu", "FSDP", 8, 1)],
)
def test_shipped_accelerate_configs_load(name, kind, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "recipes" / "configs" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (kind, processes, machines)
    if kind == "FSDP":  # wraps our transformer block class, which must exist under that name
        from modalmae.model import transformer

        assert hasattr(transformer, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
