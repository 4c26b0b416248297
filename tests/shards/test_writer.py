import hashlib
import tarfile

import pytest

from modalmae.shards.writer import ShardWriter, member_bytes


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(folder, samples, **limits):
    folder.mkdir()
    with ShardWriter(folder, **limits) as w:
        for key, files in samples:
            w.write(key, files)
    return w.shards


SAMPLES = [(f"k{i}", {"bin": bytes([i]) * (100 * i + 1), "json": b"{}"}) for i in range(7)]


def test_rolls_by_count_and_records_counts(tmp_path):
    shards = write(tmp_path / "a", SAMPLES, max_count=3, max_size=10**9)
    assert [s["num_samples"] for s in shards] == [3, 3, 1]
    assert [s["name"] for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(tmp_path / "a" / "shard-000001.tar") as tar:
        assert tar.getnames() == ["k3.bin", "k3.json", "k4.bin", "k4.json", "k5.bin", "k5.json"]
        member = tar.getmember("k3.bin")
        assert (member.mtime, member.uid, member.mode) == (0, 0, 0o444)
        assert tar.extractfile(member).read() == SAMPLES[3][1]["bin"]
    assert all(s["bytes"] == (tmp_path / "a" / s["name"]).stat().st_size for s in shards)


def test_rolls_by_size_and_oversized_sample_gets_own_shard(tmp_path):
    limit = member_bytes(301) + member_bytes(2) + member_bytes(401) + member_bytes(2)
    shards = write(tmp_path / "a", SAMPLES[3:6], max_count=100, max_size=limit)
    assert [s["num_samples"] for s in shards] == [2, 1]
    tiny = write(tmp_path / "b", SAMPLES[:3], max_count=100, max_size=10)
    assert [s["num_samples"] for s in tiny] == [1, 1, 1]


def test_byte_identical_rebuilds(tmp_path):
    write(tmp_path / "a", SAMPLES, max_count=3, max_size=10**9)
    write(tmp_path / "b", SAMPLES, max_count=3, max_size=10**9)
    for name in ("shard-000000.tar", "shard-000002.tar"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name)


def test_failure_mid_shard_leaves_only_complete_shards(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    with pytest.raises(RuntimeError):
        with ShardWriter(folder, max_count=3, max_size=10**9) as w:
            for i, (key, files) in enumerate(SAMPLES):
                if i == 4:
                    raise RuntimeError("interrupted")
                w.write(key, files)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-000000.tar"]
    with tarfile.open(folder / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 6
