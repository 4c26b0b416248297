"""Video path throughput. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/video_throughput.py [--media DIR] [--skip-loader]

1. Windowed decoding (seek to the keyframe before the clip, decode its span) against the naive
   route (decode every frame, then pick 16), per sample video; target >= 3x on 10 s clips.
2. Clip preparation (crop, resize, flip, normalize of decoded frames): make_clip (crop, resize
   and flip in 8 bits, as the reference's Pillow resize) against the route the throughput issue
   measured (every frame float first, resized in float) and the one before make_clip resized in
   8 bits (the crop made float first); target >= 1.8x; with glibc's default malloc and with the
   thresholds loader workers use; and how far each is from Pillow's resize, in 8-bit levels.
3. The loader (ShardStream + DataLoader, 1 and 2 workers, with and without modalmae.data.alloc's
   malloc thresholds in the workers) against the bare decode + crop of the same clips in this
   process under the same thresholds; target within ~10 % for one worker. And the clips leaving
   the workers in 8 bits (what the recipes do), normalized here as model_input does, against
   float clips.
Every comparison alternates its variants in rounds and prints the median of the per-round ratios
with their range (min-max): this machine's speed drifts, so only side-by-side ratios are fair.
Training-step timings (ours against transformers' VideoMAEForPreTraining) are in
step_vs_reference.py.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pipelines"))

import torch.nn.functional as F
from build_shards import main as build_shards
from rounds import alternate, forked, ratio, timed

from modalmae.data.alloc import tune_malloc
from modalmae.data.shards import iter_shard, resolve_shards
from modalmae.data.stream import ShardStream, make_loader
from modalmae.data.video import (
    VideoDecoder,
    clip_indices,
    decode_pyav,
    make_clip,
    multiscale_crop_box,
    probe_pyav,
)
from modalmae.modalities import MODALITIES, model_input
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD


def decode_every_frame(data: bytes) -> np.ndarray:
    """The naive route the windowed decode is compared against: every frame, in order."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])

def windowed_vs_naive(media: Path, rounds: int) -> None:
    print(f"decode 16 frames at stride 4: windowed vs every frame (ms per clip, median of {rounds} alternating rounds; ratio median (range))")
    for path in sorted(media.glob("*.mp4")):
        data = path.read_bytes()
        frames, fps = probe_pyav(data)
        clip = clip_indices(frames, num_frames=16, stride=4, rng=random.Random(0))
        t = alternate({"windowed": lambda: decode_pyav(data, clip), "naive": lambda: decode_every_frame(data)[clip]}, rounds)
        print(f"  {path.name:28s} {frames / fps:5.1f} s: windowed {1000 * statistics.median(t['windowed']):7.1f}   naive {1000 * statistics.median(t['naive']):7.1f}   ratio {ratio(t['naive'], t['windowed'])}")


_MEAN, _STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def every_frame_float_first(frames: np.ndarray, rows: list[int], *, crop_size: int, rng: random.Random) -> torch.Tensor:
    """The clip preparation the throughput issue measured: the clip's whole frames made float,
    then cropped, resized bilinearly in float (without antialiasing), flipped and normalized."""
    video = torch.from_numpy(frames[rows]).permute(3, 0, 1, 2).float().div_(255)
    top, left, h, w = multiscale_crop_box(video.shape[2], video.shape[3], rng)
    video = F.interpolate(video[:, :, top : top + h, left : left + w], size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if rng.random() < 0.5:
        video = video.flip(-1)
    return (video - _MEAN) / _STD


def float_crop(frames: np.ndarray, rows: list[int], *, crop_size: int, rng: random.Random) -> torch.Tensor:
    """The make_clip before the 8-bit resize: the crop cut from the uint8 frames straight into a
    float tensor, then the same float resize (bit-identical to the one above)."""
    top, left, h, w = multiscale_crop_box(frames.shape[1], frames.shape[2], rng)
    video = torch.empty((3, len(rows), h, w))
    for t, row in enumerate(rows):
        video[:, t].copy_(torch.from_numpy(frames[row, top : top + h, left : left + w]).permute(2, 0, 1))
    video = F.interpolate(video.div_(255), size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if rng.random() < 0.5:
        video = video.flip(-1)
    return video.sub_(_MEAN).div_(_STD)


def pillow_levels(frames: np.ndarray, rows: list[int], *, crop_size: int, rng: random.Random) -> torch.Tensor:
    """VideoMAE's reference resize (Pillow's bilinear on each 8-bit frame), in levels 0-255."""
    top, left, h, w = multiscale_crop_box(frames.shape[1], frames.shape[2], rng)
    images = [Image.fromarray(frames[r]).crop((left, top, left + w, top + h)).resize((crop_size, crop_size), Image.Resampling.BILINEAR) for r in rows]
    if rng.random() < 0.5:
        images = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(3, 0, 1, 2).float()


def clip_preparation(media: Path, rounds: int, crop: int, tuned: bool) -> None:
    torch.set_num_threads(1)  # as in a loader worker
    if tuned:
        tune_malloc()
    print(f"clip preparation, 16 frames -> 3 x 16 x {crop} x {crop}, training crop + flip, 1 thread, {'tuned' if tuned else 'default'} malloc"
          f" (ms per clip; speed-up of make_clip, median (range) of {rounds} alternating rounds)")
    for path in sorted(media.glob("*.mp4")):
        data = path.read_bytes()
        total, _ = probe_pyav(data)
        frames = decode_pyav(data, clip_indices(total, num_frames=16, stride=4, rng=None))
        rows = list(range(len(frames)))
        seed = random.Random(0)
        t = alternate({
            "every frame float first": lambda: every_frame_float_first(frames, rows, crop_size=crop, rng=random.Random(seed.random())),
            "float crop": lambda: float_crop(frames, rows, crop_size=crop, rng=random.Random(seed.random())),
            "make_clip": lambda: make_clip(frames, rows=rows, crop_size=crop, rng=random.Random(seed.random()), flip=True),
        }, rounds)
        ms = "  ".join(f"{name} {1000 * statistics.median(v):6.1f}" for name, v in t.items())
        print(f"  {path.name:24s} {frames.shape[2]}x{frames.shape[1]}: {ms}")
        print(f"  {'':24s} make_clip vs every frame float first: {ratio(t['every frame float first'], t['make_clip'])}   vs float crop: {ratio(t['float crop'], t['make_clip'])}")
        if not tuned:  # the values once: how far each is from the reference's Pillow resize, in levels (0-255)
            s = seed.random()
            want = pillow_levels(frames, rows, crop_size=crop, rng=random.Random(s))
            ours = make_clip(frames, rows=rows, crop_size=crop, rng=random.Random(s), flip=True) * _STD * 255 + _MEAN * 255
            old = float_crop(frames, rows, crop_size=crop, rng=random.Random(s)) * _STD * 255 + _MEAN * 255
            print(f"  {'':24s} levels from Pillow's resize, max / mean: make_clip {(ours - want).abs().max():.1f} / {(ours - want).abs().mean():.3f}"
                  f"   float crop {(old - want).abs().max():.1f} / {(old - want).abs().mean():.3f}")


def loader_vs_bare(media: Path, root: Path, *, copies: int, rounds: int, batches: int, batch_size: int, crop: int) -> None:
    raw = root / "raw"
    for i in range(copies):
        for f in sorted(media.glob("*.mp4")):
            (raw / f"copy{i}").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, raw / f"copy{i}" / f.name)
    out = root / "shards"
    build_shards(["--modality", "video", "--input", str(raw), "--output", str(out), "--max-count", "2", "--quiet"])
    shards = resolve_shards(out)
    decode, eight_bit = VideoDecoder(crop_size=crop), VideoDecoder(crop_size=crop, eight_bit=True)
    samples = [s for url in shards.urls for s in iter_shard(url)]
    clips = batches * batch_size

    def bare() -> float:
        torch.set_num_threads(1)
        rng = random.Random(0)
        return clips / timed(lambda: [decode(samples[i % len(samples)], rng) for i in range(clips)])

    def loader(workers: int, tuned: bool, eight: bool = False) -> float:
        """8-bit clips are normalized here, as model_input does on the device of a CPU run."""
        dl = make_loader(ShardStream(shards, eight_bit if eight else decode, shuffle_buffer=4), batch_size=batch_size, num_workers=workers)
        if not tuned:
            dl.worker_init_fn = None  # make_loader's workers tune malloc (tune_worker); set before they start
        it = iter(dl)
        for _ in range(workers):
            next(it)  # start-up and the first prefetch are not timed
        get = (lambda: model_input(MODALITIES["video"], next(it), "cpu")) if eight else (lambda: next(it))
        rate = clips / timed(lambda: [get() for _ in range(batches)])
        del it
        return rate

    variants = {
        "bare, default malloc": lambda: forked(bare),
        "bare, tuned malloc": lambda: forked(lambda: (tune_malloc(), bare())[1]),
        "loader, 1 worker, default malloc": lambda: loader(1, False),
        "loader, 1 worker, tuned malloc": lambda: loader(1, True),
        "loader, 2 workers, tuned malloc": lambda: loader(2, True),
        "loader, 1 worker, 8-bit clips": lambda: loader(1, True, eight=True),
        "loader, 2 workers, 8-bit clips": lambda: loader(2, True, eight=True),
    }
    torch.set_num_threads(1)  # as in the workers, and no OpenMP pool running when children fork
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            rates[name].append(fn())
    secs = {name: [1 / r for r in v] for name, v in rates.items()}  # per-clip seconds, so ratios read as speed-ups
    print(f"loader on {len(samples)} videos, 16 x {crop} x {crop} clips (clips/s median of {rounds} alternating rounds; ratios median (range) of per-round ratios)")
    for name, v in rates.items():
        print(f"  {name:34s} {statistics.median(v):6.2f} clips/s")
    print(f"  1 worker vs bare, both tuned (1 = no overhead): {ratio(secs['bare, tuned malloc'], secs['loader, 1 worker, tuned malloc'])}")
    print(f"  bare: tuned vs default malloc:                 {ratio(secs['bare, default malloc'], secs['bare, tuned malloc'])}")
    print(f"  1 worker: tuned vs default malloc:             {ratio(secs['loader, 1 worker, default malloc'], secs['loader, 1 worker, tuned malloc'])}")
    print(f"  2 workers vs 1 worker (tuned):                 {ratio(secs['loader, 1 worker, tuned malloc'], secs['loader, 2 workers, tuned malloc'])}")
    for workers in ("1 worker", "2 workers"):
        print(f"  {workers}: 8-bit vs float clips:{' ' * (15 - len(workers))}{ratio(secs[f'loader, {workers}, tuned malloc'], secs[f'loader, {workers}, 8-bit clips'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media" / "video")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--skip-loader", action="store_true", help="skip the loader figures")
    args = parser.parse_args()
    if not args.media.is_dir():
        parser.error(f"--media {args.media}: not a folder of sample videos")
    windowed_vs_naive(args.media, args.rounds)
    for tuned in (False, True):  # each in a child: malloc thresholds set there stay there
        forked(lambda: clip_preparation(args.media, args.rounds * 3, args.crop, tuned))
    if not args.skip_loader:
        with tempfile.TemporaryDirectory() as tmp:
            loader_vs_bare(args.media, Path(tmp), copies=args.copies, rounds=args.rounds, batches=args.batches, batch_size=args.batch_size, crop=args.crop)


if __name__ == "__main__":
    main()
