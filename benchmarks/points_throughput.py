"""Point-cloud grouping and Chamfer throughput. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/points_throughput.py [--clouds 16] [--rounds 5] [--sizes 1024:64,8192:512]

1. Grouping (FPS centres + their 32 nearest points) with the torch code and with the CPU fast
   path (the ``[fast]`` extra: FPS and kNN in one numba-compiled pass), in two forms: the
   loader's (one cloud per call, one torch thread, as in a DataLoader worker) and batched (all
   clouds in one call, ``--threads`` torch threads: 1 by default, since the fast path uses one
   core, and on this shared 2-core machine two make torch slower, not faster). The machine's
   speed drifts, so the variants take turns within each round (the order flipped every other
   round) and the figure is the median of the per-round ratios, with their range. The loader
   form also times FPS and kNN apart (each its own kernel call; the fused pass shares the
   distances). Every cloud's group indices are compared (centres in order, members in
   order): the fast path gives identical ones, ties and duplicates included, and the count
   says so or not. The kernels' first call (numba compiling them, or loading them from its
   cache) is timed and printed apart, before any round.
2. Chamfer-L2 over a batch of 64 clouds' masked groups (64 x 38 groups of 32 points), its
   throughput and the peak memory it adds (Linux VmHWM after resetting it), chunked (the
   default) and unchunked, each in a fresh process.
Clouds are real scans (tests/data/points: kitten.xyz, 5,210 points, and bunny_zipper.ply,
1,889), taken the loader's way: N of their points (with replacement when the scan has fewer,
so duplicates occur), put in the unit sphere, scaled and shifted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from modalmae.data.points import normalize, scale_and_translate
from modalmae.tokenizers.points import (
    chamfer,
    fps_fast,
    fps_torch,
    group_indices,
    group_points,
    knn_fast,
    knn_torch,
)
from rounds import alternate, ratio

REPO = Path(__file__).resolve().parent.parent
SCANS = REPO / "tests" / "data" / "points"


def scans() -> list[np.ndarray]:
    out = [np.loadtxt(SCANS / "kitten.xyz", dtype=np.float32)[:, :3]]
    try:
        import plyfile

        vertex = plyfile.PlyData.read(str(SCANS / "bunny_zipper.ply"))["vertex"]
        out.append(np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32))
    except ImportError:  # plyfile comes with the point-cloud builder; the kitten alone will do
        pass
    return out


def clouds(count: int, points: int) -> torch.Tensor:
    """[count, points, 3] float32, alternating between the scans, as the loader prepares them."""
    rng = np.random.default_rng(0)
    bases, out = scans(), []
    for i in range(count):
        base = bases[i % len(bases)]
        pick = base[rng.choice(len(base), points, replace=len(base) < points)]
        out.append(scale_and_translate(normalize(pick), rng).astype(np.float32))
    return torch.from_numpy(np.stack(out))


def identical(pts: torch.Tensor, groups: int) -> int:
    """Clouds whose fast-path group indices equal the torch path's (centres and members, in order)."""
    same = 0
    for cloud in pts:
        slow = group_indices(cloud, num_groups=groups, group_size=32)
        fast = group_indices(cloud, num_groups=groups, group_size=32, fast=True)
        same += torch.equal(slow, fast)
    return same


def loader_form(pts: torch.Tensor, groups: int, rounds: int) -> None:
    torch.set_num_threads(1)
    count, n = pts.shape[0], pts.shape[1]
    arrays = [c.numpy() for c in pts]
    t = alternate({
        "torch": lambda: [group_points(c, num_groups=groups, group_size=32) for c in pts],
        "fast": lambda: [group_points(c, num_groups=groups, group_size=32, fast=True) for c in pts],
    }, rounds)
    centres = [a[fps_fast(a, groups)] for a in arrays]
    knn_fast(arrays[0], centres[0], 32)  # its own kernel: compiled before the rounds
    parts = alternate({
        "fps torch": lambda: [fps_torch(c[None], groups) for c in pts],
        "fps fast": lambda: [fps_fast(a, groups) for a in arrays],
        "knn torch": lambda: [knn_torch(c[None], torch.from_numpy(z)[None], 32) for c, z in zip(pts, centres)],
        "knn fast": lambda: [knn_fast(a, z, 32) for a, z in zip(arrays, centres)],
    }, rounds)
    per_s = {k: count / statistics.median(v) for k, v in t.items()}
    print(
        f"  {n:5d} -> {groups:3d} x 32, loader (1 cloud/call): torch {per_s['torch']:7.1f}/s  fast {per_s['fast']:7.1f}/s  "
        f"{ratio(t['torch'], t['fast'], digits=1)}   [FPS alone {ratio(parts['fps torch'], parts['fps fast'], digits=1)}, "
        f"kNN alone {ratio(parts['knn torch'], parts['knn fast'], digits=1)}]"
    )


def batched_form(pts: torch.Tensor, groups: int, rounds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    count, n = pts.shape[0], pts.shape[1]
    t = alternate({
        "torch": lambda: group_points(pts, num_groups=groups, group_size=32),
        "fast": lambda: group_points(pts, num_groups=groups, group_size=32, fast=True),
    }, rounds)
    per_s = {k: count / statistics.median(v) for k, v in t.items()}
    print(
        f"  {n:5d} -> {groups:3d} x 32, batched ({count}/call, {threads} thr): torch {per_s['torch']:7.1f}/s  fast {per_s['fast']:7.1f}/s  "
        f"{ratio(t['torch'], t['fast'], digits=1)}"
    )


def grouping(count: int, rounds: int, sizes: list[tuple[int, int]], threads: int) -> None:
    start = time.perf_counter()
    group_points(clouds(1, 64)[0], num_groups=8, group_size=4, fast=True)
    print(f"fast path's first call (numba compiles, or loads its cache): {time.perf_counter() - start:.2f} s")
    print(f"grouping {count} real clouds (clouds/s: median of {rounds} rounds; torch/fast: median ratio (range))")
    for n, groups in sizes:
        pts = clouds(count, n)
        torch.set_num_threads(1)
        print(f"  {n:5d} -> {groups:3d} x 32: identical group indices in {identical(pts, groups)} of {count} clouds")
        loader_form(pts, groups, rounds)
        batched_form(pts, groups, rounds, threads)


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
    parser.add_argument("--clouds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1024:64,2048:64,8192:64,8192:512", help="points:centres pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the batched form")
    parser.add_argument("--no-chamfer", action="store_true")
    args = parser.parse_args()
    sizes = [(int(a), int(b)) for a, b in (s.split(":") for s in args.sizes.split(","))]
    grouping(args.clouds, args.rounds, sizes, args.threads)
    if not args.no_chamfer:
        chamfer_figures()


if __name__ == "__main__":
    main()
