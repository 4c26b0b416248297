"""Opening shards wherever they live, and reading a range of samples out of a tar.

A shard URL is one of:

- a local path (``shards/speech/shard-000000.tar``): opened directly and *seekable*, so the
  samples before a range's start are passed over without reading their bytes;
- ``http://`` / ``https://``: streamed with the standard library (no extra dependency);
- any other ``scheme://`` (``s3://``, ``gs://``, ``file://``, ``hf://`` ...): opened through
  fsspec, which needs that scheme's backend (``pip install s3fs`` / ``gcsfs``);
- ``pipe:COMMAND``: the standard output of a command (``pipe:aws s3 cp s3://b/x.tar -``),
  WebDataset's convention. The command is split like a shell would (``shlex``) but run without
  one: for pipes or redirections write ``pipe:sh -c '...'``. A command that exits with an
  error is a read error.

Data is never code. Any of these may be typed on the command line, but a manifest is data, so
the shards it lists are checked (``shard_url``), and any other entry is refused with the
manifest's name and the entry's:

- a name relative to the manifest (what build_shards writes) must stay in its folder: plain
  ``[A-Za-z0-9._-]`` parts joined by ``/``, no ``..``; a remote manifest's resolve under its
  base URL;
- a local manifest may also list shards by a data source's URL (``http(s)``, ``s3``, ``gs``,
  ``gcs``, ``az``, ``abfs``, ``hf``); a remote one may not, so a manifest fetched from a server
  cannot send this machine to other hosts or buckets with its credentials;
- never a ``pipe:`` command, ``file://`` or another scheme, an absolute path or ``..``.

Samples follow the WebDataset convention: the files of one sample are consecutive tar members
sharing a key. Only members named as our writer names them (``schema.MEMBER_NAME``: a
``sample_key`` and an extension, no folder, no ``..``) and holding plain bytes are read; any
other member (a link, a folder, ``../x.wav``, ``/abs.wav``) is skipped with one warning per
read of the shard, and does not count as a sample, so a range's start and length count only
real samples.

When the manifest gives a shard's ``sha256`` (``Checksum``), the whole shard is verified
before any of its samples is read, whatever range is asked for: a local file is hashed in a
first sequential pass, a remote one copied to an anonymous temporary file while it is hashed
(never more than the manifest's byte count) and read from there. A shard that does not match
raises ``ChecksumMismatch`` and gives no sample.

Reads of remote shards are retried (with exponential back-off), resuming at the first sample not
yet delivered; a shard that still fails raises ``ShardReadError`` naming the URL and the cause.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from modalmae.formats.schema import MEMBER_NAME

log = logging.getLogger(__name__)

# Bytes read from each shard by this process (benchmarks/streaming_scale.py reports them).
BYTES_READ: Counter[str] = Counter()

# What a manifest may name a shard by: a data source's URL, or a plain path inside its folder.
MANIFEST_SCHEMES = frozenset({"http", "https", "s3", "gs", "gcs", "az", "abfs", "hf"})
_NAME_PART = re.compile(r"[A-Za-z0-9._-]+")  # of a relative name, between slashes
_CHUNK = 1 << 20


class ShardReadError(OSError):
    """A shard could not be read (after retries, for remote ones)."""


class ChecksumMismatch(ShardReadError):
    """A shard's bytes are not those its manifest lists: none of its samples are read."""


@dataclass(frozen=True)
class Checksum:
    """What a manifest says a shard's bytes are: their sha256 (hex) and their number."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256) or self.size < 0:
            raise ValueError(f"not a sha256 hex digest and a byte count: {self.sha256!r}, {self.size!r}")


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and ``scheme://`` URLs (a Windows drive letter is local)."""
    return url.startswith("pipe:") or len(urlsplit(url).scheme) > 1


def shard_url(manifest: str, name: str) -> str:
    """The URL of shard ``name`` listed in ``manifest`` (a path or URL); ValueError naming both
    when the name is not data a manifest may point at (see the module docstring)."""
    if not isinstance(name, str):
        raise ValueError(f"{manifest}: shard name {name!r} is not a string")
    if name.startswith("pipe:"):
        raise ValueError(f"{manifest}: shard {name!r} refused: a manifest cannot run commands (pipe: is for the command line)")
    scheme = urlsplit(name).scheme
    if len(scheme) > 1:
        if is_remote(manifest):
            raise ValueError(f"{manifest}: shard {name!r} refused: a remote manifest names its shards relative to itself")
        if scheme not in MANIFEST_SCHEMES or "::" in name:  # "::" chains fsspec protocols
            raise ValueError(
                f"{manifest}: shard {name!r} refused: a manifest names shards relative to itself or by "
                f"{', '.join(sorted(MANIFEST_SCHEMES))} URL"
            )
        return name
    if not all(_NAME_PART.fullmatch(part) and part not in (".", "..") for part in name.split("/")):
        raise ValueError(
            f"{manifest}: shard {name!r} refused: not a plain name inside the manifest's folder "
            f"(letters, digits, '.', '_', '-' and '/'; no absolute path, no '..')"
        )
    return f"{manifest.rsplit('/', 1)[0]}/{name}" if is_remote(manifest) else os.path.join(os.path.dirname(manifest), name)


class _Pipe:
    """File-like standard output of a ``pipe:`` command, run without a shell; a failed command
    raises at the end."""

    def __init__(self, command: str) -> None:
        argv = shlex.split(command)
        if not argv:
            raise ValueError("pipe: names no command")
        self.command = command
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        try:
            self._proc = subprocess.Popen(argv, shell=False, stdout=subprocess.PIPE, stderr=self._stderr)
        except BaseException:
            self._stderr.close()
            raise

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


def _open_verified(url: str, checksum: Checksum) -> BinaryIO:
    """A seekable file of the shard's bytes, once they match ``checksum``; else ChecksumMismatch.

    Local files are hashed in a first pass and read again (mostly from the page cache); remote
    bytes are copied to an anonymous temporary file while hashed, so they are fetched once and
    what is parsed is what was hashed. Reading stops past ``checksum.size`` bytes: a source
    cannot fill the disk.
    """
    source = open_url(url)
    copy = tempfile.TemporaryFile() if is_remote(url) else None  # noqa: SIM115 - returned or closed
    digest, size = hashlib.sha256(), 0
    try:
        while size <= checksum.size and (chunk := source.read(_CHUNK)):
            size += len(chunk)
            digest.update(chunk)
            if copy is not None:
                copy.write(chunk)
        if size < checksum.size:  # cut short: a transport error for a remote shard, retried
            raise OSError(f"ended after {size} of the {checksum.size} bytes its manifest lists")
        if size > checksum.size:
            raise ChecksumMismatch(f"{url}: checksum mismatch: more than the {checksum.size} bytes its manifest lists")
        if digest.hexdigest() != checksum.sha256:
            raise ChecksumMismatch(
                f"{url}: checksum mismatch: sha256 {digest.hexdigest()}, its manifest lists {checksum.sha256}"
            )
    except BaseException:
        source.close()
        if copy is not None:
            copy.close()
        raise
    if copy is None:
        source.seek(0)
        return source
    source.close()
    copy.seek(0)
    return copy


def _read_tar(url: str, *, skip: int, take: int | None, checksum: Checksum | None) -> Iterator[dict]:
    """One attempt at ``iter_shard``."""
    stream = open_url(url) if checksum is None else _open_verified(url, checksum)
    foreign, first_foreign = 0, ""  # members that are no sample's file
    try:
        # Local files and verified copies are seekable, so skipped members are seeked over.
        seekable = checksum is not None or not is_remote(url)
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            index, key, sample = -1, None, None
            for member in tar:
                name = MEMBER_NAME.fullmatch(member.name) if member.isfile() else None
                if name is None:
                    foreign, first_foreign = foreign + 1, first_foreign or member.name
                    continue
                member_key, ext = name.group("key", "ext")
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
        if foreign:
            log.warning(
                "%s: skipped %d tar member(s) that are no sample's file (a link, a folder, a name other than "
                "<key>.<ext>), the first %r", url, foreign, first_foreign,
            )


def iter_shard(
    url: str, *, skip: int = 0, take: int | None = None, checksum: Checksum | None = None,
    attempts: int | None = None, backoff: float = 1.0,
) -> Iterator[dict]:
    """Raw samples ``skip .. skip + take`` of one tar: {"__key__", "__url__", ext: bytes, ...}.

    ``checksum``: the shard's, from its manifest; when given, the whole shard is verified before
    its first sample (``ChecksumMismatch`` otherwise, not retried: the bytes are wrong, not their
    transport). Remote shards get ``attempts`` tries (default 3), local ones one: a truncated
    local file stays truncated. A retry restarts the read after the samples already yielded.
    """
    attempts = attempts or (3 if is_remote(url) else 1)
    done = 0
    for attempt in range(1, attempts + 1):
        try:
            for sample in _read_tar(url, skip=skip + done, take=None if take is None else take - done, checksum=checksum):
                done += 1
                yield sample
            return
        except ChecksumMismatch:
            raise
        except Exception as e:  # any failure to read is reported the same way
            if attempt == attempts:
                raise ShardReadError(
                    f"{url}: {type(e).__name__}: {e} (gave {done} samples; {attempts} attempt(s))"
                ) from e
            wait = backoff * 2 ** (attempt - 1)
            log.warning("reading %s failed (%s: %s); retry %d/%d in %.1f s", url, type(e).__name__, e, attempt, attempts - 1, wait)
            time.sleep(wait)
