"""A modality-agnostic shard stream: slot's shards -> shuffle buffer -> decode -> items.

``ShardStream`` is an ``IterableDataset`` that runs in DataLoader workers. Each (rank, worker)
reads only its own shards (``slot_shards``), epoch after epoch, forever: the training loop
counts steps, and every rank can always take another batch, so no rank hangs at an epoch end
while others wait in an all-reduce. Decoding is a plain function of a raw sample and a
``random.Random`` returning an item (or a list of items: several clips of one video); a sample
it cannot decode is counted, reported and skipped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from modalmae.data.shards import ShardSet, iter_shard, shards_per_rank, slot_shards

log = logging.getLogger(__name__)

Decoder = Callable[[dict, random.Random], dict]


class ShardStream(IterableDataset):
    def __init__(
        self,
        shards: ShardSet,
        decode: Decoder,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        epochs: int | None = None,
    ) -> None:
        super().__init__()
        if shards_per_rank(len(shards.urls), rank=rank, world_size=world_size) == 0:
            raise ValueError(
                f"{len(shards.urls)} shard(s) cannot feed {world_size} ranks: every rank needs at least "
                f"one. Rebuild the shards with a smaller --max-count, or use fewer processes."
            )
        self.shards, self.decode = shards, decode
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.shuffle_shards, self.epochs = shuffle_buffer, shuffle_shards, epochs

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = 0
        skipped = 0
        while self.epochs is None or epoch < self.epochs:
            rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
            urls = slot_shards(
                self.shards.urls, epoch=epoch, seed=self.seed, rank=self.rank, world_size=self.world_size,
                worker=worker, num_workers=num_workers, shuffle=self.shuffle_shards,
            )
            if not urls:
                return  # more workers than this rank's shards: this worker has nothing to do
            for raw in _shuffled(_samples(urls, self.shards.sizes), self.shuffle_buffer, rng):
                if isinstance(raw, _ShardError):
                    skipped += 1
                    continue
                try:
                    decoded = self.decode(raw, rng)
                except Exception as e:  # noqa: BLE001 - a bad sample must never stop training
                    skipped += 1
                    log.warning("skipping sample %s in %s: %s: %s", raw.get("__key__"), raw.get("__url__"), type(e).__name__, e)
                    continue
                # A decoder may return several items per sample (repeated augmentation).
                for item in decoded if isinstance(decoded, list) else [decoded]:
                    item.update(__key__=raw["__key__"], __url__=raw["__url__"], __epoch__=epoch, num_skipped=skipped)
                    skipped = 0
                    yield item
            epoch += 1


class _ShardError:
    """Marks a shard that failed mid-read, so the count of skipped samples sees it."""


def _samples(urls: list[str], expected: dict[str, int]) -> Iterator[dict | _ShardError]:
    """Raw samples of each shard in turn; unreadable or short shards become skip markers.

    Python's tarfile treats a header cut short as the end of the archive, so a truncated shard
    can end silently: the manifest's count is what reveals the missing samples.
    """
    for url in urls:
        count = 0
        try:
            for sample in iter_shard(url):
                count += 1
                yield sample
        except Exception as e:  # noqa: BLE001 - a truncated or unreadable shard is skipped, not fatal
            log.warning("stopped reading shard %s after %d samples: %s: %s", url, count, type(e).__name__, e)
        missing = expected.get(url, count) - count
        if missing > 0:
            log.warning("shard %s gave %d of the %d samples its manifest lists", url, count, expected[url])
            yield from (_ShardError() for _ in range(missing))


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Reservoir-style shuffle buffer: yields a random buffered item once ``size`` are held."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def collate(items: list[dict]) -> dict[str, Any]:
    """Stack tensors, list everything else, and sum the per-item skip counts.

    Tensors go through ``default_collate``, which in a worker stacks straight into shared
    memory, saving a copy of every batch on its way to the training process.
    """
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "num_skipped":
            batch[key] = sum(values)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = default_collate(values)
        else:
            batch[key] = values
    return batch


def make_loader(stream: ShardStream, *, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` with at most one worker per shard of this rank."""
    available = shards_per_rank(len(stream.shards.urls), rank=stream.rank, world_size=stream.world_size)
    if num_workers > available:
        log.warning("rank %d has %d shard(s): using %d loader workers instead of %d", stream.rank, available, available, num_workers)
        num_workers = available
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
