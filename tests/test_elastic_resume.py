"""Elastic resume at the training loop's data phase (``Feed`` / ``Feeds``), in one process: the
ranks of a run are emulated one after another (a stand-in accelerator says which rank), each
saving its position into one checkpoint folder, and the ranks of a run of another layout are
built from that folder, as ``--resume`` builds them. Real multi-process runs:
tests/test_distributed.py."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modalmae.data.shards import iter_shard, resolve_shards
from modalmae.train.feed import Corpus, Feed, Feeds
from properties.shardsets import write_shards


@dataclass
class Config:
    """The fields of a training config the data phase reads."""

    output: str
    seed: int = 3
    batch_size: int = 2
    workers: int = 0  # the loader reads in the training process: no worker processes to start
    shuffle_buffer: int = 4
    resampled: bool = False
    verify_shards: bool = True
    log_keys: bool = False
    grad_accum: int = 1


def accelerator(rank: int, world: int) -> SimpleNamespace:
    return SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu"))


def decode(sample: dict, rng) -> dict:
    return {"key": sample["__key__"]}


def items(batch: dict) -> list[tuple]:
    """(source, epoch, key, pad) of each item of a batch."""
    return list(zip(batch["__source__"], batch["__epoch__"], batch["key"], batch["__pad__"]))


@pytest.fixture
def corpora(tmp_path) -> dict[str, list]:
    speech = resolve_shards(write_shards(tmp_path / "speech", [5, 4, 4]))  # 13 samples
    photos = resolve_shards(write_shards(tmp_path / "photos", [3, 4], first=100))  # 7
    return {"speech": [speech], "photos": [photos]}


def keys_of(shards) -> list[str]:
    return sorted(sample["__key__"] for url in shards.urls for sample in iter_shard(url))


def test_feeds_resumed_on_more_processes_train_on_every_sample_of_the_epoch_once(corpora, tmp_path):
    """Three corpora, each with its own epochs and position files, one of them mixing two shard
    sets (whose positions differ from rank to rank): 2 processes stop mid-epoch, 3 continue.
    The new ranks of a single-source corpus take the same number of steps through the rest of
    epoch 0, and old and new runs together train on each sample of each source's epoch 0 once."""
    corpora = {**corpora, "mixed": corpora["speech"] + corpora["photos"]}
    sizes, weights = {"speech": 2, "photos": 1, "mixed": 2}, {"mixed": [1.0, 1.0]}
    cfg, checkpoint = Config(output=str(tmp_path / "run")), tmp_path / "step_2"
    checkpoint.mkdir()

    def feeds(rank: int, world: int, resume: Path | None) -> Feeds:
        mine = [Corpus(name, sources, decode, sizes[name], weights=weights.get(name)) for name, sources in corpora.items()]
        return Feeds(cfg, accelerator(rank, world), mine, resume, start_step=2 if resume else 0)

    trained: dict[str, list] = {name: [] for name in corpora}
    for rank in range(2):
        run = feeds(rank, 2, None)
        for step in (1, 2):
            for name, batch in run.next(step).items():
                trained[name] += items(batch)
        run.save_position(checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(f"data_rank{r}_{n}.json" for r in range(2) for n in corpora)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an elastic resume is no restart: no warning
        new = [feeds(rank, 3, checkpoint) for rank in range(3)]
    # the old run's per-source counts are carried over once, by rank 0 (they are summed over ranks)
    assert [run.source_counts.sum().item() for run in new] == [sum(len(t) for t in trained.values()), 0, 0]
    for name in ("speech", "photos"):
        (count, first_whole), = {run.feeds[name].stream.remainder(1) for run in new}  # the same on every rank
        assert count % sizes[name] == 0 and first_whole == 1
        for run in new:
            trained[name] += [i for step in range(count // sizes[name]) for i in items(run.feeds[name].next(3 + step))]
            assert {e for _, e, _, _ in items(run.feeds[name].next(0))} == {1}, "one rank's remainder is longer than another's"
            assert run.feeds[name].epoch_anchor == (2 + count // sizes[name], 1)
    assert {run.feeds["mixed"].epoch_anchor for run in new} == {None}  # mixed sources count no epochs
    for run in new:  # the mixed corpus: until this rank is past epoch 0 of both sources
        past = set()
        for _ in range(100):
            batch = items(run.feeds["mixed"].next(0))
            trained["mixed"] += batch
            past |= {source for source, e, _, _ in batch if e > 0}
            if past == {0, 1}:
                break
        run.close()
    for name, sources in corpora.items():
        for source, shards in enumerate(sources):
            real = [k for s, e, k, pad in trained[name] if (s, e) == (source, 0) and not pad]
            assert sorted(real) == keys_of(shards), f"{name}, source {source}: {Counter(real)}"


def test_a_continued_run_resumed_in_its_own_layout_keeps_its_cut(corpora, tmp_path):
    """A run of 3 that continued a run of 2 stops inside the remainder it was given; resumed with
    3 again (each rank its own file), it finishes that remainder exactly as it would have."""
    sources, cfg = corpora["speech"], Config(output=str(tmp_path / "run"))
    first, second = tmp_path / "step_1", tmp_path / "step_2"
    first.mkdir(), second.mkdir()
    for rank in range(2):
        feed = Feed(cfg, accelerator(rank, 2), sources, decode, 1, None, weights=None)
        feed.next(1)
        feed.save_position(first)
    whole, stopped = [], []
    for rank in range(3):
        uninterrupted = Feed(cfg, accelerator(rank, 3), sources, decode, 1, first, weights=None)
        whole += [items(uninterrupted.next(s)) for s in range(2, 8)]
        feed = Feed(cfg, accelerator(rank, 3), sources, decode, 1, first, weights=None)
        stopped += [items(feed.next(2))]
        feed.save_position(second)
        assert "origin" in json.loads((second / f"data_rank{rank}.json").read_text())["stream"]
    resumed = []
    for rank in range(3):
        feed = Feed(cfg, accelerator(rank, 3), sources, decode, 1, second, weights=None)
        assert feed.stream.start["slots"], "not this rank's own position"
        resumed += [stopped[rank]] + [items(feed.next(s)) for s in range(3, 8)]
    assert resumed == whole


def test_another_seed_restarts_the_epoch_with_a_warning(corpora, tmp_path):
    sources, checkpoint = corpora["speech"], tmp_path / "step_1"
    checkpoint.mkdir()
    for rank in range(2):
        feed = Feed(Config(output=str(tmp_path)), accelerator(rank, 2), sources, decode, 1, None, weights=None)
        feed.next(1)
        feed.save_position(checkpoint)
    for world in (2, 3):  # the same layout or another: the epochs themselves changed
        with pytest.warns(UserWarning, match="other .*seed.*starts afresh"):
            feed = Feed(Config(output=str(tmp_path), seed=4), accelerator(0, world), sources, decode, 1, checkpoint, weights=None)
        assert feed.stream.start == {}
    # positions saved before the layout was recorded: continued in their own layout, restarted in another
    for rank in range(2):
        position = json.loads((checkpoint / f"data_rank{rank}.json").read_text())
        for key in ("layout", "shuffle_buffer", "items_per_sample", "epoch_anchor"):
            del position[key]
        (checkpoint / f"data_rank{rank}.json").write_text(json.dumps(position))
    same = Feed(Config(output=str(tmp_path)), accelerator(1, 2), sources, decode, 1, checkpoint, weights=None)
    assert same.stream.start == position["stream"]
    with pytest.warns(UserWarning, match="cannot be continued"):
        Feed(Config(output=str(tmp_path)), accelerator(0, 3), sources, decode, 1, checkpoint, weights=None)
