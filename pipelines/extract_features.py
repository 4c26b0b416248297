"""Embed every sample of a set of shards with a trained encoder: one pooled vector per key.

    python pipelines/extract_features.py --checkpoint runs/demo-audio/model --shards shards/demo-audio --output feats.npz

The checkpoint (a ``save_pretrained`` folder, or a published checkpoint that
``convert_checkpoint.py`` reads, converted on the fly) decides the modality and the preprocessing
(its evaluation decoder in ``modalmae.modalities``): audio uses the filterbank it was trained
with and each clip's first window; video the centre clip of the tokenizer's frame count at the
training stride, centre-cropped; point clouds as many points as in training; MRI every
sequence at the training spacing and crop; images the centre crop; never any augmentation.
The shards must be of the checkpoint's modality; a joint model needs --modality, and its
audio encoder also reads video shards built with --extract-audio (their audio entries). The output ``.npz`` holds ``keys`` [N] (str),
``features`` [N, D] float32 and ``labels`` [N] (str, empty when a sample has none); load it with
``numpy.load(path)`` (no pickle needed).

Several processes, GPUs or machines: the same command under ``accelerate launch``, e.g.

    accelerate launch --config_file recipes/configs/gpu_8.yaml pipelines/extract_features.py --checkpoint ... --shards ... --output feats.npz
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no pipelines/extract_features.py ...

Each process embeds its own part of the samples (every sample exactly once; no padding) on its
own device (--device unset), writes its rows to a part file in a temporary folder next to
--output, and the main process merges the parts into one ``.npz`` with the rows of a
one-process run in the same order (that of a run with the same --workers and --batch-size;
features equal up to float rounding, as the batches differ). With several machines, --output
must be on a filesystem they all share. Encoders run in float32 whatever the launch's precision.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.data import DataLoader

from modalmae.data.shards import ShardSet, exact_pieces, resolve_shards
from modalmae.data.stream import ShardStream, make_loader
from modalmae.train.downstream import (
    Checkpoint, Position, extract_features, line_places, merge_parts, open_checkpoint, save_part, track_positions,
)
from modalmae.train.recipe import output_folder


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, and the docstring's commands as written."""


def launched() -> bool:
    """Started by ``accelerate launch`` (which sets ACCELERATE_MIXED_PRECISION in every process it
    starts) or torchrun (WORLD_SIZE): only then is an Accelerator made, so that a plain run
    behaves as it always did (its device, no process group)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_device(accelerator: Accelerator) -> str:
    """This process's device as a name every loader takes (on CPUs Accelerate says "cpu:0",
    which safetensors refuses)."""
    device = accelerator.device
    return "cpu" if device.type == "cpu" else str(device)


def one_pass(shards: ShardSet, model: Checkpoint, *, rank: int = 0, world_size: int = 1) -> ShardStream:
    """Every sample once, in the shards' order: this process's part of it."""
    return ShardStream(shards, model.eval_decoder, rank=rank, world_size=world_size, epochs=1, shuffle_buffer=1, shuffle_shards=False)


def main(argv: list[str] | None = None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model folder written by save_pretrained (a run's model/, or convert_checkpoint.py's output), or a published checkpoint convert_checkpoint.py reads (transformers VideoMAE folder, MAE / VideoMAE / Audio-MAE / Point-MAE .pth)")
    parser.add_argument("--shards", required=True, help="shards to embed: a folder from build_shards.py, its manifest.json, or a brace pattern")
    parser.add_argument("--output", required=True, type=Path, help=".npz file to write (keys, features, labels)")
    parser.add_argument("--pool", choices=("mean", "cls"), default="mean", help="mean over patch tokens, or the CLS token (only for encoders that have one)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (of each process, under accelerate launch)")
    parser.add_argument("--modality", help="the modality to embed, for a joint model (recipes/av_mae.py, multi_mae.py): audio, video, ...")
    parser.add_argument("--sampling-rate", type=int, help="video: stride between the clip's frames (default: the one it was trained with)")
    parser.add_argument("--device", help="where the encoder runs (default: under accelerate launch, each process's own device; else cuda when available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.output.is_dir():
        parser.error(f"--output {args.output}: is a folder; name the .npz file to write")

    if not launched():
        return extract(args, parser, None)
    accelerator = Accelerator()
    try:
        return extract(args, parser, accelerator)
    finally:  # also on errors: a process leaving with its process group alive aborts (SIGABRT)
        accelerator.end_training()


def extract(args: argparse.Namespace, parser: argparse.ArgumentParser, accelerator: Accelerator | None) -> int:
    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = args.device or (process_device(accelerator) if accelerator else "cuda" if torch.cuda.is_available() else "cpu")

    model = open_checkpoint(args.checkpoint, map_location=device, modality=args.modality, sampling_rate=args.sampling_rate)
    if args.pool == "cls" and model.encoder.cls_token is None:
        parser.error("--pool cls: this encoder has no CLS token")
    problem = None
    try:
        shards = resolve_shards(args.shards, modality=model.spec.shard_kinds)
        stream = one_pass(shards, model, rank=rank, world_size=world_size)
    except (OSError, ValueError) as e:  # e.g. fewer samples (or, without a manifest, shards) than processes
        problem = f"--shards: {e}"
    if world_size > 1:
        # Some of these depend on the rank (a process without a shard): all processes stop
        # together, each with the message, rather than the others failing in a collective later.
        problem = next((p for p in gather_object([problem]) if p), None)
    if problem:
        parser.error(problem)
    loader = make_loader(stream, batch_size=args.batch_size, num_workers=args.workers)
    if world_size == 1:
        keys, feats, labels, skipped = extract_features(
            model.encoder, loader, spec=model.spec, pool=args.pool, device=device, total=shards.num_samples, progress=not args.quiet,
        )
        keys, labels = np.array(keys), np.array(labels)
    else:
        merged = extract_in_parts(args, accelerator, model, shards, stream, loader, device)
        if merged is None:  # not the main process: its part is written and merged
            return 0
        keys, feats, labels, skipped = merged

    if not len(keys):
        print(f"error: no sample of {args.shards} could be read", file=sys.stderr)
        return 1
    output_folder(args.output.parent, flag="--output's folder")
    np.savez(args.output, keys=keys, features=feats, labels=labels)
    print(f"{len(keys)} samples x {feats.shape[1]} features -> {args.output}" + (f" ({skipped} unreadable, skipped)" if skipped else ""))
    return 0


def extract_in_parts(
    args: argparse.Namespace, accelerator: Accelerator, model: Checkpoint, shards: ShardSet, stream: ShardStream, loader: DataLoader, device: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """This process's rows, written as a part; on the main process, every part merged into the
    rows and order of a one-process run (keys, features, labels, skipped), elsewhere None.

    Parts on disk rather than ``gather_object``: that pickles every process's rows and hands all
    of them to every process (R copies of the whole feature matrix per machine, through GPU
    memory with NCCL). Here each process holds only its own rows, and the main process the
    output plus one part; the part files are plain ``.npz`` (no pickle).
    """
    rank, world_size = accelerator.process_index, accelerator.num_processes
    # A fresh folder per run, made by the main process and named to all: nothing stale from an
    # earlier run can be merged, and a process that cannot see it stops before any work.
    folder: list[str | None] = [None]
    if accelerator.is_main_process:
        output_folder(args.output.parent, flag="--output's folder")
        folder = [tempfile.mkdtemp(prefix=f"{args.output.name}.parts-", dir=args.output.parent)]
    broadcast_object_list(folder)
    parts = Path(folder[0])
    if not parts.is_dir():
        raise SystemExit(
            f"error: --output {args.output}: process {rank} cannot see {parts}, the folder the main process made for the "
            "processes' parts; with several machines, --output must be on a filesystem they all share"
        )

    # The bar follows the main process's own part (its share of a manifest's samples).
    share = None
    if shards.has_sizes:
        pieces = exact_pieces(shards, epoch=0, seed=stream.seed, rank=rank, world_size=world_size, worker=0, num_workers=1, shuffle=stream.shuffle_shards)
        share = sum(p.take for p in pieces)
    positions: list[Position] = []
    keys, feats, labels, skipped = extract_features(
        model.encoder, track_positions(loader, positions), spec=model.spec, pool=args.pool, device=device, total=share,
        progress=accelerator.is_main_process and not args.quiet,
    )
    shard, offset = line_places(positions, stream, num_workers=loader.num_workers)
    save_part(parts / f"part-{rank:05d}.npz", keys=keys, features=feats, labels=labels, shard=shard, offset=offset, skipped=skipped)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    try:
        paths = [parts / f"part-{r:05d}.npz" for r in range(world_size)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(
                f"error: --output {args.output}: {', '.join(missing)} missing from {parts}; with several machines, --output "
                "must be on a filesystem they all share"
            )
        # The order of a one-process run: its loader's workers, capped as make_loader caps them.
        workers = min(args.workers, one_pass(shards, model).max_workers())
        return merge_parts(paths, stream, num_workers=workers, batch_size=args.batch_size)
    finally:
        shutil.rmtree(parts, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
