"""The training loop's data phase: this rank's batches and what it has consumed of them.

The loader is built on a ``ShardStream`` that gives this rank its own samples (not passed to
``accelerator.prepare``, which would dispatch batches from rank 0 or make every rank read
everything). Its position (epoch and sample of every worker, per source) is saved with each
checkpoint as ``data_rank<r>.json``, with what it is valid for (processes, workers, seed, batch
size, shuffle buffer, items per sample, shards) and the layout that wrote it. On resume:

- the same run layout: each rank continues right after the last sample it consumed, from its
  own file alone, without reading or decoding what came before;
- another number of processes or workers (or batch size, shuffle buffer, items per sample),
  the same seed and shards with a manifest (an elastic resume): every rank reads the files of
  ALL old ranks (a shared checkpoint folder), and its stream replays which samples the old run
  consumed; the rest of the interrupted epoch is cut into equal segments for the new layout,
  every rank running the same number of steps in it, and later epochs use the new layout
  (``ShardStream.continue_from``);
- otherwise (other seed or shards, resampled, no manifest, a file missing) the stream starts
  the epoch afresh, with a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from modalmae.data.shards import ShardSet
from modalmae.data.epochs import Layout
from modalmae.data.stream import SampleDecoder, ShardStream, StreamPosition, make_loader

log = logging.getLogger(__name__)

# What may differ between a checkpoint's run and the resumed one for an elastic resume: how the
# epochs are cut and padded. The seed and shards fix the epochs themselves, and must not change.
ELASTIC = {"world_size", "workers", "batch_size", "shuffle_buffer", "items_per_sample"}


@dataclass
class Corpus:
    """One of the data streams of a run that reads several at once (a joint model's corpora of
    different modalities): its shards, their sample decoder, and its share of each batch."""

    name: str  # e.g. "audio"; names its position file in checkpoints
    sources: list[ShardSet]
    decode: SampleDecoder
    batch_size: int  # items of this corpus per process per micro-batch
    items_per_sample: int = 1
    weights: list[float] | None = None  # how often each of its shard sets is drawn


class Feed:
    """This rank's batches, and what it has consumed of them: the data position saved with
    every checkpoint, the shards read, per-source counts and the optional key log.

    ``batch_size`` defaults to the config's; ``weights``: how often each source is drawn (None:
    in proportion to their samples); ``name`` tells the position files of several feeds of one
    run apart (``data_rank<r>_<name>.json``, ``keys/rank<r>_<name>.jsonl``)."""

    def __init__(
        self, cfg, accelerator: Accelerator, sources: list[ShardSet], decode: SampleDecoder, items_per_sample: int, resume: Path | None,
        *, weights: list[float] | None, batch_size: int | None = None, name: str = "", start_step: int = 0,
    ) -> None:
        self.cfg, self.sources, self.items_per_sample = cfg, sources, items_per_sample
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch_size = batch_size or cfg.batch_size
        self.suffix = f"_{name}" if name else ""
        self.position_file = f"data_rank{self.rank}{self.suffix}.json"
        self.stream = stream = ShardStream(
            sources, decode, weights=weights, rank=self.rank, world_size=self.world,
            seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled, pad_to=self.batch_size,
            items_per_sample=items_per_sample, verify=cfg.verify_shards,
        )
        workers = min(cfg.workers, stream.max_workers())  # what make_loader will use
        position = self._resume(resume, workers, start_step) if resume else None  # sets the stream's start
        self.loader = make_loader(stream, batch_size=self.batch_size, num_workers=cfg.workers, pin_memory=accelerator.device.type == "cuda")
        self.rank_epoch_items = stream.items_per_epoch(self.loader.num_workers)  # the same on every rank
        # (micro-batches this rank had consumed when its layout's first whole epoch began, that
        # epoch): after an elastic resume, the interrupted epoch's remainder takes its own count.
        anchor = None if position is None else position.get("epoch_anchor")
        self.epoch_anchor: tuple[int, int] | None = None if anchor is None else (int(anchor[0]), int(anchor[1]))
        self.consumed = StreamPosition(len(sources), self.loader.num_workers, stream.start)
        self.source_counts = torch.tensor(position["source_counts"] if position else [0] * len(sources), dtype=torch.float64)
        self.shards_read: dict[int, set[str]] = {}  # epoch -> shards this rank read in it
        self.samples_seen = self.skipped = 0
        self.keys_log = None
        if cfg.log_keys:
            (Path(cfg.output) / "keys").mkdir(parents=True, exist_ok=True)
            self.keys_log = open(Path(cfg.output) / "keys" / f"rank{self.rank}{self.suffix}.jsonl", "a")  # noqa: SIM115 - closed in close()
        self._batches = None  # the loader's workers start at the first batch, after the resume

    def _identity(self, workers: int) -> dict:
        """What a saved data position is only valid for (unchanged, it is continued as it is)."""
        cfg = self.cfg
        return {
            "world_size": self.world, "workers": workers, "seed": cfg.seed, "batch_size": self.batch_size,
            "resampled": cfg.resampled, "shards": [s.urls for s in self.sources], "shuffle_buffer": cfg.shuffle_buffer,
            "items_per_sample": self.items_per_sample,
        }

    def _file(self, rank: int) -> str:
        return f"data_rank{rank}{self.suffix}.json"

    def _resume(self, resume: Path, workers: int, start_step: int) -> dict | None:
        """The data position to continue from (see the module docstring), or None (with a
        warning) when the stream must start the epoch afresh."""
        own, first = resume / self.position_file, resume / self._file(0)
        if not own.is_file() and not first.is_file():
            warnings.warn(f"{resume}: no data position for rank {self.rank}; the data stream starts afresh", stacklevel=4)
            return None
        saved = json.loads((own if own.is_file() else first).read_text())
        identity = self._identity(workers)
        # Positions saved before a key was recorded say nothing about it: taken as unchanged.
        changed = [k for k in identity if not _same(k, saved.get(k, identity[k]), identity[k])]
        if not changed and own.is_file():
            self.stream.start = saved["stream"]
            return saved
        why = f"the data position was saved with other {', '.join(changed)}" if changed else f"no data position for rank {self.rank}"
        if changed and set(changed) <= ELASTIC:
            try:
                return self._continue(resume, saved, start_step, workers)
            except (OSError, ValueError, KeyError, TypeError) as e:
                why += f", and it cannot be continued ({type(e).__name__}: {e})"
        warnings.warn(
            f"{resume}: {why}; the data stream starts afresh (samples of the interrupted epoch may repeat)", stacklevel=4,
        )
        return None

    def _continue(self, resume: Path, saved: dict, start_step: int, workers: int) -> dict:
        """An elastic resume: this rank's start, built from the positions of every rank of the
        checkpoint's run (another layout). Every rank builds the same origin; what the old run
        consumed is replayed here, once, and goes to the loader's workers with the stream."""
        old = [json.loads((resume / self._file(r)).read_text()) for r in range(saved["world_size"])]
        for r, position in enumerate(old):
            if any(position.get(k) != saved.get(k) for k in self._identity(workers)):
                raise ValueError(f"{self._file(r)} was saved by another run than {self._file(0)}")
        self.stream.continue_from([p["stream"] for p in old], Layout(**saved["layout"]))
        # Per-source counts are summed over ranks when logged: rank 0 carries the old run's total.
        counts = [sum(c) for c in zip(*(p["source_counts"] for p in old))] if self.rank == 0 else [0] * len(self.sources)
        remainder = self.stream.remainder(workers)
        anchor = None
        if remainder is not None:
            items, epoch = remainder
            anchor = (start_step * self.cfg.grad_accum + items // self.batch_size, epoch)
        log.info("rank %d: continuing the data of a run of %d process(es) x %d worker(s)", self.rank, saved["world_size"], saved["workers"])
        return {"stream": self.stream.start, "source_counts": counts, "epoch_anchor": anchor}

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

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def position(self) -> dict:
        """This rank's data position, as saved in a checkpoint (``data_rank<r>.json``): what it
        is valid for, the layout that replays it, the stream's position and per-source counts."""
        return {
            **self._identity(self.loader.num_workers), "layout": self.stream.layout(self.loader.num_workers).state(),
            "stream": self.consumed.state(), "source_counts": self.source_counts.tolist(), "epoch_anchor": self.epoch_anchor,
        }

    def save_position(self, folder: Path) -> None:
        (folder / self.position_file).write_text(json.dumps(self.position()) + "\n")

    def close(self) -> None:
        if self.keys_log is not None:
            self.keys_log.close()


def _same(key: str, saved, now) -> bool:
    if key == "workers":  # a loader without worker processes reads as one worker does
        return max(1, saved) == max(1, now)
    return saved == now


class Feeds:
    """Several corpora read side by side: each step takes one batch of every corpus,
    ``{name: batch}``, so every step holds every modality of a joint model. That is how a
    mixed-modality run stays correct under DDP, where every process must use the same
    parameters in each step: a step holding only some modalities would leave the others'
    tokenizers and heads without gradients (an error, or, with ``find_unused_parameters``, a
    hang as soon as two processes drew different modalities).

    Each corpus keeps its own exact epochs and data position; the figures the loop reads are
    summed (counts) or concatenated (per shard set) over them."""

    def __init__(self, cfg, accelerator: Accelerator, corpora: list[Corpus], resume: Path | None, *, start_step: int = 0) -> None:
        self.feeds = {
            c.name: Feed(
                cfg, accelerator, c.sources, c.decode, c.items_per_sample, resume, batch_size=c.batch_size, weights=c.weights,
                name=c.name, start_step=start_step,
            )
            for c in corpora
        }
        self.sources = [s for feed in self.feeds.values() for s in feed.sources]
        only = next(iter(self.feeds.values())) if len(corpora) == 1 else None
        self.rank_epoch_items = None if only is None else only.rank_epoch_items
        self.epoch_anchor = None if only is None else only.epoch_anchor

    def next(self, step: int) -> dict[str, dict]:
        return {name: feed.next(step) for name, feed in self.feeds.items()}

    @property
    def num_workers(self) -> int:
        return sum(feed.num_workers for feed in self.feeds.values())

    @property
    def skipped(self) -> int:
        return sum(feed.skipped for feed in self.feeds.values())

    @property
    def samples_seen(self) -> int:
        return sum(feed.samples_seen for feed in self.feeds.values())

    @property
    def source_counts(self) -> torch.Tensor:
        return torch.cat([feed.source_counts for feed in self.feeds.values()])

    @property
    def shards_read(self) -> dict[int, set[str]]:
        """epoch -> shards read in it, over every corpus (each counting its own epochs)."""
        merged: dict[int, set[str]] = {}
        for feed in self.feeds.values():
            for epoch, urls in feed.shards_read.items():
                merged.setdefault(epoch, set()).update(urls)
        return merged

    def save_position(self, folder: Path) -> None:
        for feed in self.feeds.values():
            feed.save_position(folder)

    def close(self) -> None:
        for feed in self.feeds.values():
            feed.close()
