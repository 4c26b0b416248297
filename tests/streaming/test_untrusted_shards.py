"""Data is never code, and a bad shard never reaches training: manifests that try to run
commands or leave their folder are refused, tar members that are not ours are skipped, and a
shard that fails its checksum gives no sample."""

import functools
import hashlib
import http.server
import io
import json
import pathlib
import shutil
import tarfile
import threading

import pytest

from modalmae.data.remote import Checksum, ChecksumMismatch, ShardReadError, iter_shard
from modalmae.data.shards import resolve_shards
from modalmae.data.stream import ShardStream
from modalmae.formats.schema import sample_key
from modalmae.shards.writer import ShardWriter

# Six samples as build_shards writes them: real keys, a payload and a json each.
SAMPLES = [
    (sample_key(f"clips/c{i}.wav"), {"wav": bytes([i + 1]) * (700 + 300 * i), "json": json.dumps({"i": i}).encode()})
    for i in range(6)
]
KEYS = [key for key, _ in SAMPLES]


def build(folder, *, max_count=3):
    """Shards of SAMPLES written by our writer, and the manifest build_shards would write."""
    folder.mkdir(parents=True)
    with ShardWriter(folder, max_count=max_count, max_size=10**9) as writer:
        for key, files in SAMPLES:
            writer.write(key, files)
    write_manifest(folder, writer.shards)
    return folder


def write_manifest(folder, shards):
    manifest = {"format_version": 1, "modality": "test", "num_samples": sum(s["num_samples"] for s in shards), "shards": shards}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest["shards"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def raw(sample):
    return {"__key__": sample["__key__"], "wav": sample["wav"], "json": sample["json"]}


def items(shards, **kw):
    """Every item of one epoch, in order."""
    return list(ShardStream(shards, lambda sample, rng: raw(sample), epochs=1, shuffle_buffer=1, shuffle_shards=False, **kw))


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder quietly, counting the requests for each path."""

    requests: dict

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests[self.path] = self.requests.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(folder):
        Handler.requests = {}
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    for httpd in servers:
        httpd.shutdown()


# --- pipe: only from the command line; a manifest's shards stay in its folder ------------------

CRAFTED = [
    "pipe:touch MARKER",
    "pipe:touch MARKER; cat shard-000000.tar",
    "pipe:cat shard-000000.tar | touch MARKER",
    "pipe:$(touch MARKER)",
    "pipe:sh -c 'touch MARKER'",
    "shard-000000.tar; touch MARKER",  # would ride along a manifest read through a command
    "shard-000000.tar $(touch MARKER)",
    "../../etc/x.tar",
    "sub/../../x.tar",
    "..",
    "/abs/x.tar",
    "//host/x.tar",
    "file:///x.tar",
    "simplecache::file:///x.tar",
    "sftp://host/x.tar",
    "C:\\x.tar",
    "",
]


@pytest.mark.parametrize("how", ["local", "http", "pipe"])
@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_manifest_is_refused_and_runs_nothing(tmp_path, monkeypatch, serve, how, name):
    folder = build(tmp_path / "ds")
    edit_manifest(folder, lambda shards: shards[1].update(name=name))
    monkeypatch.chdir(tmp_path)  # where "touch MARKER" would land
    spec = serve(folder) if how == "http" else f"pipe:cat {folder}/manifest.json" if how == "pipe" else str(folder)
    with pytest.raises(ValueError, match="refused") as error:
        resolve_shards(spec)
    message = str(error.value)
    assert "manifest.json" in message and repr(name) in message and "\n" not in message
    assert not (tmp_path / "MARKER").exists() and not (folder / "MARKER").exists()


def test_a_manifest_may_name_shards_in_subfolders_and_a_local_one_by_data_url(tmp_path, serve):
    folder = build(tmp_path / "ds")
    (folder / "part").mkdir()
    shutil.move(folder / "shard-000000.tar", folder / "part" / "shard-000000.tar")
    url = serve(folder)
    edit_manifest(folder, lambda shards: (shards[0].update(name="part/shard-000000.tar"), shards[1].update(name=url + "shard-000001.tar")))
    shards = resolve_shards(folder)
    assert shards.urls == [str(folder / "part" / "shard-000000.tar"), url + "shard-000001.tar"]
    assert [i["__key__"] for i in items(shards)] == KEYS
    # The same manifest fetched from a server may not send us elsewhere: only names under it.
    with pytest.raises(ValueError, match="a remote manifest names its shards relative to itself"):
        resolve_shards(url)
    edit_manifest(folder, lambda shards: shards[1].update(name="shard-000001.tar"))
    assert resolve_shards(url).urls == [url + "part/shard-000000.tar", url + "shard-000001.tar"]


def test_a_pipe_typed_on_the_command_line_runs_without_a_shell(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    monkeypatch.chdir(tmp_path)
    folder = build(tmp_path / "ds")
    shard = folder / "shard-000000.tar"
    assert [i["__key__"] for i in items(resolve_shards(f"pipe:cat {shard}"))] == KEYS[:3]
    # The manifest read through a command: its plain names become that command on each shard.
    assert [i["__key__"] for i in items(resolve_shards(f"pipe:cat {folder}/manifest.json"))] == KEYS
    # Shell syntax is only words to the command: cat finds no file "…tar;", and nothing is touched.
    with pytest.raises(ShardReadError, match="exited with status 1"):
        list(iter_shard(f"pipe:cat {shard}; touch MARKER"))
    assert not (tmp_path / "MARKER").exists()


# --- tar members that are not ours -------------------------------------------------------------


def member(name, data=b"not a sample", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def insert_foreign_members(shard):
    """Rewrite ``shard`` with members that are not ours before, inside, between and after its
    samples (a sample's files are members 2k and 2k + 1); returns how many."""
    with tarfile.open(shard) as tar:
        ours = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    k0, k1, k2 = (m.name.split(".")[0] for m, _ in ours[::2])
    foreign = {
        0: [member("../../x.wav"), member("/abs/path.wav")],  # before the first sample
        1: [member(f"evil/{k0}.json"), member(f"{k0}.txt", kind=tarfile.SYMTYPE, link="/etc/passwd")],  # inside it
        2: [member(f"{k1}.d", kind=tarfile.DIRTYPE), member(f"{k1}.wav", kind=tarfile.LNKTYPE, link=f"{k0}.wav")],
        4: [member(f"{k2}.dev", kind=tarfile.CHRTYPE), member(f"{k1}..wav"), member(".wav"), member(f"{k1}.a\\b")],
        6: [member("../after.wav"), member("C:\\x.wav")],  # after the last
    }
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(len(ours) + 1):
            for info, data in foreign.get(i, []) + ours[i : i + 1]:
                tar.addfile(info, None if data is None else io.BytesIO(data))
    return sum(map(len, foreign.values()))


def test_members_that_are_not_ours_are_skipped_and_split_no_sample(tmp_path, caplog):
    folder = build(tmp_path / "ds")
    shard = folder / "shard-000000.tar"
    inserted = insert_foreign_members(shard)
    data = shard.read_bytes()
    edit_manifest(folder, lambda shards: shards[0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))

    samples = list(iter_shard(str(shard)))
    assert [raw(s) for s in samples] == [{"__key__": k, **files} for k, files in SAMPLES[:3]]
    assert all(set(s) == {"__key__", "__url__", "wav", "json"} for s in samples)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert str(shard) in warnings[0] and f"skipped {inserted} tar member(s)" in warnings[0] and "'../../x.wav'" in warnings[0]

    # Ranges count real samples only: the exact-epoch planner's skip/take land where it means.
    for skip in range(3):
        for take in range(1, 4 - skip):
            assert [s["__key__"] for s in iter_shard(str(shard), skip=skip, take=take)] == KEYS[skip : skip + take]
    for rank in range(3):  # ranks 0 and 1 split the first shard between them
        got = items(resolve_shards(folder), rank=rank, world_size=3)
        assert [i["__key__"] for i in got] == KEYS[2 * rank : 2 * rank + 2]
        assert sum(i["num_skipped"] for i in got) == 0


# --- checksums -----------------------------------------------------------------------------------


def flip_byte(shard, name):
    """Flip one byte inside the data of member ``name``; returns the member's new bytes."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(name)
    data = bytearray(shard.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0xFF
    shard.write_bytes(data)
    return bytes(data[info.offset_data : info.offset_data + info.size])


def test_the_manifest_carries_each_shards_checksum(tmp_path):
    folder = build(tmp_path / "ds")
    shards = resolve_shards(folder)
    for url in shards.urls:
        data = pathlib.Path(url).read_bytes()
        assert shards.checksums[url] == Checksum(hashlib.sha256(data).hexdigest(), len(data))
    edit_manifest(folder, lambda entries: [e.pop("sha256") for e in entries])
    assert resolve_shards(folder).checksums == {}  # an older manifest: streamed unverified
    assert [i["__key__"] for i in items(resolve_shards(folder))] == KEYS
    edit_manifest(folder, lambda entries: entries[0].update(sha256="not hex", bytes=1))
    with pytest.raises(ValueError, match="not a readable modalmae manifest"):
        resolve_shards(folder)


def test_a_corrupt_shard_gives_no_sample_unless_verification_is_off(tmp_path, caplog):
    folder = build(tmp_path / "ds")
    shard = folder / "shard-000000.tar"
    flipped = flip_byte(shard, f"{KEYS[1]}.wav")
    shards = resolve_shards(folder)

    got = items(shards)
    assert [i["__key__"] for i in got] == KEYS[3:]  # none of the corrupt shard's samples
    assert got[0]["num_skipped"] == 3 and sum(i["num_skipped"] for i in got) == 3
    assert f"{shard}: checksum mismatch" in caplog.text

    unverified = items(shards, verify=False)
    assert [i["__key__"] for i in unverified] == KEYS
    assert unverified[1]["wav"] == flipped != SAMPLES[1][1]["wav"]


def test_a_range_read_verifies_the_whole_shard(tmp_path):
    folder = build(tmp_path / "ds", max_count=4)  # shards of 4 and 2 samples
    shard = folder / "shard-000000.tar"
    flip_byte(shard, f"{KEYS[3]}.json")  # the shard's last sample
    checksum = resolve_shards(folder).checksums[str(shard)]
    with pytest.raises(ChecksumMismatch, match="checksum mismatch: sha256"):
        next(iter_shard(str(shard), take=1, checksum=checksum))
    assert [s["__key__"] for s in iter_shard(str(shard), take=1)] == KEYS[:1]
    # Two ranks: rank 0's part (samples 0-2) lies wholly before the flipped byte, yet it gets none.
    assert items(resolve_shards(folder), rank=0, world_size=2) == []
    assert [i["__key__"] for i in items(resolve_shards(folder), rank=1, world_size=2)] == KEYS[4:]


def test_remote_shards_are_verified_once_downloaded_and_not_refetched(tmp_path, serve, caplog):
    folder = build(tmp_path / "ds")
    url = serve(folder)
    assert [i["__key__"] for i in items(resolve_shards(url))] == KEYS  # verified, and read from the copy
    flip_byte(folder / "shard-000000.tar", f"{KEYS[2]}.wav")
    Handler.requests = {}
    got = items(resolve_shards(url))
    assert [i["__key__"] for i in got] == KEYS[3:] and got[0]["num_skipped"] == 3
    assert f"{url}shard-000000.tar: checksum mismatch" in caplog.text
    assert Handler.requests["/shard-000000.tar"] == 1  # a mismatch is the data's fault: no retry
    # A source longer than its manifest says is cut off there: nothing can fill the disk.
    size = json.loads((folder / "manifest.json").read_text())["shards"][1]["bytes"]
    with open(folder / "shard-000001.tar", "ab") as f:
        f.write(b"\0" * 4 * size)
    with pytest.raises(ChecksumMismatch, match=f"more than the {size} bytes"):
        list(iter_shard(url + "shard-000001.tar", checksum=resolve_shards(url).checksums[url + "shard-000001.tar"]))


def test_a_truncated_shard_gives_no_sample_when_verified(tmp_path, caplog):
    folder = build(tmp_path / "ds")
    shard = folder / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # unverified, its first samples would still come out
    got = items(resolve_shards(folder))
    assert [i["__key__"] for i in got] == KEYS[3:] and got[0]["num_skipped"] == 3
    assert "ended after 3000 of the" in caplog.text
