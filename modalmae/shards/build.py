"""Raw folder -> WebDataset shards + manifest.json, for any modality, resumable, on any engine.

The builder walks the input folder in sorted order and plans the shards before decoding
anything (``modalmae.shards.plan``): shard ``i`` holds the usable files of the ``i``-th group
of candidates, so its name, keys and bytes depend on that group's files and the options alone.
Each shard is then one task, run by an engine (``modalmae.shards.engines``: local worker
processes or Ray), that prepares its files with the modality's ``prepare`` and writes the tar
and its stats record itself, atomically. A file that cannot be used becomes a ``Skip`` with its
reason; nothing a file does, not even crashing its worker process, stops the run.

Resumable and idempotent: a rerun of the same build keeps every shard whose stats record
matches (same options, same input files) and writes the rest; a build killed at any moment
(even ``kill -9``) and rerun ends byte-identical to a clean one. The manifest is deleted when a
build starts and written last, atomically, merged from the records: a folder with a manifest is
a complete build. The format is documented in ``modalmae.formats.schema``.

A modality's part is a ``ShardBuilder`` (each stage module, such as ``modalmae.shards.audio``,
defines its ``BUILDER``): the file suffixes it tries, an ``Options`` dataclass (its
``build_shards.py`` flags, see ``modalmae.flags``) and ``prepare(path, relpath, options) ->
Sample | Skip``, which decides by decoding, not by the name. A modality whose samples group
several files (MRI: one subject, several sequences) also has ``find_jobs(root, options) ->
(jobs, ignored)``, jobs being ``(source, relpath)`` pairs its ``prepare`` takes in place of
``(path, relpath)``, the source holding its files' paths in a ``files`` mapping (for the plan's
sizes and fingerprints). This file knows nothing else about it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from modalmae import __version__
from modalmae.formats.schema import FORMAT_VERSION, MANIFEST_NAME
from modalmae.shards.engines import WORKERS_DID_NOT_START, WorkersDidNotStart, run_local, run_ray
from modalmae.shards.output import Output
from modalmae.shards.plan import ShardTask, build_shard, finished_record, options_fingerprint, plan_tasks
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import OWN_NAMES

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")

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
    # modules ``prepare`` imports lazily: imported once where worker processes start, not in each
    preload: tuple[str, ...] = ()


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


def _options_record(options: Any) -> dict:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))


def check_output(output: Output, name: str) -> None:
    """Refuse to build ``name`` shards where a finished build of another modality lies."""
    try:
        found = json.loads(output.read_text(MANIFEST_NAME) or "{}").get("modality")
    except (OSError, ValueError, AttributeError):
        return  # not ours to judge: it is replaced like any earlier build
    if found is not None and found != name:
        raise OutputInUseError(
            f"{output} holds {found} shards ({output.url(MANIFEST_NAME)}); refusing to replace them with {name} shards: "
            f"choose another --output, or delete that folder first"
        )


def remove_stale(output: Output, keep: set[str]) -> list[str]:
    """Delete our shards, records and .tmp files not in ``keep`` (of an earlier, bigger or
    interrupted build, they would mislead anyone globbing ``*.tar``); returns the names removed."""
    stale = [name for name in output.names() if OWN_NAMES.fullmatch(name) and name not in keep]
    for name in stale:
        output.remove(name)
    return stale


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
    engine: str = "local",
    ray_address: str | None = None,
    overwrite: bool = False,
    retries: int = 2,
) -> dict:
    """Build shards of ``input_dir`` into ``output_dir`` (a folder, or an fsspec URL such as
    ``s3://bucket/corpus``); returns the manifest (also written), with ``"build"`` added: what
    this run did (not written to the manifest, which is the same however the build ran).

    ``options``: the builder's ``options`` (default: its defaults). ``labels``: a ``path,label``
    CSV file or a {relative path: label} mapping. ``engine``: ``"local"`` (``workers``
    processes, default the CPUs this process may use; 1 = in this process) or ``"ray"`` (the
    cluster at ``ray_address``, or a local Ray with ``workers`` CPUs). Shards finished by an
    earlier run of the same build are kept (``overwrite`` writes every shard again); a failing
    shard task is retried ``retries`` times. Raises ``NoInputError`` before touching
    ``output_dir`` when the folder holds no candidate file at all, ``OutputInUseError`` when
    ``output_dir`` holds shards of another modality, ``engines.BuildError`` when a shard cannot
    be written.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise WorkersDidNotStart(WORKERS_DID_NOT_START)  # we are a worker importing an unguarded script
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    root, output = Path(input_dir), Output(output_dir)
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
    skipped: list[dict] = []  # files no shard task sees
    jobs = []
    folder_name = root.resolve().name  # the "parent folder" of files at the top level
    for source, rel in found:
        try:
            rel.encode("utf-8")  # keys and the json need text; a raw-bytes name has none
        except UnicodeEncodeError:
            skipped.append({"path": rel.encode("utf-8", "backslashreplace").decode(), "reason": "file name is not valid UTF-8"})
            continue
        label = None
        if table is not None:
            label = table.get(rel)
        elif label_from_parent:
            label = PurePosixPath(rel).parent.name or folder_name
        jobs.append((source, rel, label))

    # What decides the shards' content; the engine, workers and progress do not, so they are left out.
    record = {
        "input": str(root), "max_count": max_count, "max_size": max_size,
        "labels": None if labels is None else "mapping" if isinstance(labels, Mapping) else str(labels),
        "label_from_parent": label_from_parent, **_options_record(options),
    }
    digest = options_fingerprint({"modality": builder.name, **{k: v for k, v in record.items() if k not in ("input", "labels")}})
    tasks = plan_tasks(jobs, max_count=max_count, max_size=max_size, options_digest=digest)

    output.makedirs()
    # Without a manifest the folder is visibly unfinished, whatever happens from here on.
    output.remove(MANIFEST_NAME)
    stale = remove_stale(output, keep={t.name for t in tasks} | {t.record_name for t in tasks})
    records: dict[int, dict] = {}
    if not overwrite:
        for task in tasks:
            if (earlier := finished_record(output, task)) is not None:
                records[task.index] = earlier
    reused = len(records)
    todo = [task for task in tasks if task.index not in records]

    bar = tqdm(
        total=len(jobs), initial=sum(len(t.jobs) for t in tasks if t.index in records),
        desc=f"{builder.name} shards", unit="file", disable=not progress,
    )

    def done(task: ShardTask, shard_record: dict) -> None:
        records[task.index] = shard_record
        bar.update(len(task.jobs))
        bar.set_postfix(shards=f"{len(records)}/{len(tasks)}", skipped=sum(len(r["skipped"]) for r in records.values()), refresh=False)

    run = functools.partial(build_shard, prepare=builder.prepare, options=options, output=output)
    started = time.perf_counter()
    with bar:
        if engine == "ray":
            run_ray(todo, run, done, address=ray_address, workers=workers, retries=retries, prepare=builder.prepare, options=options)
        else:
            workers = max(1, min(workers or default_workers(), sum(len(t.jobs) for t in todo) or 1))
            run_local(
                todo, run, done, workers=workers, retries=retries, prepare=builder.prepare, options=options,
                preload=[builder.prepare.__module__, *builder.preload],
            )
    elapsed = time.perf_counter() - started

    ordered = [records[t.index] for t in tasks]
    if table is not None and (unlabeled := sum(r.get("unlabeled", 0) for r in ordered)):
        log.warning("%d file(s) not in the labels CSV were stored without a label", unlabeled)
    if table is not None and (unused := len(set(table) - set(relpaths))):
        log.warning("%d row(s) of the labels CSV name no %s file under %s", unused, builder.name, root)
    shards = [{k: r[k] for k in ("name", "num_samples", "bytes", "sha256")} for r in ordered if r["num_samples"]]
    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": builder.name,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "skipped": sorted(skipped + [s for r in ordered for s in r["skipped"]], key=lambda s: s["path"]),
        "warnings": [w for r in ordered for w in r["warnings"]],  # samples kept with a caveat (e.g. a video that decodes part-way)
        "ignored_files": sum(ignored.values()),  # files the builder does not try: counted, not listed
        "ignored_by_suffix": dict(sorted(ignored.items())),
        "options": record,
        "created_by": f"modalmae {__version__}",
    }
    output.write_text(MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    written = [records[t.index] for t in todo]
    manifest["build"] = {
        "engine": engine, "shards_written": len(todo), "shards_reused": reused, "removed_stale": stale, "seconds": round(elapsed, 3),
        # worker time of the shards written by this run: preparing (decoding, checking) files vs writing tars
        "prepare_seconds": round(sum(r["seconds"]["prepare"] for r in written), 3),
        "write_seconds": round(sum(r["seconds"]["write"] for r in written), 3),
        "files_prepared": sum(r["files"] for r in written),
    }
    return manifest
