"""Deterministic, atomic WebDataset tar shards.

A shard is a plain tar whose members ``<key>.<ext>`` are grouped by sample (the WebDataset
layout, see ``modalmae.formats.schema``). Three properties matter downstream:

- Atomic: each shard is written as ``<name>.tmp``, flushed to disk and renamed when complete,
  so an interrupted build never leaves a half shard under a final name.
- Deterministic: members carry fixed metadata (mtime 0, uid/gid 0, no user names, mode 0444),
  so the same samples in the same order give byte-identical shards.
- Checksummed: the sha256 of each shard's bytes is computed as they are written (no second
  read) and recorded with the shard, for the manifest; readers verify shards against it.

The bytes are those ``tarfile`` writes (USTAR headers, PAX only for a name USTAR cannot hold,
end-of-archive blocks, padding to whole records), but each header is encoded once and written
straight to the file: ``TarFile.addfile`` would encode it again and copy the data through a
stream. webdataset's ``ShardWriter`` is not used: it gzips members whose name ends in ``.gz``
and stamps the current time.

``TarShard`` writes one shard; ``ShardWriter`` rolls over a numbered series of them (the
builder plans its shards itself and writes each with a ``TarShard``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import tarfile
from pathlib import Path

from modalmae.formats.schema import SHARD_PATTERN

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK  # two zero blocks
RECORD = tarfile.RECORDSIZE  # tarfile pads a closed archive to whole records of 20 blocks

WRITEBACK_BYTES = 4 << 20  # written bytes after which the kernel is asked to start putting them on disk
_PREFIX, _SUFFIX = SHARD_PATTERN.split("{index:06d}")
STATS_SUFFIX = ".stats.json"  # the builder's record of one shard, next to it (``modalmae.shards.build``)
# Names this writer and the builder own in an output folder: finished shards, their records and
# what is in progress (.tmp).
OWN_NAMES = re.compile(
    re.escape(_PREFIX) + r"[0-9]{6,}(" + re.escape(_SUFFIX) + "|" + re.escape(STATS_SUFFIX) + r")(\.tmp)?"
)


def _sync_file_range():
    """glibc's / musl's ``sync_file_range`` (Linux), or None: Python's os module lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages; do not wait for them


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to disk, and
    return at once (Linux; elsewhere nothing). The shard's final fsync then waits only for the
    bytes written since, so a worker's disk writes overlap its next files' decoding instead of
    stalling it at the end of every shard. Advisory: a failure changes nothing but the timing."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Member header with nothing that depends on when, where or by whom it was written."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tarfile_header(name: str, size: int) -> bytes:
    info = tar_info(name, size)
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError:  # name too long, or not ASCII
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


_EMPTY_HEADER = _tarfile_header("", 0)  # every field but name, size and checksum is fixed
_CHECKSUM = slice(148, 156)  # 8 bytes: counted as spaces, then 6 octal digits, NUL and one space


def member_header(name: str, size: int) -> bytes:
    """The header blocks of one member: USTAR when the name fits (keys from
    ``schema.sample_key`` always do), else PAX, byte for byte as ``tarfile`` writes them.

    The common case (an ASCII name of at most 100 characters, a size under 8 GiB) fills in a
    template: ``TarInfo.tobuf`` builds each of the 17 fields in Python, and a shard of small
    files spent as long encoding headers as hashing its bytes.
    """
    if len(name) <= 100 and size < 8**11 and name.isascii():
        header = bytearray(_EMPTY_HEADER)
        header[: len(name)] = name.encode("ascii")
        header[124:136] = b"%011o\0" % size
        header[_CHECKSUM] = b" " * 8
        header[148:155] = b"%06o\0" % sum(header)
        return bytes(header)
    return _tarfile_header(name, size)


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def archive_size(member_bytes: int) -> int:
    """Size on disk of a tar whose members take ``member_bytes`` (headers and padded data)."""
    return -(-(member_bytes + END_OF_ARCHIVE) // RECORD) * RECORD


def encode_sample(key: str, files: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    """(header, data) of each of a sample's members, in the order given."""
    if not files:
        raise ValueError(f"sample {key!r} has no files")
    return [(member_header(f"{key}.{ext}", len(data)), data) for ext, data in files.items()]


def members_size(members: list[tuple[bytes, bytes]]) -> int:
    return sum(len(header) + padded(len(data)) for header, data in members)


class TarShard:
    """One shard written to the file ``path``, in one pass, hashing as it goes.

    ``finish`` makes it durable; naming it atomically is the caller's part (``ShardWriter``
    writes ``<name>.tmp`` and renames it, the builder writes through ``Output.staged``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._sha256 = hashlib.sha256()
        self.num_samples = 0
        self.bytes = 0  # written so far: headers and padded data
        self._written_back = 0  # bytes whose writeback has been started

    def _write(self, data: bytes) -> None:
        self._sha256.update(data)
        self._file.write(data)

    def add(self, members: list[tuple[bytes, bytes]]) -> None:
        """One sample's members, from ``encode_sample``."""
        for header, data in members:
            pad = padded(len(data)) - len(data)
            self._write(header)
            self._write(data)
            if pad:
                self._write(bytes(pad))
            self.bytes += len(header) + len(data) + pad
        self.num_samples += 1
        if self.bytes - self._written_back >= WRITEBACK_BYTES:
            self._file.flush()
            start_writeback(self._file.fileno(), self._written_back, self.bytes - self._written_back)
            self._written_back = self.bytes

    def finish(self, *, sync: bool = True) -> dict:
        """End the archive and (``sync``) make it durable: {"num_samples", "bytes", "sha256"}."""
        total = archive_size(self.bytes)
        self._write(bytes(total - self.bytes))  # end-of-archive blocks and padding to whole records
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())  # a rename must not land before the data does
        self._file.close()
        return {"num_samples": self.num_samples, "bytes": total, "sha256": self._sha256.hexdigest()}

    def close(self) -> None:
        """Close without finishing (the caller deletes the file)."""
        self._file.close()


class ShardWriter:
    """Writes samples into ``shard-000000.tar``, ``shard-000001.tar``, ... in ``directory``.

    A new shard starts when the next sample would take the current one past ``max_count``
    samples or ``max_size`` bytes (its size on disk, padding included); a sample bigger than
    ``max_size`` on its own gets a shard of its own. Use as a context manager: leaving it
    normally finishes the last shard, leaving it with an exception deletes the unfinished one.
    """

    def __init__(self, directory: str | os.PathLike, *, max_count: int, max_size: int) -> None:
        if max_count < 1 or max_size < 1:
            raise ValueError(f"max_count and max_size must be positive, got {max_count} and {max_size}")
        self.directory = Path(directory)
        self.max_count, self.max_size = max_count, max_size
        self.shards: list[dict] = []  # {"name", "num_samples", "bytes", "sha256"} of finished shards
        self._shard: TarShard | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``files`` maps extension -> bytes, written in the order given."""
        members = encode_sample(key, files)
        if self._shard is not None and archive_size(self._shard.bytes + members_size(members)) > self.max_size:
            self._finish()
        if self._shard is None:
            self._shard = TarShard(self._final().with_name(self._final().name + ".tmp"))
        self._shard.add(members)
        if self._shard.num_samples == self.max_count:  # full: make it durable now, not when the next sample comes
            self._finish()

    def close(self) -> list[dict]:
        """Finish the shard in progress; returns all finished shards."""
        if self._shard is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its .tmp file); finished shards stay."""
        if self._shard is not None:
            self._shard.close()
            self._shard.path.unlink(missing_ok=True)
            self._shard = None

    def _final(self) -> Path:
        return self.directory / SHARD_PATTERN.format(index=len(self.shards))

    def _finish(self) -> None:
        record, final = self._shard.finish(), self._final()
        os.replace(self._shard.path, final)
        self.shards.append({"name": final.name, **record})
        self._shard = None


def remove_stale(directory: str | os.PathLike, *, keep: set[str]) -> list[str]:
    """Delete our shards, records and .tmp files not in ``keep`` (from an earlier, bigger or
    interrupted build, they would mislead anyone globbing ``*.tar``); returns the names removed."""
    stale = sorted(p.name for p in Path(directory).iterdir() if OWN_NAMES.fullmatch(p.name) and p.name not in keep)
    for name in stale:
        (Path(directory) / name).unlink()
    return stale
