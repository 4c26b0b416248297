"""Point-cloud grouping and Chamfer throughput. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/points_throughput.py [--clouds 32] [--rounds 3]

1. Grouping 8192-point clouds into 64 x 32 and 512 x 32 (FPS centres + kNN), with the torch
   code (batched over clouds, one step per centre) and with the CPU fast paths (fpsample's
   C++ FPS + scipy cKDTree), counting the clouds where both give the same groups (they differ
   only where two FPS candidates are equally far to float rounding).
2. Chamfer-L2 over a batch of 64 clouds' masked groups (64 x 38 groups of 32 points), its
   throughput and the peak memory it adds (Linux VmHWM after resetting it), chunked (the
   default) and unchunked, each in a fresh process.
Clouds are real scans (tests/data/points/kitten.xyz, resampled to 8192 points) when present,
else Gaussian blobs. Median of --rounds; this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from modalmae.model.loss import chamfer
from modalmae.tokenizers.points import group_points

REPO = Path(__file__).resolve().parent.parent


def clouds(count: int, points: int = 8192) -> torch.Tensor:
    rng = np.random.default_rng(0)
    scan = REPO / "tests" / "data" / "points" / "kitten.xyz"
    base = np.loadtxt(scan, dtype=np.float32)[:, :3] if scan.exists() else rng.normal(size=(points, 3)).astype(np.float32)
    out = []
    for _ in range(count):
        pick = base[rng.choice(len(base), points, replace=len(base) < points)]
        out.append(pick + rng.normal(scale=1e-3, size=pick.shape).astype(np.float32))  # no duplicate points
    return torch.from_numpy(np.stack(out))


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grouping(count: int, rounds: int) -> None:
    torch.set_num_threads(2)
    pts = clouds(count)
    print(f"grouping {count} clouds of 8192 points (clouds/s, median of {rounds})")
    for groups in (64, 512):
        slow = group_points(pts, num_groups=groups, group_size=32)
        fast = group_points(pts, num_groups=groups, group_size=32, fast=True)
        # Per cloud: FPS picks agree unless two candidates are equally far to float rounding,
        # which the two implementations may break differently.
        same_centres = sum(torch.equal(a, b) for a, b in zip(slow[:, :, 0], fast[:, :, 0]))
        same_members = sum(
            torch.allclose(a.sort(dim=1).values, b.sort(dim=1).values, atol=1e-6)
            for a, b in zip(slow[:, :, 1:], fast[:, :, 1:])
        )
        t_slow = median_time(lambda g=groups: group_points(pts, num_groups=g, group_size=32), rounds)
        t_fast = median_time(lambda g=groups: group_points(pts, num_groups=g, group_size=32, fast=True), rounds)
        print(
            f"  8192 -> {groups:3d} x 32: torch {count / t_slow:7.1f}   fast paths {count / t_fast:7.1f}   "
            f"({t_slow / t_fast:.1f}x; identical groups in {min(same_centres, same_members)} of {count} clouds)"
        )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _chamfer_worker(chunked: bool, queue) -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64 * 38, 32, 3, generator=g), torch.randn(64 * 38, 32, 3, generator=g)
    chunk = 1 << 16 if chunked else 1 << 40
    chamfer(a[:2], b[:2])  # start torch's thread pool and kernels outside the measurement
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    chamfer(a, b, chunk_elements=chunk)
    peak = _status_kib("VmHWM") - before
    start = time.perf_counter()
    for _ in range(5):
        chamfer(a, b, chunk_elements=chunk)
    queue.put(((time.perf_counter() - start) / 5, peak))


def chamfer_figures() -> None:
    print("Chamfer-L2, batch of 64 clouds x 38 masked groups x 32 points")
    ctx = multiprocessing.get_context("spawn")
    for chunked in (True, False):
        queue = ctx.Queue()
        proc = ctx.Process(target=_chamfer_worker, args=(chunked, queue))
        proc.start()
        elapsed, extra_kb = queue.get()
        proc.join()
        name = "chunked (64k pairs)" if chunked else "unchunked"
        print(f"  {name:20s} {64 / elapsed:8.1f} clouds/s   peak memory added {extra_kb / 1024:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clouds", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    grouping(args.clouds, args.rounds)
    chamfer_figures()


if __name__ == "__main__":
    main()
