"""ShardStream's constructor: its defaults, one decoder per source, the mixing weights, and the
shard sets it refuses (with messages naming the set and what is wrong)."""

import dataclasses
import re

import pytest
import torch
from stream_data import decode, write_shards

from modalmae.data.shards import ShardSet, epoch_order, resolve_shards
from modalmae.data.stream import ShardStream
from modalmae.train.config import TrainConfig


def test_defaults_are_the_training_commands_defaults():
    # A stream built with defaults is the one `--seed` / `--shuffle-buffer` give when not passed.
    cli = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    stream = ShardStream(ShardSet(urls=["a.tar"]), decode)
    assert (stream.seed, stream.shuffle_buffer) == (cli["seed"], cli["shuffle_buffer"])


def test_by_default_every_epoch_reads_the_shards_in_a_new_seeded_order(tmp_path):
    # Exact epochs (README): "Each epoch the shards are put in a seeded order"; one sample per
    # shard and no shuffle buffer make the item order the shard order.
    shards = resolve_shards(write_shards(tmp_path / "ds", [1] * 8))
    items = list(ShardStream(shards, decode, seed=4, shuffle_buffer=1, epochs=2))
    for epoch in range(2):
        got = [shards.urls[int(i["value"])] for i in items if i["__epoch__"] == epoch]
        assert got == epoch_order(shards.urls, epoch=epoch, seed=4, shuffle=True) != shards.urls


def tagged(tag):
    return lambda sample, rng: {"value": torch.tensor(int(sample["txt"])), "tag": tag}


def test_each_source_is_decoded_by_its_own_decoder(tmp_path):
    a = resolve_shards(write_shards(tmp_path / "a", [4]))
    b = resolve_shards(write_shards(tmp_path / "b", [4]))
    items = list(ShardStream([a, b], [tagged("a"), tagged("b")], epochs=1))
    assert sorted((i["__source__"], i["tag"]) for i in items) == [(0, "a")] * 4 + [(1, "b")] * 4
    with pytest.raises(ValueError, match="1 decoders for 2 shard sets"):
        ShardStream([a, b], [tagged("a")])


def test_default_weights_follow_the_sample_counts_else_are_equal(tmp_path):
    # "default: in proportion to its samples when every manifest gives them, else equally";
    # the weights are the probabilities of drawing each source.
    big = resolve_shards(write_shards(tmp_path / "big", [20, 10]))
    small = resolve_shards(write_shards(tmp_path / "small", [10]))
    assert ShardStream([big, small], decode).weights == pytest.approx([0.75, 0.25])
    unsized = resolve_shards(str(tmp_path / "small" / "shard-000000.tar"))
    assert ShardStream([big, unsized], decode).weights == pytest.approx([0.5, 0.5])
    assert ShardStream([big, small], decode, weights=[6, 2]).weights == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize("weights,ok", [([0, 1], True), ([0.5, 0.25], True), ([-1, 2], False), ([0, 0], False), ([1], False)])
def test_weights_must_be_one_non_negative_number_per_source_not_all_zero(tmp_path, weights, ok):
    a = resolve_shards(write_shards(tmp_path / "a", [2]))
    b = resolve_shards(write_shards(tmp_path / "b", [2]))
    if ok:
        assert sum(ShardStream([a, b], decode, weights=weights).weights) == pytest.approx(1)
    else:
        with pytest.raises(ValueError, match=re.escape(f"need one non-negative weight per shard set (2), got {weights}")):
            ShardStream([a, b], decode, weights=weights)


@pytest.mark.parametrize("name,said", [("speech", "speech: no shards"), ("", "shard set: no shards")])
def test_an_empty_shard_set_is_refused_by_name(name, said):
    with pytest.raises(ValueError, match=f"^{said}$"):
        ShardStream(ShardSet(urls=[], name=name), decode)


def test_too_few_shards_or_samples_for_the_ranks_are_refused(tmp_path):
    one = ShardSet(urls=["x/a.tar"], name="x")  # no manifest: whole shards per rank
    said = "x: 1 shard(s) without a manifest cannot feed 2 ranks: every rank needs one. Use the folder with its manifest.json"
    with pytest.raises(ValueError, match=re.escape(said)):
        ShardStream(one, decode, rank=1, world_size=2)
    ShardStream(one, decode, rank=1, world_size=2, resampled=True)  # resampled ranks draw from all shards
    sized = resolve_shards(write_shards(tmp_path / "ds", [3]))
    with pytest.raises(ValueError, match=re.escape(f"{sized.name}: 3 samples cannot feed 4 ranks")):
        ShardStream(sized, decode, rank=0, world_size=4)
