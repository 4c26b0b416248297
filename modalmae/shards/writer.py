"""Deterministic, atomic tar shards.

Every shard is written as ``<name>.tmp`` and renamed when it is complete, so an interrupted
build never leaves a half shard under a final name. Members carry fixed metadata (mtime 0,
uid/gid 0, mode 0444), so the same samples in the same order give byte-identical shards.
Written with ``tarfile`` directly: webdataset's writer gzips members whose name ends in .gz and
stamps the current time.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from modalmae.data.schema import SHARD_PATTERN

BLOCK = 512


def member_bytes(size: int) -> int:
    """Bytes a member of ``size`` bytes takes in a tar: a header block plus padded data."""
    return BLOCK + -(-size // BLOCK) * BLOCK


class ShardWriter:
    """Writes samples into ``shard-000000.tar``, ``shard-000001.tar``, ... in ``directory``.

    A new shard starts when the next sample would exceed ``max_count`` samples or ``max_size``
    bytes; a sample bigger than ``max_size`` on its own gets a shard of its own.
    """

    def __init__(self, directory: str | os.PathLike, *, max_count: int, max_size: int) -> None:
        if max_count < 1 or max_size < 1:
            raise ValueError("max_count and max_size must be positive")
        self.directory = Path(directory)
        self.max_count, self.max_size = max_count, max_size
        self.shards: list[dict] = []  # {"name", "num_samples", "bytes"} of completed shards
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._size = 0

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, files: dict[str, bytes]) -> None:
        size = sum(member_bytes(len(data)) for data in files.values())
        if self._tar is not None and (self._count + 1 > self.max_count or self._size + size > self.max_size):
            self._finish()
        if self._tar is None:
            self._start()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._size += size
        if self._count == self.max_count:  # full: make it durable now, not when the next sample comes
            self._finish()

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress; completed shards stay."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None

    def _start(self) -> None:
        name = SHARD_PATTERN.format(index=len(self.shards))
        self._tmp = self.directory / (name + ".tmp")
        # Plain USTAR: keys are ASCII and short (schema.sample_key), so no extension headers.
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = self._size = 0

    def _finish(self) -> None:
        self._tar.close()
        final = self._tmp.with_suffix("")  # drop ".tmp"
        os.replace(self._tmp, final)
        self.shards.append({"name": final.name, "num_samples": self._count, "bytes": final.stat().st_size})
        self._tar = None
