"""Raw folder -> WebDataset shards + manifest.json, for any modality.

The builder walks the input folder in sorted order, hands each candidate file to the
modality's ``prepare`` in a pool of worker processes (results come back in input order, so the
shards are deterministic), and writes the samples through ``ShardWriter``. A file that cannot
be used becomes a ``Skip`` with its reason; nothing a worker raises stops the run. The manifest
is written last, atomically: a folder with a manifest is a complete build.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from modalmae import __version__
from modalmae.data.schema import FORMAT_VERSION, MANIFEST_NAME, sample_key
from modalmae.shards import audio
from modalmae.shards.types import Sample, Skip
from modalmae.shards.writer import ShardWriter

log = logging.getLogger(__name__)

# Modality name -> (module with EXTENSIONS and prepare(path, relpath, options), options class).
MODALITIES = {"audio": (audio, audio.AudioOptions)}


def find_files(root: Path, extensions: frozenset[str]) -> tuple[list[Path], int]:
    """Candidate files under ``root`` in sorted relative-path order, and how many others were ignored."""
    found, ignored = [], 0
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        if path.suffix.lower() in extensions:
            found.append(path)
        else:
            ignored += 1
    return found, ignored


def read_labels(csv_path: Path) -> dict[str, str]:
    """``path,label`` rows (a header row is allowed) -> {relative posix path: label}."""
    labels = {}
    with open(csv_path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) < 2:
                raise ValueError(f"{csv_path}:{i + 1}: expected 'path,label', got {row!r}")
            labels[Path(row[0].strip()).as_posix()] = row[1].strip()
    return labels


def _init_worker() -> None:
    # Workers are single-threaded by design: parallelism comes from the pool.
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _prepare(job: tuple) -> Sample | Skip:
    modality, path, relpath, options = job
    try:
        return MODALITIES[modality][0].prepare(path, relpath, options)
    except Exception as e:  # noqa: BLE001 - one bad file must never end the build
        return Skip(relpath, f"{type(e).__name__}: {e}")


def _results(jobs: list[tuple], workers: int) -> Iterator[Sample | Skip]:
    if workers <= 1:
        yield from map(_prepare, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_prepare, jobs, chunksize=1)


def _remove_stale(output: Path, keep: set[str]) -> list[str]:
    """Shards of an earlier, bigger build (and leftover .tmp files) that would mislead a glob."""
    stale = [p for p in output.glob("shard-*.tar*") if p.name not in keep]
    for p in stale:
        p.unlink()
    return sorted(p.name for p in stale)


def build_shards(
    *,
    modality: str,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_count: int = 1000,
    max_size: int = 10**9,
    workers: int | None = None,
    labels: dict[str, str] | None = None,
    label_from_parent: bool = False,
    options: object | None = None,
    progress: bool = True,
) -> dict:
    """Build shards of ``input_dir`` into ``output_dir``; returns the manifest (also written)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    module, options_cls = MODALITIES[modality]
    options = options if options is not None else options_cls()
    root, output = Path(input_dir), Path(output_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"--input {root}: not a directory")
    output.mkdir(parents=True, exist_ok=True)
    # Without a manifest a folder is visibly unfinished, even if this run is interrupted.
    (output / MANIFEST_NAME).unlink(missing_ok=True)

    files, ignored = find_files(root, module.EXTENSIONS)
    jobs = [(modality, p, p.relative_to(root).as_posix(), options) for p in files]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    skipped, unlabeled, keys = [], 0, set()
    with ShardWriter(output, max_count=max_count, max_size=max_size) as writer:
        bar = tqdm(_results(jobs, workers), total=len(jobs), desc=f"{modality} shards", unit="file", disable=not progress)
        for result in bar:
            if isinstance(result, Skip):
                skipped.append(asdict(result))
                continue
            relpath = result.meta["source"]
            key = sample_key(relpath)
            if key in keys:  # two paths sanitising to the same key: keep the first, say so
                skipped.append({"path": relpath, "reason": f"duplicate key {key}"})
                continue
            keys.add(key)
            if labels is not None:
                if relpath in labels:
                    result.meta["label"] = labels[relpath]
                else:
                    unlabeled += 1
            elif label_from_parent:
                result.meta["label"] = Path(relpath).parent.name or root.name
            files = {**result.files, "json": json.dumps(result.meta, sort_keys=True).encode()}
            writer.write(key, files)
            bar.set_postfix(shards_done=len(writer.shards), skipped=len(skipped), refresh=False)
    shards = writer.shards
    stale = _remove_stale(output, {s["name"] for s in shards})
    if unlabeled:
        log.warning("%d file(s) have no row in the labels CSV and were stored without a label", unlabeled)

    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": modality,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "skipped": skipped,
        "ignored_files": ignored,
        "removed_stale": stale,
        "options": {
            "input": str(root), "max_count": max_count, "max_size": max_size,
            "label_from_parent": label_from_parent, "labels": labels is not None, **asdict(options),
        },
        "created_by": f"modalmae {__version__}",
    }
    tmp = output / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, output / MANIFEST_NAME)
    return manifest
