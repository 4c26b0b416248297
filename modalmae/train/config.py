"""Recipe configuration: a dataclass whose fields become CLI flags.

Fields made with ``arg`` become flags (``modalmae.flags``): ``--batch-size`` comes from
``batch_size``, with the field's help text. The resolved config is written to
``<output>/config.json`` so every run records exactly what it ran with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from modalmae.flags import add_flags, arg
from modalmae.masking.schedule import MaskRatio
from modalmae.train.precision import CHOICES as PRECISIONS

# The help of every recipe's --mask-ratio (``published``: the method's value).
MASK_RATIO_HELP = (
    "fraction of tokens masked ({published}): R, or a schedule from step 1 to the last, linear:R0:R1 or "
    "cosine:R0:R1, or uniform:LOW:HIGH for a ratio drawn per sample"
)

__all__ = ["MASK_RATIO_HELP", "MaskRatio", "PretrainConfig", "TrainConfig", "arg", "build_parser", "parse_config"]


@dataclass
class TrainConfig:
    """Flags of the shared training loop (``modalmae.train.loop.train``): data, schedule,
    checkpoints. Pretraining and fine-tuning recipes extend it."""

    shards: list[str] = arg(None, "shards to train on: a folder from build_shards.py, its manifest.json, or a brace pattern such as 'shards/x/shard-{000000..000009}.tar'; each may be a URL (https://, s3://, gs://, pipe:CMD). Several sets are mixed (see --weights)", required=True)
    weights: list[float] = arg(None, "how often each shard set of --shards is drawn (default: in proportion to their sample counts)")
    resampled: bool = arg(False, "draw shards with replacement, without epochs, instead of exact epochs (every sample once per epoch)")
    verify_shards: bool = arg(True, "check each shard against the sha256 its manifest lists before reading it; a shard that fails is reported and its samples skipped")
    output: str = arg("runs/mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/ (the final encoder + tokenizer), reconstruction.png")
    batch_size: int = arg(8, "samples per process per micro-batch")
    grad_accum: int = arg(1, "micro-batches accumulated per optimizer step (effective batch = batch-size x grad-accum x processes)")
    max_steps: int = arg(1000, "optimizer steps to train for (the cosine schedule ends here)")
    epochs: float = arg(None, "train for this many passes over the shards instead of --max-steps (the epoch length comes from the shards' manifest.json)")
    lr: float = arg(None, "peak learning rate; default: --blr x effective batch / 256 (MAE's scaling rule)")
    blr: float = arg(1.5e-4, "base learning rate for an effective batch of 256, used when --lr is not given")
    min_lr: float = arg(0.0, "learning rate at the end of the cosine decay")
    warmup_steps: int = arg(100, "linear warm-up steps from 0 to the peak learning rate (capped at max-steps / 2)")
    weight_decay: float = arg(0.05, "AdamW weight decay (not applied to biases, norms and tokens)")
    clip_grad: float = arg(0.0, "clip the gradient norm to this value (0 = no clipping, as in MAE)")
    max_nonfinite_steps: int = arg(10, "a step whose loss (or clipped gradient norm) is NaN or inf is skipped, without an update, and counted (nonfinite_steps in metrics.jsonl); this many in a row stop the run")
    mixed_precision: str = arg("auto", "autocast precision: auto (bf16 where the hardware multiplies bf16 matrices faster than fp32 ones: GPUs of compute capability 8.0+, AMX or Arm BF16 CPUs; else fp32, or what an accelerate config asks for), no (fp32), bf16, fp16. Weights and optimizer state stay fp32", choices=PRECISIONS)
    compile: bool = arg(False, "torch.compile the model (inductor); the first steps take longer while it compiles (the time is printed)")
    workers: int = arg(2, "DataLoader worker processes per training process (at most one per shard of that process)")
    shuffle_buffer: int = arg(256, "samples held in each worker's shuffle buffer")
    seed: int = arg(0, "seed for shard order, crops, masks and initialisation")
    log_every: int = arg(10, "write a metrics.jsonl line every N steps")
    save_every: int = arg(500, "save a resumable checkpoint (Accelerate save_state) every N steps")
    keep_checkpoints: int = arg(2, "resumable checkpoints kept in <output>/checkpoints (oldest removed first)")
    resume: str = arg(None, "continue from a checkpoint folder, or 'latest' for the newest in <output>/checkpoints (starts afresh when there is none, so a restarted job can always pass it)")
    progress: bool = arg(True, "show a progress bar")
    log_keys: bool = arg(False, "write the sample keys of every step to <output>/keys/rank<r>.jsonl (rank<r>_<corpus>.jsonl in joint runs; to audit the data order)")


@dataclass
class PretrainConfig(TrainConfig):
    """Flags shared by every pretraining recipe."""

    model: str = arg("base", "model size preset", choices=("tiny", "small", "base", "large"))
    mask_ratio: MaskRatio = arg(MaskRatio("0.75"), MASK_RATIO_HELP.format(published="MAE: 0.75"))
    norm_pix_loss: bool = arg(True, "normalize each target patch by its own mean and std before the MSE")
    teacher: str = arg(None, "distil this encoder into the model (DMAE): a model folder or any published checkpoint load_encoder reads, with the same token grid; frozen, run on the visible tokens up to --teacher-layer only")
    distill_layer: int = arg(None, "the model's block whose output (visible tokens, projected to the teacher's width) is matched to the teacher's (default: 3/4 of the depth; DMAE: 9 of 12)")
    teacher_layer: int = arg(None, "the teacher's block it is matched to (default: the same fraction of the teacher's depth; DMAE: 18 of ViT-L's 24)")
    distill_weight: float = arg(1.0, "weight of the feature loss (normalized L1, DMAE: 1) next to the pixel loss")


def build_parser(cls: type, *, description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_flags(parser, cls)
    return parser


def parse_config(cls: type, argv: list[str] | None = None, *, description: str | None = None, epilog: str | None = None):
    """Parse ``argv`` (default: sys.argv[1:]) into an instance of the config dataclass ``cls``."""
    args = build_parser(cls, description=description, epilog=epilog).parse_args(argv)
    return cls(**vars(args))
