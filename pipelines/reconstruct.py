"""Draw what a trained model reconstructs: the input, the masked input and the reconstruction.

    python pipelines/reconstruct.py --checkpoint runs/demo-audio/model --file speech.wav
    python pipelines/reconstruct.py --checkpoint runs/video_mae/model --shards shards/clips --key KEY
    python pipelines/reconstruct.py --checkpoint runs/mri_mae/model --shards shards/brats --complete flair

Works on any folder written by ``save_pretrained`` (the ``model/`` folder of a run). The
checkpoint decides the modality (``modalmae.modalities``): its evaluation preprocessing, its
published masking and ratio, and its picture (spectrograms as stacked panels, videos as a grid
of frames, point clouds as 3-D scatters, MRI as three planes per sequence, images side by
side). A --file is prepared as build_shards.py would store it, so any file that modality's
builder reads will do.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from modalmae.checkpoint import CheckpointError, load_pretrained, modality_config
from modalmae.data.shards import iter_shard
from modalmae.data.stream import collate
from modalmae.modalities import ModalitySpec, decoder_for, model_input
from modalmae.model.multimodal import MultiModalMAE
from modalmae.shards import Skip
from modalmae.train.recipe import open_shards
from modalmae.viz import ModalityView


def find_sample(shards: str, key: str | None, spec: ModalitySpec) -> dict:
    found = open_shards([shards], spec.shard_kinds)[0]
    for url in found.urls:
        for sample in iter_shard(url, checksum=found.checksums.get(url)):
            if key is None or sample["__key__"] == key:
                return sample
    raise SystemExit(f"error: no sample {'with key ' + key + ' ' if key else ''}in {shards}")


def file_sample(path: Path, spec: ModalitySpec) -> dict:
    """The sample build_shards.py would store for one raw file."""
    builder = spec.builder
    if builder.find_jobs is not None:
        raise SystemExit(f"error: --file: a {spec.name} sample groups several files; draw one from --shards")
    result = builder.prepare(path, path.name, builder.options())
    if isinstance(result, Skip):
        raise SystemExit(f"error: --file {path}: {result.reason}")
    return {"__key__": path.name, **result.files, "json": json.dumps(result.meta).encode()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model folder (model.safetensors + config.json), e.g. runs/demo-audio/model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a raw file of the checkpoint's modality (audio: its first window; video: its centre clip)")
    source.add_argument("--shards", help="shards (folder, manifest or brace pattern): the first sample, or --key")
    parser.add_argument("--key", help="with --shards: the sample key to draw")
    parser.add_argument("--mask-ratio", type=float, default=None, help="fraction of tokens hidden from the encoder (default: the modality's method: 0.8 audio, 0.9 video, 0.6 points, 0.75 MRI (of one sequence's tokens) and images)")
    parser.add_argument("--modality", help="for a joint model (recipes/av_mae.py, multi_mae.py): the modality to draw, from itself alone")
    parser.add_argument("--sampling-rate", type=int, help="video: stride between the clip's frames (default: the one it was trained with)")
    parser.add_argument("--complete", nargs="+", metavar="SEQUENCE", help="MRI: reconstruct these sequences whole from the subject's others (absent or not) instead of masking at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--output", default="reconstruction.png", help="PNG file to write")
    args = parser.parse_args(argv)

    try:
        model, config = load_pretrained(args.checkpoint)
        if isinstance(model, MultiModalMAE):  # one modality of a joint model, reconstructed from itself alone
            if args.modality not in model.modalities:
                raise ValueError(f"a joint model of {', '.join(model.modalities)}: name one with --modality")
            model, config = ModalityView(model, args.modality), modality_config(config, args.modality)
        elif args.modality not in (None, config.get("modality")):
            raise ValueError(f"a {config.get('modality')} model, not {args.modality}")
        spec, decode = decoder_for(config, train=False, sampling_rate=args.sampling_rate)
    except (CheckpointError, ValueError) as e:
        parser.error(f"--checkpoint {args.checkpoint}: {e}")
    if args.file is not None and not args.file.is_file():
        parser.error(f"--file {args.file}: no such file")
    sample = file_sample(args.file, spec) if args.file is not None else find_sample(args.shards, args.key, spec)
    name = sample["__key__"]
    items = decode(sample, random.Random(0))
    x = model_input(spec, collate((items if isinstance(items, list) else [items])[:1]), "cpu")
    tok, ratio = model.tokenizer, spec.mask_ratio if args.mask_ratio is None else args.mask_ratio
    if args.complete:
        if spec.completion is None:
            parser.error(f"--complete: a {spec.name} model has no parts to complete from the others")
        try:
            masks = spec.completion(tok, x, args.complete)
        except ValueError as e:
            parser.error(f"--complete {' '.join(args.complete)}: {name}: {e}")
        what = f"{' '.join(args.complete)} completed from the other sequences"
    else:
        masks = spec.masking(tok, x, ratio, torch.Generator().manual_seed(args.seed))
        what = f"{ratio:.0%} masked"
    try:
        path = spec.picture(model, x, masks, args.output, title=f"{name}: {what}")
    except ValueError as e:
        parser.error(f"{name}: {e}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
