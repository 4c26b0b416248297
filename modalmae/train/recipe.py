"""The shell every pretraining recipe shares, so that a recipe file holds its modality's choices only.

    @dataclass
    class ImageMAEConfig(PretrainConfig):
        image_size: int = arg(224, "...")

    def build(cfg: ImageMAEConfig) -> Pretraining:
        ...  # the tokenizer, the model, the sample decoder (and a masking of its own, if any)

    def main(argv=None) -> int:
        return run_pretraining("image", ImageMAEConfig, build, argv, doc=__doc__)

``run_pretraining`` parses the flags (the recipe's docstring is the ``--help`` text), starts
Accelerate, seeds every process alike, builds, trains with ``modalmae.train.loop.pretrain`` (the
shards must be of the recipe's modality; ``--mask-ratio`` may be a schedule or a per-sample
range, ``--teacher`` adds DMAE's distillation), draws the modality's picture of the last batch
and prints where everything went.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from modalmae.data.shards import ShardSet, resolve_shards
from modalmae.data.stream import SampleDecoder
from modalmae.masking import Masks
from modalmae.masking.schedule import MaskRatio
from modalmae.modalities import MODALITIES, model_input
from modalmae.checkpoint import CheckpointError, load_encoder
from modalmae.model import MaskedAutoencoder
from modalmae.model.distill import DistilledMAE, Distillation, Teacher, default_layer, matching_layer
from modalmae.train.config import parse_config
from modalmae.train.loop import pretrain, print_outputs
from modalmae.train.precision import make_accelerator


@dataclass
class Pretraining:
    """What a recipe decides for its modality."""

    model: MaskedAutoencoder
    decode: SampleDecoder
    extra: dict = field(default_factory=dict)  # saved with the model: what the spec's decoder needs to rebuild the data pipeline
    # (batch input, generator, ratio, batch) -> Masks at the step's ratio (a float, or [B] per
    # sample: ``modalmae.masking.schedule``); default: the modality's published masking
    masking: Callable[[torch.Tensor | dict, torch.Generator, "float | torch.Tensor", dict], Masks] | None = None
    items_per_sample: int = 1  # items the decoder makes of one sample (repeated augmentation)


def output_folder(path: str | Path, *, flag: str = "--output") -> Path:
    """``path`` as a folder this run can write into, created if needed, for command lines: a
    file in the way, or a folder that cannot be created or written, ends the program with one
    line saying so."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"error: {flag} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: {flag} {folder}: cannot be created ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"error: {flag} {folder}: not writable")
    return folder


def open_shards(specs: list[str], modality: str | tuple[str, ...], *, flag: str = "--shards") -> list[ShardSet]:
    """``resolve_shards`` of each, for command lines: shards that cannot be found or hold
    another modality end the program with one line saying so."""
    try:
        return [resolve_shards(spec, modality=modality) for spec in specs]
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {flag}: {e}") from None


def distilled(student: MaskedAutoencoder, cfg, device) -> DistilledMAE:
    """The student wrapped with DMAE's distillation from ``--teacher`` (errors end the program)."""
    try:
        encoder, _ = load_encoder(cfg.teacher, map_location=str(device))
        depth, teacher_depth = student.config.encoder_depth, len(encoder.transformer.blocks)
        layer = cfg.distill_layer or default_layer(depth)
        teacher_layer = cfg.teacher_layer or matching_layer(layer, student_depth=depth, teacher_depth=teacher_depth)
        teacher = Teacher(encoder, layer=teacher_layer)
        return DistilledMAE(student, Distillation(teacher, student=student, student_layer=layer, weight=cfg.distill_weight))
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: --teacher {cfg.teacher}: {e}") from None


def run_pretraining(modality: str, config_cls: type, build: Callable[[Any], Pretraining], argv: list[str] | None, *, doc: str) -> int:
    spec = MODALITIES[modality]
    head, _, rest = doc.partition("\n\n")
    cfg = parse_config(config_cls, argv, description=head, epilog=rest)
    output_folder(cfg.output)
    accelerator = make_accelerator(cfg)
    shards = open_shards(cfg.shards, modality)
    set_seed(cfg.seed)  # the same initial weights on every run and every rank
    job = build(cfg)
    model = job.model if cfg.teacher is None else distilled(job.model, cfg, accelerator.device)
    masking = job.masking or (lambda x, generator, ratio, batch: spec.masking(job.model.tokenizer, x, ratio, generator))
    result = pretrain(
        cfg, accelerator=accelerator, spec=spec, model=model, decode=job.decode, masking=masking,
        items_per_sample=job.items_per_sample, save_extra=job.extra, shards=shards,
    )
    if accelerator.is_main_process:
        x = model_input(spec, result.last_batch, accelerator.device, rows=slice(0, 1))
        first = {k: v[:1] for k, v in result.last_batch.items() if k != "num_skipped"}
        # Draw every masked token, also those a decoder-masked step would skip, at the last step's ratio.
        ratio = MaskRatio(cfg.mask_ratio).at(result.step, result.step)
        masks = replace(masking(x, torch.Generator().manual_seed(cfg.seed), ratio, first), ids_predict=None).to(accelerator.device)
        picture = spec.picture(
            result.model, x, masks, result.output / "reconstruction.png", title=f"{result.last_batch['__key__'][0]} at step {result.step}",
        )
        print_outputs(result, shards=" ".join(cfg.shards), picture=picture)
    return 0
