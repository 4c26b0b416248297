"""The lines of a run's ``metrics.jsonl``: each step's figures summed on every process, reduced
over processes when a line is due, and written by the main process only (the columns are
described in ``modalmae.train.loop``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from modalmae.data.shards import ShardSet


class Metrics:
    """The figures of the steps since the last metrics.jsonl line, reduced over processes when
    a line is written (main process only writes)."""

    def __init__(
        self, accelerator: Accelerator, path: Path, *, effective_batch: int, epoch_samples: int | None, sources: list[ShardSet],
        epoch_start: tuple[float, int] = (0.0, 0),
    ) -> None:
        """``epoch_start``: (step, epoch) where the epochs of ``epoch_samples`` begin."""
        self.accelerator, self.effective_batch, self.epoch_samples, self.sources = accelerator, effective_batch, epoch_samples, sources
        self.epoch_start = epoch_start
        self.file = open(path, "a") if accelerator.is_main_process else None  # noqa: SIM115 - closed in close()
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.accelerator.device, dtype=torch.float64)  # no GPU sync per step
        self.extra: dict[str, torch.Tensor] = {}
        self.steps, self.counted, self.tick = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, extra: dict[str, torch.Tensor]) -> None:
        """One optimizer step's mean loss and figures (steps skipped as non-finite are not added)."""
        self.loss += loss
        self.counted += 1
        for name, value in extra.items():
            self.extra[name] = self.extra.get(name, 0) + value.to(self.loss)

    def line(self, step: int, lr: float, *, skipped: int, nonfinite: int, source_counts: torch.Tensor) -> dict:
        """Reduce over processes (a collective: every process calls it) and write one line."""
        names = sorted(self.extra)  # the same on every process: loss_fn returns the same names
        stats = torch.cat([
            torch.stack([self.loss / max(1, self.counted), self.loss.new_tensor(skipped)]), source_counts.to(self.loss),
            *(self.extra[n].reshape(2) for n in names),
        ])
        stats = self.accelerator.reduce(stats, reduction="sum")  # loss summed over ranks, counts too
        world, n_sources = self.accelerator.num_processes, len(self.sources)
        record = {
            "step": step,
            "loss": stats[0].item() / world if self.counted else None,  # the same count on every rank
            "lr": lr,
            "samples_per_s": self.steps * self.effective_batch / (time.perf_counter() - self.tick),
            "epoch": self._epoch(step),
            "skipped": int(stats[1].item()),
            "nonfinite_steps": nonfinite,
        }
        if n_sources > 1:
            record["sources"] = {s.name: int(c) for s, c in zip(self.sources, stats[2 : 2 + n_sources].tolist())}
        sums = stats[2 + n_sources :].view(-1, 2).tolist()
        record.update({n: total / count if count else None for n, (total, count) in zip(names, sums)})
        self.write(record)
        self._reset()
        return record

    def _epoch(self, step: int) -> float | None:
        """Passes over the data at ``step`` (within an elastic resume's remainder: approximate)."""
        if not self.epoch_samples:
            return None
        start_step, start_epoch = self.epoch_start
        return start_epoch + (step - start_step) * self.effective_batch / self.epoch_samples

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
