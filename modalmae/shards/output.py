"""Where a build writes: a local folder, or an object-store / remote folder through fsspec.

The builder and its workers (local processes or Ray tasks, perhaps on other machines) write
through an ``Output``, which is picklable (it holds only the location). Every file appears
whole or not at all:

- a local folder: written as ``<name>.tmp`` in the folder, flushed to disk and renamed;
- a URL (``s3://bucket/corpus``, ``gs://...``, ``file:///shared/...``): the file is staged
  in a local temporary folder and uploaded in one ``put`` (an object store makes an object
  visible only once its upload completes, so there is nothing to rename). Needs fsspec and the
  scheme's backend (``pip install s3fs`` / ``gcsfs``).

Only names of one flat folder are written: ``name`` never holds a ``/``, so nothing lands
outside the output folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location)


class Output:
    """A flat output folder, local or remote; ``name`` arguments are plain file names."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location).rstrip("/") if is_url(location) else Path(location)
        self._fs = None

    def __repr__(self) -> str:
        return str(self.location)

    def __getstate__(self) -> dict:
        return {"location": self.location, "_fs": None}  # the fsspec client is made again where it is used

    @property
    def is_local(self) -> bool:
        return isinstance(self.location, Path)

    @property
    def fs(self):
        if self._fs is None:
            try:
                import fsspec
            except ImportError as e:
                raise ImportError(f"output {self.location}: writing to a URL needs fsspec: pip install fsspec (and s3fs / gcsfs for s3:// / gs://)") from e
            self._fs, _ = fsspec.core.url_to_fs(self.location)
        return self._fs

    def _check(self, name: str) -> str:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        return name

    def url(self, name: str) -> str:
        """Where ``name`` is (a path for a local folder)."""
        name = self._check(name)
        return str(self.location / name) if self.is_local else f"{self.location}/{name}"

    def makedirs(self) -> None:
        if self.is_local:
            self.location.mkdir(parents=True, exist_ok=True)
        else:
            self.fs.makedirs(self.location, exist_ok=True)

    def size(self, name: str) -> int | None:
        """Bytes of ``name``, None when it does not exist."""
        try:
            return os.stat(self.url(name)).st_size if self.is_local else int(self.fs.size(self.url(name)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_text(self, name: str) -> str | None:
        """The text of ``name``, None when it does not exist."""
        try:
            if self.is_local:
                return Path(self.url(name)).read_text(encoding="utf-8")
            with self.fs.open(self.url(name), "rt", encoding="utf-8") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def names(self) -> list[str]:
        """The file names in the folder (none when it does not exist)."""
        if self.is_local:
            return sorted(p.name for p in self.location.iterdir()) if self.location.is_dir() else []
        if not self.fs.exists(self.location):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.location, detail=False))

    def remove(self, name: str) -> None:
        if self.is_local:
            Path(self.url(name)).unlink(missing_ok=True)
        elif self.fs.exists(self.url(name)):
            self.fs.rm(self.url(name))

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """A local path to write ``name`` at; when the block ends normally the file is made
        durable and becomes ``name`` at once, otherwise it is deleted."""
        if self.is_local:
            final = Path(self.url(name))
            tmp = final.with_name(final.name + ".tmp")
            try:
                yield tmp
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())  # the rename must not land before the data does
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            return
        folder = Path(tempfile.mkdtemp(prefix="modalmae-"))
        try:
            yield folder / name
            self.fs.put_file(str(folder / name), self.url(name))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def write_text(self, name: str, text: str) -> None:
        """``name`` holds ``text``, replaced at once."""
        with self.staged(name) as path:
            path.write_text(text, encoding="utf-8")
