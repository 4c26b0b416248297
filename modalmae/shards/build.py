"""Raw folder -> WebDataset shards + manifest.json, for any modality.

The builder walks the input folder in sorted order, hands each candidate file to the
modality's ``prepare`` in worker processes (results come back in input order, a bounded number
in flight, so the shards are deterministic and memory stays flat), and writes the samples
through ``ShardWriter``. A file that cannot be used becomes a ``Skip`` with its reason; nothing
a worker raises, not even a crash of the worker process, stops the run. The manifest is
deleted when a build starts and written last, atomically: a folder with a manifest is a
complete build. The format is documented in ``modalmae.formats.schema``.

A modality's part is a ``ShardBuilder`` (each stage module, such as ``modalmae.shards.audio``,
defines its ``BUILDER``): the file suffixes it tries, an ``Options`` dataclass (its
``build_shards.py`` flags, see ``modalmae.flags``) and ``prepare(path, relpath, options) ->
Sample | Skip``, which decides by decoding, not by the name. A modality whose samples group
several files (MRI: one subject, several sequences) also has ``find_jobs(root, options) ->
(jobs, ignored)``, jobs being ``(source, relpath)`` pairs its ``prepare`` takes in place of
``(path, relpath)``. This file knows nothing else about it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from modalmae import __version__
from modalmae.formats.schema import FORMAT_VERSION, MANIFEST_NAME, sample_key
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import ShardWriter, remove_stale

log = logging.getLogger(__name__)

Job = tuple[Any, str]  # (absolute path, or what a grouping find_jobs makes of several; relative POSIX path)


@dataclass(frozen=True)
class ShardBuilder:
    """What the builder needs of a modality."""

    name: str
    extensions: frozenset[str]  # lower-case suffixes with the dot: the files it tries
    options: type  # a dataclass of its options; ``modalmae.flags.arg`` fields become flags
    prepare: Callable[[Any, str, Any], Sample | Skip]  # (source, relpath, options), in a worker process
    # (root, options) -> (jobs, ignored files by suffix), when samples group several files
    find_jobs: Callable[[Path, Any], tuple[list[Job], Counter]] | None = None
    # (options, root) -> None, raising ValueError / OSError on options that cannot work, before any decoding
    check: Callable[[Any, Path], None] | None = None


class NoInputError(FileNotFoundError):
    """The input folder holds no file the modality would even try."""


class OutputInUseError(FileExistsError):
    """The output folder holds a finished build of another modality."""


def suffix_of(name: str) -> str:
    """The lower-case suffix a file is counted under when ignored ("(none)" without one)."""
    return Path(name).suffix.lower() or "(none)"


def find_files(root: Path, extensions: frozenset[str]) -> tuple[list[str], Counter]:
    """Relative POSIX paths of candidate files under ``root``, sorted, and the other files
    counted by suffix. Hidden files and folders are left out silently (``.git``, ``.DS_Store``)."""
    found, ignored = [], Counter()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # do not even descend
        rel = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in names:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in extensions:
                found.append((rel / name).as_posix())
            else:
                ignored[suffix_of(name)] += 1
    return sorted(found), ignored


def read_labels(csv_path: str | os.PathLike) -> dict[str, str]:
    """``path,label`` rows (a header row is allowed) -> {relative posix path: label}."""
    labels = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) < 2:
                raise ValueError(f"{csv_path}:{i + 1}: expected 'path,label', got {row!r}")
            labels[PurePosixPath(row[0].strip()).as_posix()] = row[1].strip()
    return labels


def default_workers() -> int:
    """The CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _skip_reason(e: Exception) -> str:
    """What a failed ``prepare`` says in the manifest; never a bare "MemoryError: "."""
    reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, MemoryError):
        reason += " (preparing this file needed more memory than was free; fewer --workers may help)"
    return reason


def _safe_prepare(prepare: Callable, path: Path, relpath: str, options: Any) -> Sample | Skip:
    try:
        return prepare(path, relpath, options)
    except Exception as e:  # noqa: BLE001 - one bad file must never end the build
        return Skip(relpath, _skip_reason(e))


def _pool(workers: int, prepare: Callable) -> ProcessPoolExecutor:
    # forkserver (spawn where there is none), not fork: the parent may run threads (tqdm's
    # monitor, torch's pool), and forking a threaded process can deadlock the child.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    context = multiprocessing.get_context("forkserver")
    # Workers fork from a server that has already imported the modality (numpy, FFmpeg, ...):
    # milliseconds per worker instead of a second. Applies when the server starts, once per process.
    context.set_forkserver_preload(["__main__", prepare.__module__])
    return ProcessPoolExecutor(workers, mp_context=context)


def _isolated(prepare: Callable, job: Job, options: Any) -> Sample | Skip:
    """Run one job in a pool of its own, to tell which file killed a worker."""
    with _pool(1, prepare) as pool:
        try:
            return pool.submit(_safe_prepare, prepare, *job, options).result()
        except BrokenProcessPool:
            return Skip(job[1], "the worker process died while preparing this file (a crash in a native decoder?)")


def prepare_all(prepare: Callable, jobs: list[Job], options: Any, *, workers: int) -> Iterator[Sample | Skip]:
    """``prepare`` of every job, yielded in job order; at most 2 x workers jobs in flight.

    ``workers=1`` runs in this process (debuggers, monkeypatching in tests). When a worker
    process dies, the jobs that were in flight are retried one by one in fresh processes, so
    only the file that kills its process is skipped.
    """
    if workers <= 1:
        yield from (_safe_prepare(prepare, *job, options) for job in jobs)
        return
    todo = deque(jobs)
    while todo:
        window: deque[tuple[Job, Future]] = deque()
        pool = _pool(workers, prepare)
        try:
            while todo or window:
                while todo and len(window) < 2 * workers:
                    future = pool.submit(_safe_prepare, prepare, *todo[0], options)
                    window.append((todo.popleft(), future))  # only once submitted: none gets lost
                result = window[0][1].result()
                window.popleft()
                yield result
        except BrokenProcessPool:
            for job, future in window:
                done = future.done() and future.exception() is None
                yield future.result() if done else _isolated(prepare, job, options)
        finally:
            # On an interrupt, do not wait for the queued files; running ones finish on their own.
            pool.shutdown(wait=False, cancel_futures=True)


def _options_record(options: Any) -> dict:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))


def check_output(output: Path, name: str) -> None:
    """Refuse to build ``name`` shards where a finished build of another modality lies."""
    manifest = output / MANIFEST_NAME
    if not manifest.is_file():
        return
    try:
        found = json.loads(manifest.read_text()).get("modality")
    except (OSError, ValueError, AttributeError):
        return  # not ours to judge: it is replaced like any earlier build
    if found is not None and found != name:
        raise OutputInUseError(
            f"{output} holds {found} shards ({manifest}); refusing to replace them with {name} shards: "
            f"choose another --output, or delete that folder first"
        )


def build_shards(
    *,
    builder: ShardBuilder,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: Any = None,
    max_count: int = 1000,
    max_size: int = 10**9,
    workers: int | None = None,
    labels: str | os.PathLike | Mapping[str, str] | None = None,
    label_from_parent: bool = False,
    progress: bool = True,
) -> dict:
    """Build shards of ``input_dir`` into ``output_dir``; returns the manifest (also written).

    ``options``: the builder's ``options`` (default: its defaults). ``labels``: a ``path,label``
    CSV file or a {relative path: label} mapping. ``workers``: processes preparing files
    (default: the CPUs this process may use; 1 = in this process). Raises ``NoInputError``
    before touching ``output_dir`` when the folder holds no candidate file at all, and
    ``OutputInUseError`` when ``output_dir`` holds shards of another modality.
    """
    root, output = Path(input_dir), Path(output_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"input {root}: not a directory")
    if labels is not None and label_from_parent:
        raise ValueError("give labels or label_from_parent, not both")
    options = builder.options() if options is None else options
    table = dict(labels) if isinstance(labels, Mapping) else read_labels(labels) if labels is not None else None

    if builder.find_jobs is not None:
        found, ignored = builder.find_jobs(root, options)
    else:
        names, ignored = find_files(root, builder.extensions)
        found = [(root / rel, rel) for rel in names]
    relpaths = [rel for _, rel in found]
    if not relpaths:
        others = ", ".join(f"{n} {ext}" for ext, n in ignored.most_common(5)) or "none"
        raise NoInputError(
            f"no {builder.name} file under {root} (looked for {' '.join(sorted(builder.extensions))}; other files: {others})"
        )
    check_output(output, builder.name)
    skipped: list[dict] = []
    warnings: list[dict] = []
    jobs = []
    for source, rel in found:
        try:
            rel.encode("utf-8")  # keys and the json need text; a raw-bytes name has none
            jobs.append((source, rel))
        except UnicodeEncodeError:
            skipped.append({"path": rel.encode("utf-8", "backslashreplace").decode(), "reason": "file name is not valid UTF-8"})
    workers = max(1, min(workers or default_workers(), len(jobs)))

    output.mkdir(parents=True, exist_ok=True)
    # Without a manifest the folder is visibly unfinished, whatever happens from here on.
    (output / MANIFEST_NAME).unlink(missing_ok=True)
    unlabeled = written = 0
    folder_name = root.resolve().name  # the "parent folder" of files at the top level
    with ShardWriter(output, max_count=max_count, max_size=max_size) as writer:
        results = prepare_all(builder.prepare, jobs, options, workers=workers)
        bar = tqdm(results, total=len(jobs), desc=f"{builder.name} shards", unit="file", disable=not progress)
        for result in bar:
            if isinstance(result, Skip):
                skipped.append(dataclasses.asdict(result))
                continue
            relpath = result.meta["source"]
            if result.warning:
                warnings.append({"path": relpath, "warning": result.warning})
            if table is not None:
                if relpath in table:
                    result.meta["label"] = table[relpath]
                else:
                    unlabeled += 1
            elif label_from_parent:
                result.meta["label"] = PurePosixPath(relpath).parent.name or folder_name
            files = {**result.files, "json": json.dumps(result.meta, sort_keys=True).encode()}
            writer.write(sample_key(relpath), files)
            written += 1
            bar.set_postfix(written=written, skipped=len(skipped), refresh=False)
    shards = writer.shards
    stale = remove_stale(output, keep={s["name"] for s in shards})
    if unlabeled:
        log.warning("%d file(s) not in the labels CSV were stored without a label", unlabeled)
    if table is not None and (unused := len(set(table) - set(relpaths))):
        log.warning("%d row(s) of the labels CSV name no %s file under %s", unused, builder.name, root)

    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": builder.name,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "warnings": warnings,  # samples kept with a caveat (e.g. a video that decodes part-way)
        "ignored_files": sum(ignored.values()),  # files the builder does not try: counted, not listed
        "ignored_by_suffix": dict(sorted(ignored.items())),
        "removed_stale": stale,
        # What decides the shards' content; workers and progress do not, so they are left out.
        "options": {
            "input": str(root), "max_count": max_count, "max_size": max_size,
            "labels": None if labels is None else "mapping" if isinstance(labels, Mapping) else str(labels),
            "label_from_parent": label_from_parent, **_options_record(options),
        },
        "created_by": f"modalmae {__version__}",
    }
    tmp = output / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, output / MANIFEST_NAME)
    return manifest
