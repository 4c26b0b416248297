"""What the benchmarks share: variants timed in alternating rounds, and ratios as the median
(and range) of the per-round ratios. This machine's speed drifts minute to minute, so only
measurements taken side by side are compared. Imported by the scripts next to it (run as
``python benchmarks/<name>.py``, whose folder is then on ``sys.path``)."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each variant; within a round they run in turn, the order reversed
    every other round, so a drift in the machine's speed reaches all of them alike."""
    names, times = list(variants), {name: [] for name in variants}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(variants[name]))
    return times


def ratio(slow: list[float], fast: list[float], *, digits: int = 2) -> str:
    """Median and range of the per-round ratios slow / fast (how many times faster ``fast`` is)."""
    r = sorted(a / b for a, b in zip(slow, fast))
    return f"{statistics.median(r):.{digits}f}x ({r[0]:.{digits}f}-{r[-1]:.{digits}f})"


def forked(fn: Callable[[], float]) -> float:
    """``fn()`` in a forked child: malloc settings made there stay there (workers forked from
    the caller inherit whatever mallopt did in it, so the caller stays untouched)."""
    context = multiprocessing.get_context("fork")
    recv, send = context.Pipe(duplex=False)
    child = context.Process(target=lambda: send.send(fn()))
    child.start()
    value = recv.recv()
    child.join()
    return value
