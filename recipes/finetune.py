"""Fine-tune a pretrained encoder with a linear head on labelled shards (MAE / VideoMAE / Audio-MAE
fine-tuning): AdamW with layer-wise learning-rate decay (``--layer-decay``, 0.75 as in
MAE ViT-B), warm-up then cosine, label smoothing, the modality's training augmentation, and
no masking by default (``--mask-ratio`` drops a share of the tokens at random, the light masking
Audio-MAE fine-tunes with). A held-out share of the keys (by hash, ``--val-fraction``) is
evaluated every ``--eval-every`` steps and at the end; labels are each sample's json ``label``.

    accelerate launch recipes/finetune.py --checkpoint runs/video_mae/model --shards shards/clips --output runs/ft

The checkpoint is a model folder (a run's model/, convert_checkpoint.py's output) or a published
checkpoint convert_checkpoint.py reads. It trains in the pretraining recipes' loop, so the same
flags apply (--epochs, --save-every, --resume latest, several --shards mixed, any number of
processes) and writes the same files to --output: config.json, metrics.jsonl (training lines;
evaluation lines with "val_accuracy", "val_samples", "chance"), checkpoints/, then model/ (the
fine-tuned encoder, its classes under extra.classes) and head.safetensors. With --val-fraction,
an epoch counts every sample of --shards, the held-out share made up by repeating training
samples; --val-shards (separate held-out shards) keeps epochs exact.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from modalmae.checkpoint import load_encoder, save_pretrained
from modalmae.data.stream import ShardStream, make_loader
from modalmae.modalities import model_input
from modalmae.train.config import TrainConfig, arg, parse_config
from modalmae.train.downstream import Classifier, SplitFilter, layer_decay_groups, open_checkpoint
from modalmae.train.loop import train
from modalmae.train.precision import make_accelerator
from modalmae.train.recipe import open_shards, output_folder


@dataclass
class FinetuneConfig(TrainConfig):
    checkpoint: str = arg(None, "model folder (a run's model/ or convert_checkpoint.py's output) or a published checkpoint", required=True)
    output: str = arg("runs/finetune", "run folder: config.json, metrics.jsonl, checkpoints/, model/ (the fine-tuned encoder), head.safetensors")
    classes: list[str] = arg(None, "the class labels, in order (default: every label found in the shards, sorted)")
    val_shards: list[str] = arg(None, "held-out shards (default: a --val-fraction share of --shards, chosen by key hash)")
    val_fraction: float = arg(0.2, "share of the samples of --shards held out when no --val-shards are given")
    pool: str = arg("mean", "pooling of the encoder's tokens for the head", choices=("mean", "cls"))
    blr: float = arg(1e-3, "base learning rate for an effective batch of 256 (MAE / VideoMAE fine-tuning: 1e-3)")
    min_lr: float = arg(1e-6, "learning rate at the end of the cosine decay")
    warmup_steps: int = arg(50, "linear warm-up steps (capped at max-steps / 2)")
    layer_decay: float = arg(0.75, "layer-wise lr decay: block i of n trains at lr x decay^(n + 1 - i)")
    mask_ratio: float = arg(0.0, "share of tokens dropped at random in training (0 = none)")
    label_smoothing: float = arg(0.1, "cross-entropy label smoothing")
    eval_every: int = arg(0, "evaluate on the held-out samples every N steps (0 = only at the end)")
    sampling_rate: int = arg(None, "video: stride between the clip's frames (default: the checkpoint's)")
    modality: str = arg(None, "the modality to train on, for a joint model (recipes/av_mae.py, multi_mae.py): audio, video, ...")


def label_of(sample: dict, rng) -> dict:  # noqa: ARG001 - the stream's decoder signature
    return {"label": json.loads(sample["json"]).get("label") if "json" in sample else None, "x": torch.zeros(())}


def scan_classes(sources, workers: int) -> list[str]:
    """Every label in the shards, sorted (reads each sample's json)."""
    loader = make_loader(ShardStream(sources, label_of, epochs=1, shuffle_buffer=1, shuffle_shards=False), batch_size=64, num_workers=workers)
    return sorted({label for batch in loader for label in batch["label"] if label})


def evaluate(model, sources, decode, spec, index, accelerator, cfg) -> dict:
    """Accuracy on this process's part of the held-out samples, summed over processes."""
    stream = ShardStream(
        sources, decode, rank=accelerator.process_index, world_size=accelerator.num_processes, epochs=1, shuffle_buffer=1, shuffle_shards=False,
    )
    counts = torch.zeros(len(index) + 2, dtype=torch.float64, device=accelerator.device)  # per class, then correct, total
    model.eval()
    with torch.inference_mode():
        for batch in make_loader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers):
            y = torch.tensor([index.get(label, -1) for label in batch["label"]], device=accelerator.device)
            pred = model(model_input(spec, batch, accelerator.device)).argmax(1)
            counts[: len(index)] += torch.bincount(y[y >= 0], minlength=len(index)).to(counts)
            counts[-2] += (pred == y).sum()
            counts[-1] += len(y)
    model.train()
    counts = accelerator.reduce(counts, reduction="sum")  # over processes
    total = max(counts[-1].item(), 1)
    return {"val_accuracy": counts[-2].item() / total, "val_samples": int(counts[-1].item()), "chance": counts[: len(index)].max().item() / total}


def load_classifier(run: str | Path) -> Classifier:
    """The fine-tuned encoder and head of a finished run, in eval mode."""
    encoder, config = load_encoder(Path(run) / "model")
    head = load_file(str(Path(run) / "head.safetensors"))
    model = Classifier(encoder, head["weight"].shape[0], pool=config["extra"].get("pool", "mean"))
    model.head.load_state_dict(head)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    head_doc, _, rest = __doc__.partition("\n\n")
    cfg = parse_config(FinetuneConfig, argv, description=head_doc, epilog=rest)
    output_folder(cfg.output)
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)

    checkpoint = open_checkpoint(cfg.checkpoint, modality=cfg.modality, sampling_rate=cfg.sampling_rate)
    spec = checkpoint.spec
    sources = open_shards(cfg.shards, spec.shard_kinds)
    if cfg.val_shards:
        held_out = open_shards(cfg.val_shards, spec.shard_kinds, flag="--val-shards")
        keep = lambda decode, split: decode  # noqa: E731 - separate shard sets, nothing to filter
    else:
        held_out = sources
        keep = lambda decode, split: SplitFilter(decode, split=split, val_fraction=cfg.val_fraction, seed=cfg.seed)  # noqa: E731
    classes = cfg.classes or scan_classes(sources, cfg.workers)
    if len(classes) < 2:
        print(f"error: fine-tuning needs at least 2 classes; the shards' json labels give {classes}", file=sys.stderr)
        return 1
    index = {c: i for i, c in enumerate(classes)}
    eval_decode = keep(checkpoint.eval_decoder, "val")
    model = Classifier(checkpoint.encoder, len(classes), pool=cfg.pool, mask_ratio=cfg.mask_ratio).train()

    def loss_fn(model, batch: dict, generator: torch.Generator, **_) -> torch.Tensor:
        y = torch.tensor([index.get(label, -100) for label in batch["label"]], device=accelerator.device)
        logits = model(model_input(spec, batch, accelerator.device), generator)
        if not (y >= 0).any():  # only unlabelled samples: no loss, but still join the gradient sync
            return logits.sum() * 0
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    def save(unwrapped: Classifier, state: dict, output: Path) -> None:
        encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        extra = {**checkpoint.config.get("extra", {}), "classes": classes, "pool": cfg.pool}
        save_pretrained(unwrapped.encoder, output / "model", extra=extra, state=encoder_state)
        save_file({k[len("head."):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith("head.")}, str(output / "head.safetensors"))

    result = train(
        cfg, accelerator=accelerator, model=model, decode=keep(checkpoint.train_decoder, "train"), loss_fn=loss_fn, save=save, shards=sources,
        groups=layer_decay_groups(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay), betas=(0.9, 0.999),
        evaluate=lambda model, step: evaluate(model, held_out, eval_decode, spec, index, accelerator, cfg),
    )
    if accelerator.is_main_process:
        evals = [r for r in map(json.loads, (result.output / "metrics.jsonl").read_text().splitlines()) if "val_accuracy" in r]
        if evals:
            final = evals[-1]
            print(f"\nheld-out accuracy {final['val_accuracy']:.3f} on {final['val_samples']} samples at step {final['step']} (majority class {final['chance']:.3f})")
        print(f"metrics:     {result.output / 'metrics.jsonl'}")
        print(f"checkpoints: {result.output / 'checkpoints'} (resume with --resume latest)")
        print(f"model:       {result.output / 'model'} (encoder; classes in its config.json) + {result.output / 'head.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
