"""What linear probing, fine-tuning and feature extraction share.

- ``open_checkpoint``: a checkpoint's encoder, its modality and that modality's preprocessing
  (the settings its recipe saved under ``extra``), for evaluation (centre crops, no
  augmentation) or training (the recipe's augmentation); errors end a command line in one line.
- ``split_of`` / ``SplitFilter``: a held-out split decided by each sample key's hash, so train
  and validation never share a sample, on any number of processes and workers, without a list.
- ``extract_features``: pooled embeddings of every sample of a loader; with several processes
  (``track_positions``, ``line_places``, ``save_part``, ``merge_parts``), each embeds its own
  part and the main process merges the parts into the rows and order of a one-process run.
- ``Classifier`` and ``layer_decay_groups``: a linear head on the pooled encoder output, and the
  layer-wise learning-rate decay of BEiT / MAE fine-tuning (block i of n gets
  ``decay ** (n + 1 - i)``; the tokenizer and CLS token count as block 0, the head as n + 1).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from modalmae.checkpoint import CheckpointError, load_encoder
from modalmae.data.shards import epoch_order, exact_pieces
from modalmae.data.stream import SampleDecoder, ShardStream
from modalmae.masking import random_masking
from modalmae.modalities import ModalitySpec, decoder_for, model_input
from modalmae.model import Encoder


@dataclass
class Checkpoint:
    """An encoder and what it takes to feed it: its modality and sample decoders."""

    encoder: Encoder
    config: dict  # the model folder's config.json (converted checkpoints: as ours)
    spec: ModalitySpec
    train_decoder: SampleDecoder  # the recipe's augmentation
    eval_decoder: SampleDecoder  # centre crops, first windows, no augmentation


def open_checkpoint(path: str, *, map_location: str = "cpu", modality: str | None = None, **decoder_options) -> Checkpoint:
    """``load_encoder`` for command lines, with the modality's decoders (``decoder_options``:
    command-line overrides such as a video's ``sampling_rate``; None when not given);
    ``modality`` picks one modality's encoder out of a joint model. An unreadable checkpoint or
    an option that does not apply ends the program with one line naming it and the reason, not
    a traceback."""
    try:
        encoder, config = load_encoder(path, map_location=map_location, modality=modality)
        spec, train_decoder = decoder_for(config, train=True, **decoder_options)
        _, eval_decoder = decoder_for(config, train=False, **decoder_options)
    except (CheckpointError, ValueError) as e:
        message = str(e)
        raise SystemExit(f"error: {message if str(path) in message else f'{path}: {message}'}") from None
    return Checkpoint(encoder, config, spec, train_decoder, eval_decoder)


def split_of(key: str, *, val_fraction: float, seed: int = 0) -> str:
    """"val" for a ``val_fraction`` share of keys (by hash), else "train"."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class SplitFilter:
    """Wraps a decoder so that only the samples of one split are decoded (others give no item,
    without being read past their key)."""

    def __init__(self, decode, *, split: str, val_fraction: float, seed: int = 0) -> None:
        self.decode, self.split, self.val_fraction, self.seed = decode, split, val_fraction, seed

    def __call__(self, sample: dict, rng: random.Random):
        if split_of(sample["__key__"], val_fraction=self.val_fraction, seed=self.seed) != self.split:
            return []
        return self.decode(sample, rng)


def extract_features(
    encoder: Encoder, loader, *, spec: ModalitySpec, pool: str = "mean", device: str | torch.device = "cpu", total: int | None = None,
    progress: bool = True,
) -> tuple[list[str], np.ndarray, list[str], int]:
    """(keys, features [N, D] float32, labels ("" when none), unreadable samples) of every sample."""
    keys, feats, labels, skipped = [], [], [], 0
    with torch.inference_mode(), tqdm(total=total, desc="features", unit="sample", disable=not progress) as bar:
        for batch in loader:
            feats.append(encoder.pooled(model_input(spec, batch, device), pool=pool).float().cpu().numpy())
            keys += batch["__key__"]
            labels += [label or "" for label in batch["label"]]
            skipped += batch["num_skipped"]
            bar.update(len(batch["__key__"]))
    return keys, (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), labels, skipped


# Several processes. Each process embeds its own part of a one-pass, unshuffled stream; the main
# process puts the rows back in the order a one-process run with the same workers and batch size
# yields them. That order is not the shards' order: a DataLoader hands out its workers' batches in
# turn, and each worker reads its own segment of the shards. So every row carries its place on
# the "shard line" (the epoch's shards laid end to end): the index of its shard in that order and
# its offset in the shard, which come out the same whichever process read the sample.

Position = tuple[str, int, int]  # (shard url, loader worker, index in that worker's pass): the stream's
# __url__, __worker__, __index__ of one item


def track_positions(batches: Iterable[dict], into: list[Position]) -> Iterator[dict]:
    """``batches`` unchanged, appending each item's ``Position`` to ``into`` as it passes."""
    for batch in batches:
        into += zip(batch["__url__"], batch["__worker__"], batch["__index__"], strict=True)
        yield batch


def _check_one_pass(stream: ShardStream) -> None:
    """The shard line is only defined for one exact, unshuffled, unpadded pass of one source."""
    if len(stream.sources) != 1 or stream.resampled or stream.epochs != 1 or stream.shuffle_buffer > 1 or stream.pad_to or stream.start:
        raise ValueError(
            "rows are placed on the shard line only for one source read once in order, from its start "
            "(epochs=1, shuffle_buffer=1, no padding, not resampled, no start position)"
        )


def _slots(num_workers: int) -> int:
    return max(1, num_workers)  # 0 workers: the process itself reads, as one slot


def line_places(positions: Sequence[Position], stream: ShardStream, *, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard [n], offset [n]) int64 of each row of this process's ``stream``, read by a loader of
    ``num_workers`` workers: the shard's index in the epoch's order and the sample's place in it.
    Without a manifest a whole shard goes to one worker and the offset is only an order key (the
    worker's index, increasing along the shard)."""
    _check_one_pass(stream)
    shards = stream.sources[0]
    shard_of = {url: i for i, url in enumerate(epoch_order(shards.urls, epoch=0, seed=stream.seed, shuffle=stream.shuffle_shards))}
    urls, workers, indices = zip(*positions) if positions else ((), (), ())
    shard = np.array([shard_of[url] for url in urls], np.int64)
    workers, indices = np.asarray(workers, np.int64), np.asarray(indices, np.int64)
    if not shards.has_sizes:
        return shard, indices
    offset = np.empty_like(indices)
    for worker in np.unique(workers):
        pieces = exact_pieces(
            shards, epoch=0, seed=stream.seed, rank=stream.rank, world_size=stream.world_size, worker=int(worker),
            num_workers=_slots(num_workers), shuffle=stream.shuffle_shards,
        )
        starts = np.cumsum([0] + [p.take for p in pieces[:-1]])  # each piece's first index in the worker's pass
        rows = workers == worker
        k = np.searchsorted(starts, indices[rows], side="right") - 1
        if (np.array([shard_of[p.url] for p in pieces])[k] != shard[rows]).any():  # a bug, not bad data
            raise RuntimeError(f"worker {worker} of process {stream.rank}: items came from other shards than its plan says")
        offset[rows] = np.array([p.skip for p in pieces])[k] + indices[rows] - starts[k]
    return shard, offset


def one_process_order(shard: np.ndarray, offset: np.ndarray, stream: ShardStream, *, num_workers: int, batch_size: int) -> np.ndarray:
    """The permutation of rows (``line_places`` of every process's rows, concatenated) that gives
    the order a one-process run over ``stream``'s shards (world_size 1, same seed and shard order)
    read by ``num_workers`` workers in batches of ``batch_size`` yields: each worker's rows along
    the line, cut into batches, the workers' batches taken in turn (how a DataLoader interleaves
    its workers; a worker that runs out drops out)."""
    _check_one_pass(stream)
    shards, slots = stream.sources[0], _slots(num_workers)
    order = epoch_order(shards.urls, epoch=0, seed=stream.seed, shuffle=stream.shuffle_shards)
    shard_of = {url: i for i, url in enumerate(order)}
    # One int64 key per place on the line, for piece starts and rows alike.
    width = 1 + max([int(offset.max(initial=0)), *shards.sizes.values()])
    starts, owners = [], []
    for worker in range(slots):
        for piece in exact_pieces(
            shards, epoch=0, seed=stream.seed, rank=0, world_size=1, worker=worker, num_workers=slots, shuffle=stream.shuffle_shards,
        ):
            starts.append(shard_of[piece.url] * width + piece.skip)
            owners.append(worker)
    by_start = np.argsort(starts)
    starts, owners = np.asarray(starts, np.int64)[by_start], np.asarray(owners)[by_start]
    keys = shard * width + offset
    owner = owners[np.clip(np.searchsorted(starts, keys, side="right") - 1, 0, None)]
    line = np.lexsort((offset, shard))  # stable: several items of one sample keep their order
    batches = []
    for worker in range(slots):
        rows = line[owner[line] == worker]
        batches.append([rows[i : i + batch_size] for i in range(0, len(rows), batch_size)])
    turns = [b[k] for k in range(max(map(len, batches), default=0)) for b in batches if k < len(b)]
    return np.concatenate(turns) if turns else np.zeros(0, np.int64)


def save_part(path: Path, *, keys: list[str], features: np.ndarray, labels: list[str], shard: np.ndarray, offset: np.ndarray, skipped: int) -> None:
    """One process's rows as an .npz (no pickle: strings as numpy unicode arrays)."""
    np.savez(
        path, keys=np.array(keys, dtype=str), features=features, labels=np.array(labels, dtype=str), shard=shard, offset=offset,
        skipped=np.int64(skipped),
    )


def merge_parts(paths: Sequence[Path], stream: ShardStream, *, num_workers: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(keys [N], features [N, D], labels [N], unreadable samples) of every process's part, in the
    order of a one-process run of ``num_workers`` workers (see ``one_process_order``; ``stream``:
    any process's, for its shards and their order). The places are read first and each part's
    features then go straight to their rows: at most the output and one part are in memory."""
    places, skipped = [], 0
    for path in paths:
        with np.load(path, allow_pickle=False) as part:  # an npz reads an array only when asked
            places.append((part["shard"], part["offset"]))
            skipped += int(part["skipped"])
    shard, offset = (np.concatenate(a) for a in zip(*places))
    if not len(shard):
        return np.zeros(0, str), np.zeros((0, 0), np.float32), np.zeros(0, str), skipped
    order = one_process_order(shard, offset, stream, num_workers=num_workers, batch_size=batch_size)
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # row i of the parts laid end to end goes to row where[i]
    keys, labels, features, start = [], [], None, 0
    for path in paths:
        with np.load(path, allow_pickle=False) as part:
            rows = where[start : start + len(part["keys"])]
            if len(rows):  # a process with no readable sample has features [0, 0]
                if features is None:
                    features = np.empty((len(order), part["features"].shape[1]), np.float32)
                features[rows] = part["features"]
            keys.append(part["keys"])
            labels.append(part["labels"])
            start += len(rows)
    return np.concatenate(keys)[order], features, np.concatenate(labels)[order], skipped


class Classifier(nn.Module):
    """Encoder + linear head on its pooled features. ``mask_ratio`` > 0 drops that share of the
    tokens at random in training (a fine-tune's light masking); evaluation sees all."""

    def __init__(self, encoder: Encoder, num_classes: int, *, pool: str = "mean", mask_ratio: float = 0.0) -> None:
        super().__init__()
        self.encoder, self.pool, self.mask_ratio = encoder, pool, mask_ratio
        self.head = nn.Linear(encoder.config.encoder_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor | dict, generator: torch.Generator | None = None) -> Tensor:
        tokens = self.encoder.tokenizer(x)
        ids_keep = None
        if self.training and self.mask_ratio > 0:
            masks = random_masking(tokens.embeddings.shape[0], tokens.embeddings.shape[1], self.mask_ratio, generator=generator)
            ids_keep = masks.ids_keep.to(tokens.embeddings.device)
        feats = self.encoder.encode(tokens, ids_keep)  # [B, prefix + Lk, D]
        return self.head(self.encoder.pool(feats, pool=self.pool))  # [B, classes]


def layer_id(name: str, depth: int) -> int:
    """Depth of a Classifier parameter for layer-wise decay: 0 embeddings, i + 1 block i,
    depth + 1 the final norms and the head."""
    if name.startswith(("encoder.tokenizer.", "encoder.cls_token", "encoder.modality_embed")):
        return 0
    if name.startswith("encoder.transformer.blocks."):
        return int(name.split(".")[3]) + 1
    return depth + 1


def layer_decay_groups(model: Classifier, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with ``lr_scale`` = layer_decay ** (depth + 1 - layer); no weight decay on
    biases, norms and tokens. Multiply each group's lr by its ``lr_scale``."""
    depth = model.encoder.config.encoder_depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, no_decay = layer_id(name, depth), p.ndim <= 1 or name.endswith("token")
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": layer_decay ** (depth + 1 - layer),
        })
        group["params"].append(p)
    return list(groups.values())
