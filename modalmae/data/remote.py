"""Opening shards wherever they live, and reading a range of samples out of a tar.

A shard URL is one of:

- a local path (``shards/speech/shard-000000.tar``): opened directly and *seekable*, so the
  samples before a range's start are passed over without reading their bytes;
- ``http://`` / ``https://``: streamed with the standard library (no extra dependency);
- any other ``scheme://`` (``s3://``, ``gs://``, ``file://``, ``hf://`` ...): opened through
  fsspec, which needs that scheme's backend (``pip install s3fs`` / ``gcsfs``);
- ``pipe:COMMAND``: the standard output of a shell command (``pipe:aws s3 cp s3://b/x.tar -``),
  WebDataset's convention; a command that exits with an error is a read error.

Reads of remote shards are retried (with exponential back-off), resuming at the first sample not
yet delivered; a shard that still fails raises ``ShardReadError`` naming the URL and the cause.

Samples follow the WebDataset convention: the files of one sample are consecutive tar members
sharing a key, the member name up to the first dot of its base name.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Bytes read from each shard by this process (benchmarks/streaming_scale.py reports them).
BYTES_READ: Counter[str] = Counter()


class ShardReadError(OSError):
    """A shard could not be read (after retries, for remote ones)."""


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and ``scheme://`` URLs (a Windows drive letter is local)."""
    return url.startswith("pipe:") or len(urlsplit(url).scheme) > 1


def join_url(base: str, name: str) -> str:
    """``name`` relative to the folder holding ``base`` (a manifest's path or URL), unless it is
    already absolute."""
    if is_remote(name) or os.path.isabs(name):
        return name
    return f"{base.rsplit('/', 1)[0]}/{name}" if is_remote(base) else os.path.join(os.path.dirname(base), name)


class _Pipe:
    """File-like standard output of ``pipe:`` command; a failed command raises at the end."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self._stderr)

    def read(self, size: int = -1) -> bytes:
        data = self._proc.stdout.read(size)
        if not data and self._proc.wait() != 0:
            self._stderr.seek(0)
            tail = self._stderr.read()[-500:].decode(errors="replace").strip()
            raise OSError(f"pipe command {self.command!r} exited with status {self._proc.returncode}: {tail}")
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()
        self._stderr.close()


class _Counted:
    """Counts the bytes read through a file object into ``BYTES_READ[url]``."""

    def __init__(self, raw, url: str) -> None:
        self.raw, self.url = raw, url

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        BYTES_READ[self.url] += len(data)
        return data

    def __getattr__(self, name):  # seek, tell, seekable, close...
        return getattr(self.raw, name)

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc) -> None:
        self.raw.close()


def open_url(url: str, *, timeout: float = 60.0) -> BinaryIO:
    """A readable binary file object for a shard path or URL (see the module docstring)."""
    if url.startswith("pipe:"):
        raw = _Pipe(url[len("pipe:") :])
    elif urlsplit(url).scheme in ("http", "https"):
        raw = urllib.request.urlopen(url, timeout=timeout)
    elif is_remote(url):
        scheme = urlsplit(url).scheme
        try:
            import fsspec
        except ImportError as e:
            raise ImportError(f"{url}: reading {scheme}:// shards needs fsspec (pip install fsspec)") from e
        try:
            raw = fsspec.open(url, "rb").open()
        except (ImportError, ValueError) as e:  # fsspec names the missing backend package
            raise ImportError(f"{url}: no fsspec backend for {scheme}:// ({e})") from e
    else:
        raw = open(url, "rb")  # noqa: SIM115 - closed by the caller
    return _Counted(raw, url)


def _split_name(name: str) -> tuple[str, str]:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``), WebDataset's key rule."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def _read_tar(url: str, *, skip: int, take: int | None) -> Iterator[dict]:
    stream = open_url(url)
    try:
        # Local files are opened for random access, so skipped members are seeked over.
        seekable = not is_remote(url)
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            index, key, sample = -1, None, None
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _split_name(member.name)
                if member_key != key:
                    if sample is not None:
                        yield sample
                    index, key, sample = index + 1, member_key, None
                    if take is not None and index >= skip + take:
                        return
                    if index >= skip:
                        sample = {"__key__": key, "__url__": url}
                if sample is not None:
                    sample[ext] = tar.extractfile(member).read()
            if sample is not None:
                yield sample
    finally:
        stream.close()


def iter_shard(url: str, *, skip: int = 0, take: int | None = None, attempts: int | None = None, backoff: float = 1.0) -> Iterator[dict]:
    """Raw samples ``skip .. skip + take`` of one tar: {"__key__", "__url__", ext: bytes, ...}.

    Remote shards get ``attempts`` tries (default 3), local ones one: a truncated local file
    stays truncated. A retry restarts the read after the samples already yielded.
    """
    attempts = attempts or (3 if is_remote(url) else 1)
    done = 0
    for attempt in range(1, attempts + 1):
        try:
            for sample in _read_tar(url, skip=skip + done, take=None if take is None else take - done):
                done += 1
                yield sample
            return
        except Exception as e:  # any failure to read is reported the same way
            if attempt == attempts:
                raise ShardReadError(
                    f"{url}: {type(e).__name__}: {e} (gave {done} samples; {attempts} attempt(s))"
                ) from e
            wait = backoff * 2 ** (attempt - 1)
            log.warning("reading %s failed (%s: %s); retry %d/%d in %.1f s", url, type(e).__name__, e, attempt, attempts - 1, wait)
            time.sleep(wait)
