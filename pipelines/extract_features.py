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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from modalmae.data.shards import resolve_shards
from modalmae.data.stream import ShardStream, make_loader
from modalmae.train.downstream import extract_features, open_checkpoint
from modalmae.train.recipe import output_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model folder written by save_pretrained (a run's model/, or convert_checkpoint.py's output), or a published checkpoint convert_checkpoint.py reads (transformers VideoMAE folder, MAE / VideoMAE / Audio-MAE / Point-MAE .pth)")
    parser.add_argument("--shards", required=True, help="shards to embed: a folder from build_shards.py, its manifest.json, or a brace pattern")
    parser.add_argument("--output", required=True, type=Path, help=".npz file to write (keys, features, labels)")
    parser.add_argument("--pool", choices=("mean", "cls"), default="mean", help="mean over patch tokens, or the CLS token (only for encoders that have one)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--modality", help="the modality to embed, for a joint model (recipes/av_mae.py, multi_mae.py): audio, video, ...")
    parser.add_argument("--sampling-rate", type=int, help="video: stride between the clip's frames (default: the one it was trained with)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the encoder runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    model = open_checkpoint(args.checkpoint, map_location=args.device, modality=args.modality, sampling_rate=args.sampling_rate)
    if args.pool == "cls" and model.encoder.cls_token is None:
        parser.error("--pool cls: this encoder has no CLS token")
    try:
        shards = resolve_shards(args.shards, modality=model.spec.shard_kinds)
    except (OSError, ValueError) as e:
        parser.error(f"--shards: {e}")
    stream = ShardStream(shards, model.eval_decoder, epochs=1, shuffle_buffer=1, shuffle_shards=False)
    loader = make_loader(stream, batch_size=args.batch_size, num_workers=args.workers)
    keys, feats, labels, skipped = extract_features(
        model.encoder, loader, spec=model.spec, pool=args.pool, device=args.device, total=shards.num_samples, progress=not args.quiet,
    )
    if not keys:
        print(f"error: no sample of {args.shards} could be read", file=sys.stderr)
        return 1
    if args.output.is_dir():
        parser.error(f"--output {args.output}: is a folder; name the .npz file to write")
    output_folder(args.output.parent, flag="--output's folder")
    np.savez(args.output, keys=np.array(keys), features=feats, labels=np.array(labels))
    print(f"{len(keys)} samples x {feats.shape[1]} features -> {args.output}" + (f" ({skipped} unreadable, skipped)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
