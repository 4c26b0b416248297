"""ShardWriter: rolling by count and size, fixed member metadata, byte-identical rebuilds, atomicity,
checksums (and the builder's manifest and skip reasons around it)."""

import dataclasses
import hashlib
import tarfile

import pytest

from modalmae.shards.build import ShardBuilder, build_shards
from modalmae.shards.plan import safe_prepare
from modalmae.shards.types import Sample
from modalmae.shards.writer import RECORD, ShardWriter, archive_size, remove_stale


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(folder, samples, **limits):
    folder.mkdir()
    with ShardWriter(folder, **limits) as w:
        for key, files in samples:
            w.write(key, files)
    return w.shards


# Sample i: a payload of 3000 * i + 1 bytes and a tiny json.
SAMPLES = [(f"k{i}", {"bin": bytes([i]) * (3000 * i + 1), "json": b'{"i": %d}' % i}) for i in range(7)]


def test_rolls_by_count_and_records_counts(tmp_path):
    shards = write(tmp_path / "a", SAMPLES, max_count=3, max_size=10**9)
    assert [s["num_samples"] for s in shards] == [3, 3, 1]
    assert [s["name"] for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(s["bytes"] == (tmp_path / "a" / s["name"]).stat().st_size for s in shards)
    with tarfile.open(tmp_path / "a" / "shard-000001.tar") as tar:
        assert tar.getnames() == ["k3.bin", "k3.json", "k4.bin", "k4.json", "k5.bin", "k5.json"]
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == (0, 0, 0, "", "", 0o444)
            assert member.pax_headers == {}  # plain USTAR headers
        assert tar.extractfile("k3.bin").read() == SAMPLES[3][1]["bin"]
        assert tar.extractfile("k4.json").read() == b'{"i": 4}'
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes()[257:263] == b"ustar\x00"  # POSIX magic


def test_rolls_by_size_on_disk_and_oversized_sample_gets_own_shard(tmp_path):
    limit = 3 * RECORD  # room for about two of the 3-12 kB samples, padding included
    shards = write(tmp_path / "a", SAMPLES, max_count=100, max_size=limit)
    assert sum(s["num_samples"] for s in shards) == len(SAMPLES)
    assert len(shards) > 2 and all(s["bytes"] <= limit for s in shards)
    # Greedy: each shard is closed only because its next sample would not have fitted.
    on_disk = [sum(512 + -(-len(d) // 512) * 512 for d in files.values()) for _, files in SAMPLES]
    start = 0
    for shard in shards[:-1]:
        end = start + shard["num_samples"]
        assert archive_size(sum(on_disk[start:end])) == shard["bytes"]
        assert archive_size(sum(on_disk[start : end + 1])) > limit
        start = end
    tiny = write(tmp_path / "b", SAMPLES[:3], max_count=100, max_size=10)
    assert [s["num_samples"] for s in tiny] == [1, 1, 1]


def test_byte_identical_rebuilds(tmp_path):
    write(tmp_path / "a", SAMPLES, max_count=3, max_size=10**9)
    write(tmp_path / "b", SAMPLES, max_count=3, max_size=10**9)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 3
    for name in names:
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name)


def test_long_name_falls_back_to_pax_for_that_member_only(tmp_path):
    long_key = "x" * 120
    write(tmp_path / "a", [("short", {"bin": b"1"}), (long_key, {"bin": b"2"})], max_count=10, max_size=10**9)
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["short.bin", f"{long_key}.bin"]
        assert members[0].pax_headers == {} and members[1].pax_headers == {"path": f"{long_key}.bin"}
        assert tar.extractfile(members[1]).read() == b"2"


def test_failure_mid_shard_leaves_only_complete_shards(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    with pytest.raises(RuntimeError):
        with ShardWriter(folder, max_count=3, max_size=10**9) as w:
            for i, (key, files) in enumerate(SAMPLES):
                if i == 4:  # one sample into the second shard
                    assert (folder / "shard-000001.tar.tmp").exists()
                    raise RuntimeError("interrupted")
                w.write(key, files)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-000000.tar"]  # the .tmp is gone too
    with tarfile.open(folder / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 6


def test_remove_stale_touches_only_our_files(tmp_path):
    for name in ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar.tmp", "shard-extra.tar", "notes.tar", "manifest.json"]:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale(tmp_path, keep={"shard-000000.tar"}) == ["shard-000001.tar", "shard-000002.tar.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "notes.tar", "shard-000000.tar", "shard-extra.tar"]


def test_rejects_bad_limits(tmp_path):
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, max_count=0, max_size=100)


def test_each_shard_records_the_sha256_of_its_bytes(tmp_path):
    shards = write(tmp_path / "a", SAMPLES, max_count=3, max_size=10**9)
    assert [s["sha256"] for s in shards] == [digest(tmp_path / "a" / s["name"]) for s in shards]


@dataclasses.dataclass
class NoOptions:
    pass


def test_build_shards_puts_the_checksums_in_the_manifest(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    def prepare(path, relpath, options):
        return Sample(files={"bin": path.read_bytes()}, meta={"source": relpath})

    builder = ShardBuilder(name="test", extensions=frozenset({".bin"}), options=NoOptions, prepare=prepare)
    manifest = build_shards(
        builder=builder, input_dir=tmp_path / "in", output_dir=tmp_path / "out", max_count=2, workers=1, progress=False
    )
    assert len(manifest["shards"]) == 3
    assert [s["sha256"] for s in manifest["shards"]] == [digest(tmp_path / "out" / s["name"]) for s in manifest["shards"]]


def test_an_exception_without_a_message_still_gives_a_reason():
    def prepare(path, relpath, options):
        raise {"a": MemoryError(), "b": KeyError(), "c": ValueError("bad header")}[relpath]

    reasons = [safe_prepare(prepare, None, relpath, None).reason for relpath in ("a", "b", "c")]
    assert reasons[0].startswith("MemoryError (") and "more memory" in reasons[0]
    assert reasons[1:] == ["KeyError", "ValueError: bad header"]


def test_writeback_starts_while_the_shard_is_written(tmp_path, monkeypatch):
    """Every WRITEBACK_BYTES of a shard, the kernel is asked to start writing them (so the final
    fsync waits only for the rest): ranges in order, back to back from 0, each whole samples,
    the tail left to fsync; the bytes are those of a shard written without it."""
    from modalmae.shards import writer

    started = []
    monkeypatch.setattr(writer, "start_writeback", lambda fd, offset, length: started.append((offset, length)))
    sample = {"bin": bytes(range(256)) * 4096}  # 1 MiB: a member of 1 MiB + 512 bytes of header
    (tmp_path / "a").mkdir()
    with ShardWriter(tmp_path / "a", max_count=100, max_size=10**9) as w:
        for i in range(10):
            w.write(f"s{i:02d}", sample)
    member = 512 + len(sample["bin"])
    assert started == [(0, 4 * member), (4 * member, 4 * member)]  # after samples 4 and 8; 9 and 10 for fsync
    monkeypatch.setattr(writer, "WRITEBACK_BYTES", 1 << 40)
    (tmp_path / "b").mkdir()
    with ShardWriter(tmp_path / "b", max_count=100, max_size=10**9) as w:
        for i in range(10):
            w.write(f"s{i:02d}", sample)
    assert len(started) == 2
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()


def test_start_writeback_is_harmless_on_any_file(tmp_path):
    """The real call (Linux sync_file_range; elsewhere nothing) neither raises nor changes bytes."""
    from modalmae.shards.writer import start_writeback

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    with open(path, "rb+") as f:
        start_writeback(f.fileno(), 0, 10_000)
        start_writeback(f.fileno(), 5_000, 10**9)  # past the end
    assert path.read_bytes() == b"x" * 10_000
