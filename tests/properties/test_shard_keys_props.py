"""Shard keys for arbitrary relative paths (any unicode but NUL: spaces, dots, separators,
non-ASCII): ``sample_key`` gives a key ``MEMBER_NAME`` accepts, stable and distinct per path,
and samples round-trip through ``ShardWriter`` and ``iter_shard`` (same keys, same bytes)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from modalmae.data.remote import Checksum
from modalmae.data.shards import iter_shard
from modalmae.formats.schema import MEMBER_NAME, sample_key
from modalmae.shards.writer import BLOCK, ShardWriter, member_header

from ._support import examples

# Any character but NUL (surrogates are no text: the builder skips such names), weighted
# towards the ones that matter in paths.
chars = st.one_of(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    st.sampled_from(list("/\\. -_~é日本\u200b\U0001f600")),
)
names = st.text(chars, min_size=1, max_size=20)
# Free text, and path-like text: folders, dotted names, an extension.
paths = st.one_of(
    st.text(chars, min_size=1, max_size=120),
    st.builds(
        lambda folders, stem, ext: "/".join([*folders, f"{stem}.{ext}"]),
        st.lists(names, max_size=4), names, st.sampled_from(["wav", "tar.gz", "nii.gz", "mp4", ""]),
    ),
)
# Extensions as MEMBER_NAME reads them: dot-separated non-empty parts, no slash, backslash or
# control character (an MRI entry is "<sequence>.nii.gz"; a sequence name may hold spaces).
ext_parts = st.text(st.characters(blacklist_characters="./\\", blacklist_categories=("Cs",), min_codepoint=0x20), min_size=1, max_size=12)
exts = st.lists(ext_parts, min_size=1, max_size=3).map(".".join).filter(lambda e: not e.startswith("__"))  # "__key__": the reader's own fields


@examples(10)
@given(path=paths, ext=st.one_of(st.sampled_from(["json", "flac", "t1.nii.gz", "T2 FLAIR.nii"]), exts))
@example(path="a.b.c.wav", ext="json")
@example(path="dir.v2/take 1.final.flac", ext="flac")
@example(path="..", ext="json")
@example(path="/", ext="json")
@example(path=".hidden", ext="json")
@example(path="日本語/ファイル名.wav", ext="json")
@example(path="x" * 300 + ".wav", ext="t1ce.nii.gz")
def test_sample_key_is_a_member_name(path, ext):
    key = sample_key(path)
    assert key == sample_key(str(path))  # stable
    assert key.isascii() and "." not in key and "/" not in key
    assert key.endswith("-" + hashlib.sha1(path.encode("utf-8")).hexdigest()[:8])  # the hash of the full path
    match = MEMBER_NAME.fullmatch(f"{key}.{ext}")
    assert match is not None, f"{key}.{ext} is no member name"
    assert match.group("key") == key and match.group("ext") == ext
    # the key and a short extension fit a USTAR header (no PAX record needed)
    assert len(member_header(f"{key}.json", 1)) == BLOCK  # one USTAR block; PAX would add a record


@examples(10)
@given(a=paths, b=paths)
def test_distinct_paths_get_distinct_keys(a, b):
    if a != b:
        assert sample_key(a) != sample_key(b)
    else:
        assert sample_key(a) == sample_key(b)


@examples(5)
@given(path=paths)
def test_paths_that_sanitize_alike_stay_distinct(path):
    """``a/b.wav`` and ``a_b.wav`` share a readable stem; the hash keeps them apart."""
    variants = {path, path.replace("/", "_"), path.replace(".", "_"), path.replace(" ", "_"), path + ".wav", "_" + path}
    keys = {sample_key(p) for p in variants}
    assert len(keys) == len(variants)


@examples(2)
@given(
    samples=st.lists(
        st.tuples(paths, st.dictionaries(st.one_of(st.sampled_from(["json", "flac", "t1.nii.gz"]), exts), st.binary(max_size=700), min_size=1, max_size=3)),
        min_size=1, max_size=8, unique_by=lambda s: s[0],
    ),
    max_count=st.integers(1, 4),
)
def test_samples_round_trip_through_a_shard(samples, max_count):
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(tmp, max_count=max_count, max_size=10**8) as writer:
            for path, files in samples:
                writer.write(sample_key(path), files)
        shards = writer.shards
        assert sum(s["num_samples"] for s in shards) == len(samples)
        assert [s["name"] for s in shards] == sorted(p.name for p in Path(tmp).glob("*.tar"))
        read = []
        for s in shards:
            url = str(Path(tmp) / s["name"])
            got = list(iter_shard(url, checksum=Checksum(s["sha256"], s["bytes"])))  # verified against the writer's digest
            assert len(got) == s["num_samples"]
            assert all(g["__url__"] == url for g in got)
            read += got
        assert [g["__key__"] for g in read] == [sample_key(p) for p, _ in samples]
        for got, (_, files) in zip(read, samples):
            assert {k: v for k, v in got.items() if not k.startswith("__")} == files
