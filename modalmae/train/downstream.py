"""What linear probing, fine-tuning and feature extraction share.

- ``open_checkpoint``: a checkpoint's encoder, its modality and that modality's preprocessing
  (the settings its recipe saved under ``extra``), for evaluation (centre crops, no
  augmentation) or training (the recipe's augmentation); errors end a command line in one line.
- ``split_of`` / ``SplitFilter``: a held-out split decided by each sample key's hash, so train
  and validation never share a sample, on any number of processes and workers, without a list.
- ``extract_features``: pooled embeddings of every sample of a loader.
- ``Classifier`` and ``layer_decay_groups``: a linear head on the pooled encoder output, and the
  layer-wise learning-rate decay of BEiT / MAE fine-tuning (block i of n gets
  ``decay ** (n + 1 - i)``; the tokenizer and CLS token count as block 0, the head as n + 1).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from modalmae.checkpoint import CheckpointError, load_encoder
from modalmae.data.stream import SampleDecoder
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
