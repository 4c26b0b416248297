"""Resolving a shard spec (folder, manifest, brace pattern, local or URL) into a ShardSet: the
name it keeps, what its manifest says, the refusals and their messages; and the epochs' shard order."""

import json
import re

import pytest
from stream_data import write_shards

from modalmae.data.shards import epoch_order, resolve_shards


def specs(tmp_path):
    """Every way of naming a shard set (resolve_shards' docstring), each a string as typed."""
    folder = write_shards(tmp_path / "ds", [2, 3])
    foreign = tmp_path / "foreign"  # tars not written by build_shards, without a manifest
    foreign.mkdir()
    (foreign / "a.tar").write_bytes((folder / "shard-000000.tar").read_bytes())
    brace = str(folder / "shard-{000000..000001}.tar")
    return {
        "folder": str(folder),
        "manifest": str(folder / "manifest.json"),
        "brace": brace,
        "foreign folder": str(foreign),
        "manifest URL": f"file://{folder}/manifest.json",
        "folder URL": f"file://{folder}/",
        "brace URL": f"file://{brace}",
    }


@pytest.mark.parametrize("kind", ["folder", "manifest", "brace", "foreign folder", "manifest URL", "folder URL", "brace URL"])
def test_a_shard_set_is_named_by_the_spec_the_user_gave(tmp_path, kind):
    # The name is what messages and per-source metrics show: the user's own words.
    spec = specs(tmp_path)[kind]
    assert resolve_shards(spec).name == spec


def test_the_manifest_tells_the_modality_and_a_pattern_tells_none(tmp_path):
    folder = write_shards(tmp_path / "ds", [2, 3])  # its manifest says "test"
    assert resolve_shards(folder).modality == resolve_shards(f"file://{folder}/").modality == "test"
    assert resolve_shards(str(folder / "shard-{000000..000001}.tar")).modality is None
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["modality"]  # an older manifest: no modality, so no check either
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert resolve_shards(folder, modality="audio").modality is None


@pytest.mark.parametrize("reads", ["audio", ("audio",), ("audio", "video"), "tests"])
def test_shards_of_another_modality_are_refused_with_how_to_build_the_right_ones(tmp_path, reads):
    folder = write_shards(tmp_path / "ds", [2, 3])  # "test" shards; "tests" is another kind, not a superset
    first = reads if isinstance(reads, str) else reads[0]
    said = (
        f"{folder}: these are test shards (says their manifest.json), but this run reads {first} shards; "
        f"build {first} shards with build_shards.py --modality {first}"
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        resolve_shards(folder, modality=reads)


@pytest.mark.parametrize("reads", [None, "test", ("audio", "test")])
def test_shards_of_a_modality_the_run_reads_are_accepted(tmp_path, reads):
    folder = write_shards(tmp_path / "ds", [2, 3])
    assert resolve_shards(folder, modality=reads).num_samples == 5
    # a brace pattern has no manifest to contradict the run
    assert resolve_shards(str(folder / "shard-{000000..000001}.tar"), modality="audio").urls


def test_a_list_of_specs_is_refused_with_advice(tmp_path):
    folder = write_shards(tmp_path / "ds", [2])
    with pytest.raises(TypeError, match="^" + re.escape("resolve_shards takes one spec; resolve each of a list")):
        resolve_shards([str(folder)])


def test_missing_files_are_named(tmp_path):
    folder = write_shards(tmp_path / "ds", [2, 3, 1])
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nope.json'}: manifest not found")):
        resolve_shards(tmp_path / "nope.json")
    # shards 3 and 4 are missing: the count, and the first of them
    said = f"2 shard(s) not found, first: {folder / 'shard-000003.tar'}"
    with pytest.raises(FileNotFoundError, match=re.escape(said)):
        resolve_shards(str(folder / "shard-{000000..000004}.tar"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"1 shard(s) not found, first: {folder / 'shard-000009.tar'}")):
        resolve_shards(str(folder / "shard-{000000,000009}.tar"))


@pytest.mark.parametrize("text,cause", [("{", "JSONDecodeError"), ('{"num_samples": 3}', "KeyError"), ("[]", "TypeError")])
def test_an_unreadable_manifest_is_named_with_the_cause(tmp_path, text, cause):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{manifest}: not a readable modalmae manifest ({cause}: ")):
        resolve_shards(manifest)


def test_epoch_order_shuffles_by_default_the_same_way_on_every_rank():
    # Exact mode puts the shards in a seeded order every epoch (the module docstring).
    urls = [f"s{i:02d}" for i in range(20)]
    orders = [epoch_order(urls, epoch=e, seed=3) for e in range(3)]
    assert all(sorted(o) == urls for o in orders)  # a permutation
    assert orders[0] != urls and len({tuple(o) for o in orders}) == 3  # a new order each epoch
    assert orders[1] == epoch_order(list(urls), epoch=1, seed=3)  # a function of (seed, epoch) only
    assert epoch_order(urls, epoch=1, seed=3, shuffle=False) == urls
