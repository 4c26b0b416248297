"""The training loop's data phase: this rank's batches and what it has consumed of them.

The loader is built on a ``ShardStream`` that gives this rank its own samples (not passed to
``accelerator.prepare``, which would dispatch batches from rank 0 or make every rank read
everything). Its position (epoch and sample of every worker, per source) is saved with each
checkpoint as ``data_rank<r>.json``, with what it is valid for (processes, workers, seed, batch
size, shards); on resume the stream continues right after the last sample consumed, or, when
any of those changed, starts the epoch afresh with a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator

from modalmae.data.shards import ShardSet
from modalmae.data.stream import SampleDecoder, ShardStream, StreamPosition, make_loader


class Feed:
    """This rank's batches, and what it has consumed of them: the data position saved with
    every checkpoint, the shards read, per-source counts and the optional key log."""

    def __init__(self, cfg, accelerator: Accelerator, sources: list[ShardSet], decode: SampleDecoder, items_per_sample: int, resume: Path | None) -> None:
        self.cfg, self.sources = cfg, sources
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        stream = ShardStream(
            sources, decode, weights=cfg.weights, rank=self.rank, world_size=self.world, seed=cfg.seed,
            shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled, pad_to=cfg.batch_size, items_per_sample=items_per_sample,
            verify=cfg.verify_shards,
        )
        workers = min(cfg.workers, stream.max_workers())  # what make_loader will use
        position = self._load_position(resume, self._identity(workers)) if resume else None
        stream.start = position["stream"] if position else {}
        self.loader = make_loader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=accelerator.device.type == "cuda")
        self.rank_epoch_items = stream.items_per_epoch(self.loader.num_workers)  # the same on every rank
        self.consumed = StreamPosition(len(sources), self.loader.num_workers, position and position["stream"])
        self.source_counts = torch.tensor(position["source_counts"] if position else [0] * len(sources), dtype=torch.float64)
        self.shards_read: dict[int, set[str]] = {}  # epoch -> shards this rank read in it
        self.samples_seen = self.skipped = 0
        self.keys_log = None
        if cfg.log_keys:
            (Path(cfg.output) / "keys").mkdir(parents=True, exist_ok=True)
            self.keys_log = open(Path(cfg.output) / "keys" / f"rank{self.rank}.jsonl", "a")  # noqa: SIM115 - closed in close()
        self._batches = None  # the loader's workers start at the first batch, after the resume

    def _identity(self, workers: int) -> dict:
        """What a saved data position is only valid for."""
        cfg = self.cfg
        return {
            "world_size": self.world, "workers": workers, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "resampled": cfg.resampled, "shards": [s.urls for s in self.sources],
        }

    def _load_position(self, resume: Path, identity: dict) -> dict | None:
        """This rank's saved data position, or None (with a warning) when it no longer applies."""
        path = resume / f"data_rank{self.rank}.json"
        if not path.is_file():
            warnings.warn(f"{resume}: no data position for rank {self.rank}; the data stream starts afresh", stacklevel=4)
            return None
        saved = json.loads(path.read_text())
        changed = [k for k in identity if saved.get(k) != identity[k]]
        if changed:
            warnings.warn(
                f"{resume}: the data position was saved with other {', '.join(changed)}; the data stream starts "
                f"afresh (samples of the interrupted epoch may repeat)", stacklevel=4,
            )
            return None
        return saved

    def next(self, step: int) -> dict:
        """The next batch, recorded as consumed."""
        if self._batches is None:
            self._batches = iter(self.loader)
        try:
            batch = next(self._batches)
        except StopIteration:
            raise RuntimeError(f"rank {self.rank}: every loader worker stopped; none of its samples decode (see the errors above)") from None
        self.consumed.update(batch)
        for epoch, url, source in zip(batch["__epoch__"], batch["__url__"], batch["__source__"]):
            self.shards_read.setdefault(epoch, set()).add(url)
            self.source_counts[source] += 1
        if self.keys_log is not None:
            items = zip(batch["__source__"], batch["__epoch__"], batch["__key__"], batch["__pad__"])
            self.keys_log.write(json.dumps({"step": step, "items": [list(i) for i in items]}) + "\n")
            self.keys_log.flush()  # a killed run keeps what it trained on
        self.samples_seen += len(batch["__key__"])
        self.skipped += batch.get("num_skipped", 0)
        return batch

    def position(self) -> dict:
        """This rank's data position, as saved in a checkpoint (``data_rank<r>.json``)."""
        return {**self._identity(self.loader.num_workers), "stream": self.consumed.state(), "source_counts": self.source_counts.tolist()}

    def close(self) -> None:
        if self.keys_log is not None:
            self.keys_log.close()
