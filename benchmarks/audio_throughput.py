"""Audio path throughput: the loader against the bare decode + fbank of the same clips, and
training steps of the tiny and base models. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/audio_throughput.py [--media DIR] [--copies 12] [--batches 12]

Shards are built in a temporary folder from real speech (tests/data/audio by default),
each file copied --copies times so there are enough clips and shards for two workers.
Targets: the loader with one worker within ~10 % of the bare cost; two workers >= 1.7x one.
The loader also runs in this process (no worker), which splits its cost per clip into reading
(tar, sha256, shuffle, collate) and the batch's way out of a worker.
The bare baseline runs under the same malloc thresholds as the loader workers
(modalmae.data.alloc; each bare run in a forked child, so the parent and the workers it forks
keep glibc's defaults), and the thresholds' own gain is measured on both. All variants
alternate in rounds; each ratio printed is the median of the per-round ratios, with its range.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pipelines"))

from build_shards import main as build_shards  # noqa: E402

from modalmae.data.alloc import tune_malloc  # noqa: E402
from rounds import forked, ratio  # noqa: E402
from modalmae.data.audio import AudioDecoder  # noqa: E402
from modalmae.data.shards import iter_shard, resolve_shards  # noqa: E402
from modalmae.data.stream import CastFloats, ShardStream, make_loader  # noqa: E402
from modalmae.masking import random_masking  # noqa: E402
from modalmae.model import MaskedAutoencoder, mae_base, mae_tiny  # noqa: E402
from modalmae.tokenizers.fbank import AudioFrontend  # noqa: E402
from modalmae.tokenizers.spectrogram import SpectrogramPatches  # noqa: E402


def build(media: Path, copies: int, root: Path, *, max_count: int = 8) -> Path:
    """Shards of ``copies`` copies of the wav files in ``media``."""
    raw = root / "raw"
    for i in range(copies):
        for f in sorted(media.glob("*.wav")):
            dest = raw / f"copy{i:02d}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    out = root / "shards"
    build_shards(["--modality", "audio", "--input", str(raw), "--output", str(out), "--max-count", str(max_count), "--quiet"])
    return out


def bare(shards: Path, frontend: AudioFrontend, clips: int) -> float:
    """Decode + fbank of ``clips`` samples already in memory, one thread, no loader: clips/s."""
    torch.set_num_threads(1)
    samples = [s for url in resolve_shards(shards).urls for s in iter_shard(url)]
    decode, rng = AudioDecoder(frontend), random.Random(0)
    for sample in samples[:8]:  # warm-up: filterbank cache, allocator
        decode(sample, rng)
    start = time.perf_counter()
    for i in range(clips):
        decode(samples[i % len(samples)], rng)
    return clips / (time.perf_counter() - start)


def loader_rate(shards: Path, frontend: AudioFrontend, *, workers: int, batches: int, batch_size: int, tuned: bool = True, bf16: bool = False) -> float:
    """Steady-state clips/s through ShardStream + DataLoader (the first batches, which pay the
    worker start-up and fill the prefetch queue, are not timed); ``bf16``: the fbank leaves the
    workers in bf16, as in a run that trains in bf16 (``CastFloats``)."""
    decode = AudioDecoder(frontend)
    stream = ShardStream(resolve_shards(shards), CastFloats(decode, ["fbank"], torch.bfloat16) if bf16 else decode, shuffle_buffer=16)
    loader = make_loader(stream, batch_size=batch_size, num_workers=workers)
    if not tuned:
        loader.worker_init_fn = None  # make_loader's workers tune malloc (tune_worker); set before they start
    it = iter(loader)
    for _ in range(workers):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def step_rate(size: str, *, batch_size: int, steps: int) -> float:
    torch.set_num_threads(2)
    cfg = {"tiny": mae_tiny, "base": mae_base}[size]()
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=cfg.encoder_dim), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 1024, 128)
    g = torch.Generator().manual_seed(0)

    def step():
        out = model(x, random_masking(batch_size, 512, 0.8, generator=g))
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=REPO / "tests" / "data" / "audio")
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurement rounds; the median round is reported")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    frontend = AudioFrontend()
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(args.media, args.copies, Path(tmp))
        clips = args.batches * args.batch_size
        torch.set_num_threads(1)  # as in the workers, and no OpenMP pool running when children fork
        loader = {"shards": shards, "frontend": frontend, "batches": args.batches, "batch_size": args.batch_size}
        variants = {
            "bare decode + fbank, default malloc": lambda: forked(lambda: bare(shards, frontend, clips)),
            "bare decode + fbank, tuned malloc": lambda: forked(lambda: (tune_malloc(), bare(shards, frontend, clips))[1]),
            "loader, no worker, tuned malloc": lambda: forked(lambda: (tune_malloc(), loader_rate(**loader, workers=0))[1]),
            "loader, 1 worker, default malloc": lambda: loader_rate(**loader, workers=1, tuned=False),
            "loader, 1 worker, tuned malloc": lambda: loader_rate(**loader, workers=1),
            "loader, 2 workers, tuned malloc": lambda: loader_rate(**loader, workers=2),
            "loader, 1 worker, bf16 batches": lambda: loader_rate(**loader, workers=1, bf16=True),
        }
        # Alternating rounds: this machine's speed drifts, so each ratio compares measurements
        # taken side by side, and the median of the per-round ratios is reported.
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                rates[name].append(fn())
        secs = {name: [1 / r for r in v] for name, v in rates.items()}
        print(f"clips/s, median of {args.repeats} alternating rounds (1 thread each); ratios: median (range) of per-round ratios")
        for name, v in rates.items():
            print(f"  {name:36s} {statistics.median(v):7.1f} clips/s")
        print(f"  loader 1 worker vs bare, both tuned (1 = no overhead): {ratio(secs['bare decode + fbank, tuned malloc'], secs['loader, 1 worker, tuned malloc'])}")
        ms = {name: 1000 * statistics.median(v) for name, v in secs.items()}
        bare_ms, inline_ms, worker_ms = ms["bare decode + fbank, tuned malloc"], ms["loader, no worker, tuned malloc"], ms["loader, 1 worker, tuned malloc"]
        print(f"  ms a clip: decode + fbank {bare_ms:.2f}; + reading, verifying, shuffling, collating (the loader in this process) {inline_ms - bare_ms:.2f};"
              f" + leaving a worker {worker_ms - inline_ms:.2f}")
        print(f"  bare: tuned vs default malloc:                        {ratio(secs['bare decode + fbank, default malloc'], secs['bare decode + fbank, tuned malloc'])}")
        print(f"  loader 1 worker: tuned vs default malloc:             {ratio(secs['loader, 1 worker, default malloc'], secs['loader, 1 worker, tuned malloc'])}")
        print(f"  loader 2 workers vs 1 worker (tuned):                 {ratio(secs['loader, 1 worker, tuned malloc'], secs['loader, 2 workers, tuned malloc'])}")
        print(f"  loader 1 worker: bf16 vs fp32 batches (tuned):        {ratio(secs['loader, 1 worker, tuned malloc'], secs['loader, 1 worker, bf16 batches'])}")
        print(f"  loader 1 worker, bf16 batches vs bare (tuned):        {ratio(secs['bare decode + fbank, tuned malloc'], secs['loader, 1 worker, bf16 batches'])}")
    for size, batch in (("tiny", 8), ("base", 2)):
        rate = step_rate(size, batch_size=batch, steps=args.steps)
        print(f"train step {size:4s} (batch {batch}, 1024x128, 80 % masked, fp32, 2 threads): {rate:6.2f} samples/s")


if __name__ == "__main__":
    main()
