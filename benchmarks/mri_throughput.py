"""MRI loading + preprocessing throughput at 128^3 (BM-MAE's input). Prints figures; asserts nothing.

    .venv/bin/python benchmarks/mri_throughput.py [--subjects 8] [--media ../shared/media/mri/mni152]

Builds shards of --subjects copies of a three-sequence head (the ICBM152 t1 / gm / wm at 1 mm,
197 x 233 x 189, from --media; else the 3 mm copy in tests/data/mri), then streams them through
``MRIDecoder`` (4 sequences configured, one absent; RAS, 1 mm, 128^3 crop, z-score, flips):

1. subjects/s through a DataLoader with 1 and 2 worker processes (batch 1), the ratio 2 / 1;
2. seconds per subject in each step (decode + reorient, resample, crop, normalize, flip), in
   one process, for the 1 mm head (no resampling needed) and for the 3 mm head (upsampled to
   1 mm), and which step dominates.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from modalmae.data.mri import MRIDecoder, crop_or_pad, decode_sequences, resample, zscore_nonzero
from modalmae.data.shards import iter_shard, resolve_shards
from modalmae.data.stream import ShardStream, make_loader
from modalmae.shards import build_shards, mri

REPO = Path(__file__).resolve().parent.parent
SEQUENCES = ["t1", "gm", "wm", "flair"]


def make_shards(source: Path, subjects: int, root: Path) -> Path:
    raw = root / f"raw-{source.name}"
    for i in range(subjects):
        (raw / f"sub{i:03d}").mkdir(parents=True)
        for name in ("t1", "gm", "wm"):
            shutil.copy(source / f"{name}.nii.gz", raw / f"sub{i:03d}" / f"{name}.nii.gz")
    out = root / f"shards-{source.name}"
    build_shards(builder=mri.BUILDER, input_dir=raw, output_dir=out, max_count=max(1, subjects // 4), workers=2, progress=False)
    return out


def loader_rate(shards: Path, workers: int) -> float:
    stream = ShardStream(resolve_shards(str(shards)), MRIDecoder(sequences=SEQUENCES), epochs=1, shuffle_buffer=1)
    loader = make_loader(stream, batch_size=1, num_workers=workers)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["__key__"])
    return count / (time.perf_counter() - start)


def step_breakdown(shards: Path, rounds: int = 3) -> dict[str, float]:
    """Seconds per subject in each of MRIDecoder's steps, run one by one (the sequences of
    these subjects share one spacing, so one resampling call covers them, as in the decoder)."""
    decoder = MRIDecoder(sequences=SEQUENCES)
    samples = list(iter_shard(resolve_shards(str(shards)).urls[0]))[:rounds]
    decoder(samples[0], None)  # warm-up: imports, allocator
    times: dict[str, float] = defaultdict(float)
    for sample in samples:
        tick = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            times[step] += now - tick
            tick = now

        decoded = decode_sequences(sample)
        lap("decode_reorient")
        names = [s for s in SEQUENCES if s in decoded]
        stack = resample(torch.from_numpy(np.stack([decoded[n][0] for n in names])), decoded[names[0]][1], decoder.spacing)
        lap("resample")
        stack = crop_or_pad(stack, decoder.crop)
        lap("crop")
        stack = zscore_nonzero(stack)
        lap("normalize")
        stack.flip([1, 3]).contiguous()
        lap("flip")
    return {k: v / len(samples) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media" / "mri" / "mni152")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader worker, as in training
    heads = [p for p in (args.media, REPO / "tests" / "data" / "mri" / "icbm152") if (p / "t1.nii.gz").exists()]
    with tempfile.TemporaryDirectory() as tmp:
        built = {head: make_shards(head, args.subjects, Path(tmp) / head.name) for head in heads}
        main_head = heads[0]
        print(f"{args.subjects} subjects of {main_head} (3 sequences + 1 absent) -> 4 x 128^3 at 1 mm")
        rates = {w: loader_rate(built[main_head], w) for w in (1, 2)}
        for w, rate in rates.items():
            print(f"  {w} worker(s): {rate:.2f} subjects/s")
        print(f"  2 / 1 workers: {rates[2] / rates[1]:.2f}x")
        for head, shards in built.items():
            steps = step_breakdown(shards)
            total = sum(steps.values())
            print(f"per subject, one process ({head.parent.name}/{head.name}): {total * 1000:.0f} ms")
            for name, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
                print(f"  {name:16s} {seconds * 1000:7.1f} ms  {100 * seconds / total:5.1f} %")
            print(f"  dominant step: {max(steps, key=steps.get)}")


if __name__ == "__main__":
    main()
