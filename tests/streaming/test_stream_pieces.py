"""What a slot reads, piece by piece: a resumed slot gives the rest of its items and opens only
the shards those come from (padded, resampled and manifest-less epochs), a shard that breaks
off is reported with where and why, whole-shard pieces carry their checksums, and a resampled
stream's layout has no padding (small tars; the wider picture: test_stream.py,
test_stream_resume.py)."""

import itertools
from collections import Counter

import pytest
import torch
from stream_data import decode, write_shards

from modalmae.data.epochs import Layout
from modalmae.data.remote import Checksum, ShardReadError, iter_shard
from modalmae.data.shards import (
    Piece,
    ShardSet,
    exact_pieces,
    resampled_pieces,
    resolve_shards,
)
from modalmae.data.stream import ShardStream, StreamPosition, collate

# Slot 1 of 2 workers, one rank, over 9 one-sample shards (a shard opened is a sample read):
# "padded": samples 4..8 (9 * 1 // 2 = 4) are its segment, the longest (ceil(9 / 2) = 5), padded
# to 8 (a multiple of 4) with the segment's first 3 again; "resampled": shards drawn with
# replacement, read whole (buffer 1: in the order drawn); "unsized": no manifest, so whole
# shards, every second one of the epoch's order: 4.
MODES = {
    "padded": ({"pad_to": 4}, 8),
    "resampled": ({"resampled": True, "shuffle_buffer": 1}, 8),
    "unsized": ({}, 4),
}


def one_sample_shards(tmp_path, *, manifest):
    folder = write_shards(tmp_path / "ds", [1] * 9, manifest=manifest)
    return resolve_shards(folder if manifest else str(folder / "shard-{000000..000008}.tar"))


@pytest.mark.parametrize("mode", MODES)
def test_a_resumed_slot_gives_the_rest_of_its_items_and_opens_only_their_shards(tmp_path, monkeypatch, mode):
    """From every position of its epoch (or stretch of draws), a resumed slot yields what the
    uninterrupted one yields after it, augmentations included, decodes only those, and with a
    manifest opens only their shards, once per item still to come: shards all of whose samples
    came out before the position are not opened. Without a manifest the samples before the
    position are read again (not decoded)."""
    extra, n = MODES[mode]
    shards = one_sample_shards(tmp_path, manifest=mode != "unsized")
    reads, decoded = [], []
    read = Piece.read

    def counted(piece, **kw):
        reads.append(piece.url)
        return read(piece, **kw)

    def augmented(sample, rng):
        decoded.append(sample["__key__"])
        return {"value": torch.tensor(int(sample["txt"])), "aug": torch.tensor(rng.random())}

    monkeypatch.setattr(Piece, "read", counted)
    kw = {"seed": 3, "epochs": 1, "shuffle_buffer": 2, **extra}

    def slot(n, start=None):
        return list(itertools.islice(ShardStream(shards, augmented, start=start, **kw).slot_items(1, 2), n))

    def seen(items):
        return [(i["__key__"], i["__index__"], i["__pad__"], float(i["aug"])) for i in items]

    whole = slot(n + 1)  # one more than the epoch holds: "padded" and "unsized" end there
    urls = [i["__url__"] for i in whole]
    if mode == "resampled":
        whole, urls = whole[:n], urls[:n]  # no end
        assert urls == [p.url for p in itertools.islice(resampled_pieces(shards, seed=3, rank=0, worker=1), n)]
    else:
        segment = [p.url for p in exact_pieces(shards, epoch=0, seed=3, rank=0, world_size=1, worker=1, num_workers=2)]
        padding = segment[:3] if mode == "padded" else []  # the segment's start, in the epoch's order
        assert sorted(urls[:len(segment)]) == sorted(segment) and urls[len(segment):] == padding
    assert [i["__pad__"] for i in whole] == ([False] * 5 + [True] * 3 if mode == "padded" else [False] * n)
    assert [i["__index__"] for i in whole] == list(range(n))
    for k in range(n):
        position = StreamPosition(1, 2)
        if k:
            position.update(collate(whole[:k]))
        reads.clear()
        decoded.clear()
        rest = slot(n - k, position.state())
        assert seen(rest) == seen(whole[k:])
        assert decoded == [i["__key__"] for i in whole[k:]]
        assert Counter(reads) == Counter(urls if mode == "unsized" else urls[k:])


def test_a_shard_that_breaks_off_is_reported_with_where_why_and_what_it_lost(tmp_path, caplog):
    """A shard cut inside its second sample gives its first, then its reader's error is logged
    naming the shard, the samples it gave and the error's type and text, and the manifest's count
    tells how many it lost; an intact shard is read without a word."""
    folder = write_shards(tmp_path / "ds", [4, 3])
    shard = folder / "shard-000000.tar"
    # A sample is two members (.txt, .json), each a 512-byte header and one 512-byte block:
    # 2048 + 600 bytes end inside sample 1's first block.
    shard.write_bytes(shard.read_bytes()[: 2048 + 600])
    shards = resolve_shards(folder)
    url = shards.urls[0]
    with pytest.raises(ShardReadError) as error:
        list(iter_shard(url, take=4))
    items = list(ShardStream(shards, decode, epochs=1, shuffle_buffer=1, shuffle_shards=False))
    assert [int(i["value"]) for i in items] == [0, 4, 5, 6]
    said = [r.getMessage() for r in caplog.records if r.name == "modalmae.data.stream"]
    assert said == [
        f"stopped reading shard {url} after 1 samples: ShardReadError: {error.value}",
        f"shard {url} gave 1 of the 4 samples its manifest lists",
    ]


def test_whole_shard_pieces_carry_their_manifest_checksums():
    """Without sample counts slots get whole shards; each still carries its shard's checksum
    (None for a shard without one), to be verified when read."""
    urls = [f"s{i}" for i in range(5)]
    sums = {u: Checksum(f"{i:064x}", 100 + i) for i, u in enumerate(urls) if i != 2}
    shards = ShardSet(urls=urls, checksums=sums)
    pieces = [p for w in range(2) for p in exact_pieces(shards, epoch=1, seed=0, rank=0, world_size=1, worker=w, num_workers=2)]
    assert sorted(p.url for p in pieces) == urls
    assert [(p.skip, p.take, p.checksum) for p in pieces] == [(0, None, sums.get(p.url)) for p in pieces]


def test_a_resampled_streams_layout_has_no_padding():
    """A resampled stream has no epochs, so nothing to pad: its layout says so whatever ``pad_to``
    it was given (and has no quota), while an exact stream's layout keeps its ``pad_to``."""
    shards = ShardSet(urls=["a", "b"], num_samples=4, sizes={"a": 2, "b": 2})
    layout = ShardStream(shards, decode, resampled=True, pad_to=4).layout(0)
    assert layout == Layout(world_size=1, workers=1, pad_to=None, items_per_sample=1, shuffle_buffer=256, shuffle_shards=True)
    assert layout.quota(2) is None
    assert ShardStream(shards, decode, pad_to=4).layout(2).pad_to == 4
