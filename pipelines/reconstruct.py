"""Draw what a trained audio model reconstructs: spectrogram, masked input, reconstruction.

    python pipelines/reconstruct.py --checkpoint runs/demo-audio/model --audio speech.wav
    python pipelines/reconstruct.py --checkpoint runs/demo-audio/model --shards shards/demo-audio --key KEY

Works on any folder written by ``save_pretrained`` (the ``model/`` folder of a run); the
filterbank settings come from that folder's config.json.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import soundfile as sf
import torch

from modalmae.checkpoint import load_pretrained
from modalmae.data.audio import AudioDecoder
from modalmae.data.shards import iter_shard, resolve_shards
from modalmae.masking import random_masking
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.viz import reconstruction_panels, save_spectrogram_figure


def first_sample(shards: str, key: str | None) -> dict:
    for url in resolve_shards(shards).urls:
        for sample in iter_shard(url):
            if key is None or sample["__key__"] == key:
                return sample
    raise SystemExit(f"error: no sample {'with key ' + key + ' ' if key else ''}in {shards}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model folder (model.safetensors + config.json), e.g. runs/demo-audio/model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="an audio file to reconstruct (its first 10 s window)")
    source.add_argument("--shards", help="shards (folder, manifest or brace pattern): the first sample, or --key")
    parser.add_argument("--key", help="with --shards: the sample key to draw")
    parser.add_argument("--mask-ratio", type=float, default=0.8, help="fraction of patches hidden from the encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--output", default="reconstruction.png", help="PNG file to write")
    args = parser.parse_args(argv)

    model, config = load_pretrained(args.checkpoint)
    frontend = AudioFrontend(**config["extra"]["frontend"])
    if args.audio:
        if not Path(args.audio).is_file():
            parser.error(f"--audio {args.audio}: no such file")
        wave, sr = sf.read(args.audio, dtype="float32", always_2d=True)
        fbank, name = frontend(torch.from_numpy(wave.T), sr), Path(args.audio).name
    else:
        sample = first_sample(args.shards, args.key)
        fbank, name = AudioDecoder(frontend, random_crop=False)(sample, random.Random(0))["fbank"], sample["__key__"]
    x = fbank[None]
    masks = random_masking(1, model.tokenizer.num_tokens, args.mask_ratio, generator=torch.Generator().manual_seed(args.seed))
    panels = reconstruction_panels(model, x, masks)
    path = save_spectrogram_figure(panels, args.output, title=f"{name}: {args.mask_ratio:.0%} masked")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
