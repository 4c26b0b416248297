"""glibc malloc thresholds for the decode path (loader workers and the process that decodes).

Decoding a clip allocates and frees buffers of a few hundred kB to tens of MB per sample (PyAV
frames, soundfile reads, fbank and clip tensors). glibc serves any block above its mmap
threshold (128 kB at start, raised only as such blocks are freed) with a fresh mmap and returns
it on free, and trims the heap top above 128 kB: every sample then pays page faults to touch
memory it had a moment before. A fixed, high mmap threshold and a high trim threshold keep
those buffers in the heap, reused without faults; the memory held stays at the working set of
one sample (plus what the heap does not give back), not a leak.

``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment do the same but only
when set before the process starts; ``tune_malloc`` applies them to the running process (a
DataLoader worker, through ``worker_init_fn``). Off glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Above a 720p clip as float (~100 MB), which otherwise costs ~25k page faults per sample; the
# trim threshold twice that, as glibc's own dynamic rule sets it. Blocks larger still are mmapped.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has mallopt as a stub)
        libc.mallopt
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def tune_malloc(*, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds in this process; True if both took effect, False
    off glibc (nothing done). Safe to call more than once; in a DataLoader use ``tune_worker``."""
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 when glibc refuses the value.
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) & bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def tune_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: the thresholds in each worker process (picklable,
    so it works with the spawn and forkserver start methods too)."""
    tune_malloc()
