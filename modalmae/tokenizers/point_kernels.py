"""Point-MAE grouping on the CPU, compiled with numba: the ``[fast]`` extra.

Imported lazily by ``modalmae.tokenizers.points`` (``fast=True``), which states the grouping
these kernels reproduce index for index, ties included: d = (dx * dx + dy * dy) + dz * dz in
float32 (numba fuses no multiply-add unless asked to), FPS from point 0 keeping the lowest
index among equally far points, kNN by the k smallest (d, index).

``group_clouds`` runs FPS and kNN in one pass: each new centre's distances to every point are
computed once, folded into FPS's nearest-centre distances and ranked for its k members. A row's
k-th smallest distance is first bounded from above, without sorting: split the row into 2k
strided groups; the k-th smallest of their minima has at least k points at or below it (one
per group). Only the points within that bound (about 1.4k of them for clouds in random order)
are ranked as (d, index) keys: by counting, for each, the keys below it, or, when ties at the
bound make them many (duplicated points), by insertion into a sorted list. Distances are
compared as their float32 bit patterns, which order as the floats do for d >= 0, so every
reduction is an integer one and vectorizes without fast-math flags.

The caller passes finite float32 clouds [B, N, 3] (C-contiguous), k <= N, num <= N.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True, "boundscheck": False}
_INDEX_BITS = np.int64(0xFFFFFFFF)
RANK_MAX = 4  # candidates per neighbour up to which they are ranked by counting, above by insertion


@njit(**_JIT)
def _distances(x, y, z, cx, cy, cz, d):
    """d[j] = (dx * dx + dy * dy) + dz * dz, from the centre (cx, cy, cz) to point j."""
    for j in range(x.shape[0]):
        dx = x[j] - cx
        dy = y[j] - cy
        dz = z[j] - cz
        d[j] = (dx * dx + dy * dy) + dz * dz


@njit(**_JIT)
def _fold(bits, nearest):
    """nearest = min(nearest, d), on the bit patterns of d >= 0; returns the index of the
    largest nearest, the lowest among equal ones (keys: bits above, n - 1 - index below)."""
    n = bits.shape[0]
    best = np.int64(-1)
    for j in range(n):
        v = min(nearest[j], bits[j])
        nearest[j] = v
        best = max(best, (np.int64(v) << 32) | np.int64(n - 1 - j))
    return n - 1 - (best & _INDEX_BITS)


@njit(**_JIT)
def _kth_smallest(values, k):
    """The k-th smallest of ``values`` (counted with repeats), by counting ranks."""
    for a in range(values.shape[0]):
        v, less, within = values[a], 0, 0
        for b in range(values.shape[0]):
            less += values[b] < v
            within += values[b] <= v
        if less < k <= within:
            return v
    return values[0]  # not reached for 1 <= k <= len(values)


@njit(**_JIT)
def _rank(keys, k, out):
    """out[:k] = the k smallest of distinct ``keys``, in order: each key's rank by counting the
    smaller ones (m * m steps, vectorized; for a few candidates the fastest)."""
    for a in range(keys.shape[0]):
        key, rank = keys[a], 0
        for q in range(keys.shape[0]):
            rank += keys[q] < key
        if rank < k:
            out[rank] = key


@njit(**_JIT)
def _insert(keys, k, out):
    """out[:k] = the k smallest of distinct ``keys``, in order, by insertion into a sorted list
    (at most m * k steps, and m steps when the keys come in ascending order, as tied ones do)."""
    filled = 0
    for key in keys:
        if filled < k:
            p = filled
            filled += 1
        elif key < out[k - 1]:
            p = k - 1
        else:
            continue
        while p > 0 and out[p - 1] > key:
            out[p] = out[p - 1]
            p -= 1
        out[p] = key


@njit(**_JIT)
def _nearest_k(bits, k, group_min, candidates, out):
    """out[:k] = indices of the k smallest (d, index) of one row of distance bits, in order."""
    n = bits.shape[0]
    groups = min(2 * k, n)
    for c in range(groups):
        group_min[c] = bits[c]
    for start in range(groups, n - groups + 1, groups):  # whole rows: group c holds c, c + groups, ...
        for c in range(groups):
            group_min[c] = min(group_min[c], bits[start + c])
    bound = _kth_smallest(group_min[:groups], k)
    m = 0
    for j in range(n):  # branch-free: every index is written, kept when within the bound
        candidates[m] = j
        m += bits[j] <= bound
    for q in range(m):
        j = candidates[q]
        candidates[q] = (np.int64(bits[j]) << 32) | j
    if m <= RANK_MAX * k:
        _rank(candidates[:m], k, out)
    else:  # many ties at the bound (duplicates): the count would take m * m steps
        _insert(candidates[:m], k, out)
    for p in range(k):
        out[p] &= _INDEX_BITS


@njit(**_JIT)
def _group_cloud(points, num, k):
    """One cloud [N, 3] -> [num, 1 + k] int64: each FPS centre, then its k nearest points
    (``k = 0``: the FPS centres alone)."""
    n = points.shape[0]
    x, y, z = points[:, 0].copy(), points[:, 1].copy(), points[:, 2].copy()
    d = np.empty(n, dtype=np.float32)
    bits = d.view(np.int32)
    nearest = np.full(n, 0x7F800000, dtype=np.int32)  # +inf
    group_min = np.empty(max(2 * k, 1), dtype=np.int32)
    candidates = np.empty(n, dtype=np.int64)
    out = np.empty((num, 1 + k), dtype=np.int64)
    centre = 0
    for i in range(num):
        out[i, 0] = centre
        _distances(x, y, z, x[centre], y[centre], z[centre], d)
        if k:
            _nearest_k(bits, k, group_min, candidates, out[i, 1:])
        if i + 1 < num:
            centre = _fold(bits, nearest)
    return out


@njit(**_JIT)
def nearest_k(points, centres, k):
    """Points [N, 3], centres [G, 3] -> [G, k] int64: each centre's k smallest (d, index)."""
    n, g = points.shape[0], centres.shape[0]
    x, y, z = points[:, 0].copy(), points[:, 1].copy(), points[:, 2].copy()
    d = np.empty(n, dtype=np.float32)
    bits = d.view(np.int32)
    group_min = np.empty(2 * k, dtype=np.int32)
    candidates = np.empty(n, dtype=np.int64)
    out = np.empty((g, k), dtype=np.int64)
    for i in range(g):
        _distances(x, y, z, centres[i, 0], centres[i, 1], centres[i, 2], d)
        _nearest_k(bits, k, group_min, candidates, out[i])
    return out


@njit(**_JIT)
def _pack_groups(points, index):
    """Points [N, 3] and group indices [G, 1 + k] -> [G, 1 + k, 3]: each centre, then its
    members minus the centre (the same float32 subtraction as the torch path's)."""
    g, m = index.shape
    out = np.empty((g, m, 3), dtype=points.dtype)
    for i in range(g):
        c = index[i, 0]
        for a in range(3):
            out[i, 0, a] = points[c, a]
        for j in range(1, m):
            p = index[i, j]
            for a in range(3):
                out[i, j, a] = points[p, a] - points[c, a]
    return out


@njit(**_JIT)
def group_clouds(clouds, num, k):
    """Clouds [B, N, 3] -> [B, num, 1 + k] int64: each cloud's FPS centres, each followed by its
    k nearest points (``k = 0``: the centres alone)."""
    out = np.empty((clouds.shape[0], num, 1 + k), dtype=np.int64)
    for b in range(clouds.shape[0]):
        out[b] = _group_cloud(clouds[b], num, k)
    return out


@njit(**_JIT)
def pack_clouds(clouds, index):
    """Clouds [B, N, 3] and their group indices [B, G, 1 + k] -> [B, G, 1 + k, 3]: each centre,
    then its members minus the centre (the same float32 subtraction as the torch path's)."""
    out = np.empty(index.shape + (3,), dtype=clouds.dtype)
    for b in range(clouds.shape[0]):
        out[b] = _pack_groups(clouds[b], index[b])
    return out
