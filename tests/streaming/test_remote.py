"""Shards over http, pipe: and fsspec URLs, with retries and clear read errors."""

import functools
import hashlib
import http.server
import json
import threading

import pytest
from stream_data import decode, take, write_shards

from modalmae.data.remote import ShardReadError, iter_shard
from modalmae.data.shards import resolve_shards
from modalmae.data.stream import ShardStream


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first request for each shard fails with a 503."""

    failed: set = set()

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.endswith(".tar") and self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    folder = write_shards(tmp_path / "ds", [4, 4, 3])
    FlakyHandler.failed = set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FlakyHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    httpd.shutdown()


def test_http_manifest_and_shards_with_a_retry(server, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    url, _ = server
    shards = resolve_shards(url)  # the folder URL: its manifest.json
    assert shards.num_samples == 11 and shards.urls[0] == url + "shard-000000.tar"
    items = take(ShardStream(shards, decode, epochs=1, shuffle_buffer=1, shuffle_shards=False), 10)
    assert [int(i["value"]) for i in items] == list(range(10))
    assert len(FlakyHandler.failed) == 3  # every shard failed once and was retried


def test_read_errors_name_the_url_and_the_cause(server, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    url, _ = server
    with pytest.raises(ShardReadError, match=r"missing\.tar: HTTPError.*404.*3 attempt"):
        list(iter_shard(url + "missing.tar"))
    with pytest.raises(ShardReadError, match="exited with status 3"):
        list(iter_shard("pipe:sh -c 'echo oops >&2; exit 3'"))  # no shell unless the command names one


def test_pipe_and_fsspec_urls_read_the_same_samples(tmp_path):
    folder = write_shards(tmp_path / "ds", [5])
    local = [s["__key__"] for s in iter_shard(str(folder / "shard-000000.tar"), skip=1, take=3)]
    piped = [s["__key__"] for s in iter_shard(f"pipe:cat {folder}/shard-000000.tar", skip=1, take=3)]
    via_fsspec = [s["__key__"] for s in iter_shard(f"file://{folder}/shard-000000.tar", skip=1, take=3)]
    assert local == piped == via_fsspec == ["s00001", "s00002", "s00003"]


def test_verified_http_shards_are_retried_and_verified(server, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    url, folder = server
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["sha256"] = hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shards = resolve_shards(url)
    assert sorted(shards.checksums) == shards.urls
    items = take(ShardStream(shards, decode, epochs=1, shuffle_buffer=1, shuffle_shards=False), 10)
    assert [int(i["value"]) for i in items] == list(range(10))
    assert len(FlakyHandler.failed) == 3  # each shard's first download failed, the second was verified
