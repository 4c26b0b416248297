"""Deterministic, atomic WebDataset tar shards.

A shard is a plain tar whose members ``<key>.<ext>`` are grouped by sample (the WebDataset
layout, see ``modalmae.formats.schema``). Three properties matter downstream:

- Atomic: each shard is written as ``<name>.tmp``, flushed to disk and renamed when complete,
  so an interrupted build never leaves a half shard under a final name.
- Deterministic: members carry fixed metadata (mtime 0, uid/gid 0, no user names, mode 0444)
  in USTAR headers, so the same samples in the same order give byte-identical shards.
- Checksummed: the sha256 of each shard's bytes is computed as they are written (no second
  read) and recorded with the shard, for the manifest; readers verify shards against it.

Written with ``tarfile`` directly: webdataset's ``ShardWriter`` gzips members whose name ends
in ``.gz`` and stamps the current time.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

from modalmae.formats.schema import SHARD_PATTERN

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK  # two zero blocks
RECORD = tarfile.RECORDSIZE  # tarfile pads a closed archive to whole records of 20 blocks

_PREFIX, _SUFFIX = SHARD_PATTERN.split("{index:06d}")
# Names this writer owns in an output folder: finished shards and their in-progress .tmp.
OWN_NAMES = re.compile(re.escape(_PREFIX) + r"[0-9]{6,}" + re.escape(_SUFFIX) + r"(\.tmp)?")


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Member header with nothing that depends on when, where or by whom it was written."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def header_format(info: tarfile.TarInfo) -> int:
    """USTAR when the name fits (keys from schema.sample_key always do), else PAX."""
    try:
        info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        return tarfile.USTAR_FORMAT
    except ValueError:  # name too long, or not ASCII
        return tarfile.PAX_FORMAT


def archive_size(member_bytes: int) -> int:
    """Size on disk of a tar whose members take ``member_bytes`` (headers and padded data)."""
    return -(-(member_bytes + END_OF_ARCHIVE) // RECORD) * RECORD


class _Hashing:
    """A file being written that hashes every byte written through it."""

    def __init__(self, file: io.BufferedWriter) -> None:
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


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
        self._file: io.BufferedWriter | None = None
        self._hashing: _Hashing | None = None  # what the tar writes through, into _file
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0  # members written to the current shard, headers and padding included

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``files`` maps extension -> bytes, written in the order given."""
        if not files:
            raise ValueError(f"sample {key!r} has no files")
        members = []
        for ext, data in files.items():
            info = tar_info(f"{key}.{ext}", len(data))
            fmt = header_format(info)
            size = len(info.tobuf(fmt, "utf-8", "strict")) + -(-len(data) // BLOCK) * BLOCK
            members.append((info, fmt, data, size))
        size = sum(m[3] for m in members)
        if self._tar is not None and archive_size(self._bytes + size) > self.max_size:
            self._finish()
        if self._tar is None:
            self._start()
        for info, fmt, data, _ in members:
            self._tar.format = fmt  # TarFile.addfile encodes each header in the current format
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size
        if self._count == self.max_count:  # full: make it durable now, not when the next sample comes
            self._finish()

    def close(self) -> list[dict]:
        """Finish the shard in progress; returns all finished shards."""
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its .tmp file); finished shards stay."""
        if self._tar is None:
            return
        self._file.close()
        self._tmp_path().unlink(missing_ok=True)
        self._tar = self._file = self._hashing = None

    def _name(self) -> str:
        return SHARD_PATTERN.format(index=len(self.shards))

    def _tmp_path(self) -> Path:
        return self.directory / (self._name() + ".tmp")

    def _start(self) -> None:
        self._file = open(self._tmp_path(), "wb")
        self._hashing = _Hashing(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        self._count = self._bytes = 0

    def _finish(self) -> None:
        self._tar.close()  # end-of-archive blocks; leaves our file object open
        self._file.flush()
        os.fsync(self._file.fileno())  # the rename must not land before the data does
        self._file.close()
        final = self.directory / self._name()
        os.replace(self._tmp_path(), final)
        self.shards.append({
            "name": final.name, "num_samples": self._count, "bytes": final.stat().st_size,
            "sha256": self._hashing.sha256.hexdigest(),
        })
        self._tar = self._file = self._hashing = None


def remove_stale(directory: str | os.PathLike, *, keep: set[str]) -> list[str]:
    """Delete our shards and .tmp files not in ``keep`` (from an earlier, bigger or interrupted
    build, they would mislead anyone globbing ``*.tar``); returns the names removed."""
    stale = sorted(p.name for p in Path(directory).iterdir() if OWN_NAMES.fullmatch(p.name) and p.name not in keep)
    for name in stale:
        (Path(directory) / name).unlink()
    return stale
