"""The shard plan of a build, and the task that writes one planned shard.

A build is planned before anything is decoded: the sorted jobs (one per candidate file, or per
subject for MRI) are cut into groups of at most ``max_count`` jobs and ``max_size`` input bytes
(a job bigger than that alone gets a group of its own), and output shard ``i`` holds the usable
samples of group ``i``. A skipped file makes its own shard smaller and moves nothing else, so a
shard's name, keys and bytes are a function of its group's files and the build's options alone:
any process, on any machine, can write any shard, in any order.

``build_shard`` is that task. It prepares its group's files in order (``prepare`` is the
modality's), writes the samples into the shard through an ``Output`` (atomically), then writes
the shard's stats record ``shard-NNNNNN.stats.json``::

    {"name": "shard-000000.tar", "index": 0, "fingerprint": hex, "files": jobs in the group,
     "num_samples": int, "bytes": int, "sha256": hex or null (no usable file: no tar),
     "skipped": [{"path", "reason"}], "warnings": [{"path", "warning"}], "unlabeled": samples without a label,
     "seconds": {"prepare": s, "write": s}, "created_by": "modalmae <version>"}

The fingerprint covers the build options (``options_fingerprint``) and the group's files (their
relative paths, sizes, modification times and labels). A rerun takes a shard whose record
exists with the same fingerprint, and whose tar exists with the recorded size, as done; any
other shard is written again. The record is written after the tar, so a shard killed between
the two is simply rebuilt, to the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalmae import __version__
from modalmae.formats.schema import FORMAT_VERSION, SHARD_PATTERN, sample_key
from modalmae.shards.output import Output
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import STATS_SUFFIX, TarShard, encode_sample

Prepare = Callable[[Any, str, Any], "Sample | Skip"]  # (source, relpath, options), a modality's


def skip_reason(e: BaseException) -> str:
    """What a failed ``prepare`` says in the manifest; never a bare "MemoryError: "."""
    reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, MemoryError):
        reason += " (preparing this file needed more memory than was free; fewer --workers may help)"
    return reason


def safe_prepare(prepare: Prepare, source: Any, relpath: str, options: Any) -> Sample | Skip:
    """``prepare``, with any exception it raises turned into a ``Skip`` with the reason."""
    try:
        return prepare(source, relpath, options)
    except Exception as e:  # noqa: BLE001 - one bad file must never end the build
        return Skip(relpath, skip_reason(e))


def source_files(source: Any) -> list[Path]:
    """The files a job reads: its path (every file under it, for a folder), or those of each
    path in its ``files`` mapping (a job grouping several files, like an MRI subject)."""
    paths = list(source.files.values()) if hasattr(source, "files") else [source]
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            found.append(path)
    return found


def job_stamp(source: Any) -> list[tuple[int, int]]:
    """(size, modification time in ns) of each file a job reads: changes when its input does."""
    stamps = []
    for path in source_files(source):
        try:
            st = os.stat(path)
            stamps.append((st.st_size, st.st_mtime_ns))
        except OSError:  # gone or unreadable: prepare will say why; the stamp just differs
            stamps.append((-1, -1))
    return stamps


def options_fingerprint(record: dict) -> str:
    """sha256 of what decides every shard's content: the format, the modality, the limits, the
    labelling and the modality's options (``record``), and this version of modalmae."""
    data = {"format_version": FORMAT_VERSION, "modalmae": __version__, **record}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ShardTask:
    """Planned shard ``index``: its jobs ``(source, relpath, label or None)`` in order."""

    index: int
    jobs: tuple[tuple[Any, str, str | None], ...]
    fingerprint: str

    @property
    def name(self) -> str:
        return SHARD_PATTERN.format(index=self.index)

    @property
    def record_name(self) -> str:
        return stats_name(self.index)


def stats_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index).removesuffix(".tar") + STATS_SUFFIX


def plan_groups(sizes: Sequence[int], *, max_count: int, max_size: int) -> list[range]:
    """Consecutive groups of jobs (by position): each at most ``max_count`` jobs and
    ``max_size`` input bytes, except a job bigger than ``max_size`` alone."""
    if max_count < 1 or max_size < 1:
        raise ValueError(f"max_count and max_size must be positive, got {max_count} and {max_size}")
    groups, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start == max_count or total + size > max_size):
            groups.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def plan_tasks(jobs: Sequence[tuple[Any, str, str | None]], *, max_count: int, max_size: int, options_digest: str) -> list[ShardTask]:
    """The build's shards: ``jobs`` are ``(source, relpath, label)`` in their sorted order."""
    stamps = [job_stamp(source) for source, _, _ in jobs]
    sizes = [sum(max(size, 0) for size, _ in stamp) for stamp in stamps]
    tasks = []
    for index, group in enumerate(plan_groups(sizes, max_count=max_count, max_size=max_size)):
        what = [(jobs[i][1], stamps[i], jobs[i][2]) for i in group]
        digest = hashlib.sha256(json.dumps([options_digest, what]).encode()).hexdigest()
        tasks.append(ShardTask(index, tuple(jobs[i] for i in group), digest))
    return tasks


def build_shard(
    task: ShardTask, *, prepare: Prepare, options: Any, output: Output, prepared: Iterable[Sample | Skip] | None = None,
) -> dict:
    """Write planned shard ``task`` and its stats record into ``output``; returns the record.

    ``prepared``: the results of ``task``'s jobs in order, made elsewhere (the engines prepare
    files in parallel processes for a shard written here, or each in a process of its own to
    tell which file kills a worker); by default each is prepared here, in turn.
    """
    if prepared is None:
        prepared = (safe_prepare(prepare, source, relpath, options) for source, relpath, _ in task.jobs)
    results = iter(prepared)
    record: dict[str, Any] = {
        "name": task.name, "index": task.index, "fingerprint": task.fingerprint, "files": len(task.jobs),
        "num_samples": 0, "bytes": 0, "sha256": None, "skipped": [], "warnings": [], "unlabeled": 0,
    }
    seconds = {"prepare": 0.0, "write": 0.0}
    with ExitStack() as stack:
        shard: TarShard | None = None
        for source, relpath, label in task.jobs:
            start = time.perf_counter()
            result = next(results)
            seconds["prepare"] += time.perf_counter() - start
            if isinstance(result, Skip):
                record["skipped"].append(dataclasses.asdict(result))
                continue
            start = time.perf_counter()
            if result.warning:
                record["warnings"].append({"path": relpath, "warning": result.warning})
            meta = result.meta if label is None else {**result.meta, "label": label}
            record["unlabeled"] += label is None
            members = encode_sample(sample_key(relpath), {**result.files, "json": json.dumps(meta, sort_keys=True).encode()})
            if shard is None:  # the first usable file: a group without one writes no tar
                shard = TarShard(stack.enter_context(output.staged(task.name)))
                stack.callback(shard.close)
            shard.add(members)
            seconds["write"] += time.perf_counter() - start
        if shard is not None:
            record.update(shard.finish(sync=False))  # Output.staged makes it durable before naming it
    # Leaving the block renamed (or uploaded) the tar; only now may the record say it is done.
    if shard is None:
        output.remove(task.name)  # an earlier build's shard of this name would contradict the record
    record["seconds"] = {k: round(v, 6) for k, v in seconds.items()}
    record["created_by"] = f"modalmae {__version__}"
    output.write_text(task.record_name, json.dumps(record, sort_keys=True) + "\n")
    return record


def finished_record(output: Output, task: ShardTask) -> dict | None:
    """``task``'s record when an earlier run finished it for the same fingerprint (and its tar
    is there at the recorded size), else None."""
    try:
        record = json.loads(output.read_text(task.record_name) or "null")
    except ValueError:
        return None  # a damaged record: the shard is written again
    if not isinstance(record, dict) or record.get("fingerprint") != task.fingerprint or record.get("name") != task.name:
        return None
    count, size = record.get("num_samples"), record.get("bytes")
    if not isinstance(count, int) or not isinstance(size, int) or count < 0:
        return None
    if count and output.size(task.name) != size:
        return None
    return record
