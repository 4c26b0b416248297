"""Scale-out data path: loader throughput with 1 and 2 workers, and the bytes each rank reads.

    .venv/bin/python benchmarks/streaming_scale.py [--media DIR] [--copies 14] [--batches 40]

Shards are built in a temporary folder from real speech (../shared/media/audio by default,
each file copied --copies times, 16 clips per shard: 7 shards, an odd count). Prints figures,
asserts nothing.

1. Steady-state clips/s through ShardStream + DataLoader (decode + fbank), 1 and 2 workers,
   median of 3 interleaved rounds, and the 2-worker / 1-worker ratio.
2. For 1, 2, 3 and 4 ranks with 2 workers each, one exact epoch (padded to batch 4): the bytes
   each rank read against its share (total shard bytes / ranks), and the excess in shards.
   Target: no rank reads more than its share plus one shard. The excess is the padding (less
   than a batch per worker, re-read from the start of the worker's segment) plus the tar
   headers a worker reads while seeking past the samples of a shard it shares with another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from audio_throughput import build  # noqa: E402 - the same shards of copied speech clips

from modalmae.data import remote  # noqa: E402
from modalmae.data.audio import AudioDecoder  # noqa: E402
from modalmae.data.shards import resolve_shards  # noqa: E402
from modalmae.data.stream import ShardStream, make_loader  # noqa: E402
from modalmae.tokenizers.fbank import AudioFrontend  # noqa: E402


def loader_rate(shards, decode, workers: int, batches: int, batch_size: int = 4) -> float:
    """Clips/s after the first batches (worker start-up) are discarded."""
    stream = ShardStream(shards, decode, shuffle_buffer=16, pad_to=batch_size)
    it = iter(make_loader(stream, batch_size=batch_size, num_workers=workers))
    for _ in range(max(2, workers * 2)):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - start)
    del it
    return rate


def bytes_per_rank(shards, world: int, workers: int, *, verify: bool, batch_size: int = 4) -> list[int]:
    """Bytes each rank's workers read in one padded epoch (workers run in turn, in-process).
    ``verify``: each shard opened is first hashed whole (its manifest's sha256)."""
    read = []
    for rank in range(world):
        stream = ShardStream(shards, lambda raw, rng: {}, rank=rank, world_size=world, epochs=1, pad_to=batch_size, verify=verify)
        remote.BYTES_READ.clear()
        for worker in range(workers):
            for _ in stream.slot_items(worker, workers):
                pass
        read.append(sum(remote.BYTES_READ.values()))
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media" / "audio")
    parser.add_argument("--copies", type=int, default=14)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        shards = resolve_shards(build(args.media, args.copies, Path(tmp), max_count=16))
        sizes = [Path(u).stat().st_size for u in shards.urls]
        print(f"{shards.num_samples} clips in {len(shards.urls)} shards, {sum(sizes) / 1e6:.1f} MB, largest shard {max(sizes) / 1e3:.0f} kB")

        decode = AudioDecoder(AudioFrontend(num_frames=1024))
        rounds = {1: [], 2: []}
        for _ in range(3):
            for workers in rounds:
                rounds[workers].append(loader_rate(shards, decode, workers, args.batches))
        one, two = statistics.median(rounds[1]), statistics.median(rounds[2])
        print("\nloader throughput (decode + fbank, 1024 frames, batch 4, median of 3 rounds)")
        print(f"  1 worker : {one:7.1f} clips/s   (rounds: {', '.join(f'{r:.0f}' for r in rounds[1])})")
        print(f"  2 workers: {two:7.1f} clips/s   (rounds: {', '.join(f'{r:.0f}' for r in rounds[2])})")
        print(f"  2 workers / 1 worker: {two / one:.2f}x")

        print("\nbytes read per rank in one exact epoch (2 workers per rank, padded to batch 4)")
        print(f"  {'ranks':>5} {'rank':>4} {'read kB':>9} {'share kB':>9} {'excess (shards)':>16} {'verified kB':>12}")
        worst = 0.0
        for world in (1, 2, 3, 4):
            share = sum(sizes) / world
            plain, verified = (bytes_per_rank(shards, world, 2, verify=v) for v in (False, True))
            for rank, (nbytes, checked) in enumerate(zip(plain, verified)):
                excess = (nbytes - share) / max(sizes)
                worst = max(worst, excess)
                print(f"  {world:>5} {rank:>4} {nbytes / 1e3:9.0f} {share / 1e3:9.0f} {excess:16.2f} {checked / 1e3:12.0f}")
        print(f"  largest excess over a rank's share: {worst:.2f} shard ({'within' if worst <= 1 else 'OVER'} the one-shard bound)")
        print("  (verified: each shard a rank opens is also hashed whole first, the cost of --verify-shards)")


if __name__ == "__main__":
    main()
