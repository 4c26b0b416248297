"""The torch grouping path (fps_torch, knn_torch) on hand-made clouds: what its docstrings promise
about errors, the device of its results and how many distances kNN holds at once.

References are independent: a plain-Python farthest point sampling and a brute-force numpy kNN.
"""

import numpy as np
import pytest
import torch

from modalmae.tokenizers import points as module
from modalmae.tokenizers.points import fps_torch, knn_torch


def plain_fps(points, num):
    """Farthest point sampling in plain Python: point 0 first, then the point farthest from the
    chosen set, the lowest index among equally far ones (float32 distances as documented)."""
    pts = np.asarray(points, np.float32)
    chosen, nearest = [0], [float("inf")] * len(pts)
    for _ in range(num - 1):
        d = pts - pts[chosen[-1]]
        d = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
        nearest = [min(a, float(b)) for a, b in zip(nearest, d)]
        chosen.append(nearest.index(max(nearest)))  # index() gives the first of equal maxima
    return chosen


def brute_knn(points, centres, k):
    """Each centre's k nearest points by (float32 distance, index), by a full lexicographic sort."""
    pts, out = np.asarray(points, np.float32), []
    for c in np.asarray(centres, np.float32):
        d = pts - c
        d = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
        out.append(np.lexsort((np.arange(len(pts)), d))[:k])
    return np.array(out, np.int64)


def test_fps_and_knn_on_a_line_with_known_answers():
    """Points at 0, 1, 2, 3, 10 on the x axis. FPS: point 0, then 10 (index 4), then 3 (3 from
    point 0), then 1 and 2 are equally far (1 each): the lower index, 1, then 2."""
    x = torch.tensor([[0.0, 1, 2, 3, 10]])
    points = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)  # [1, 5, 3]
    assert fps_torch(points, 5)[0].tolist() == plain_fps(points[0], 5) == [0, 4, 3, 1, 2]
    # around 2: itself, then 1 and 3 (equally near, lower index first), then 0, then 10
    assert knn_torch(points, points[:, [2]], 5)[0, 0].tolist() == [2, 1, 3, 0, 4]


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda p: fps_torch(p, 5), "cannot pick 5 centres from 4 points"),
        (lambda p: knn_torch(p, p[:, :2], 5), "cannot take 5 neighbours from 4 points"),
    ],
)
def test_asking_for_more_than_the_cloud_holds_says_how_many(call, says):
    with pytest.raises(ValueError, match=f"^{says}$"):
        call(torch.zeros(1, 4, 3))


@pytest.mark.parametrize("num", [1, 4])
def test_fps_indices_stay_on_the_clouds_device(num):
    """Grouping runs on the cloud's device and returns int64 indices there (on the meta device:
    shapes only, no data, so no GPU is needed to see where tensors are made)."""
    got = fps_torch(torch.zeros(2, 6, 3, device="meta"), num)
    assert (got.device.type, got.dtype, tuple(got.shape)) == ("meta", torch.int64, (2, num))


def test_knn_of_every_point_stays_on_the_clouds_device():
    """k equal to the cloud's size ranks every point (no tie repair, which needs data): the
    indices come back on the cloud's device."""
    pts = torch.zeros(2, 6, 3, device="meta")
    got = knn_torch(pts, pts[:, :3], 6)
    assert (got.device.type, got.dtype, tuple(got.shape)) == ("meta", torch.int64, (2, 3, 6))


def chunk_sizes(monkeypatch):
    """A list that fills with the number of distances each kNN chunk computes."""
    sizes, real = [], module._distances

    def counted(planes, centres):
        d = real(planes, centres)
        sizes.append(d.numel())
        return d

    monkeypatch.setattr(module, "_distances", counted)
    return sizes


@pytest.mark.parametrize(("chunk", "most"), [(1, 2 * 40), (2 * 40, 2 * 40), (3 * 2 * 40, 3 * 2 * 40), (2 * 40 + 1, 2 * 40), (1 << 20, 7 * 2 * 40)])
def test_knn_on_the_cpu_holds_at_most_knn_chunk_distances_at_once(monkeypatch, chunk, most):
    """On the CPU kNN computes KNN_CHUNK distances at a time (whole centres: one centre's row of
    the batch, B x N, when even that is more), and the chunks give the same neighbours."""
    sizes = chunk_sizes(monkeypatch)
    monkeypatch.setattr(module, "KNN_CHUNK", chunk)
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.integers(-3, 4, size=(2, 40, 3)).astype(np.float32))  # many ties
    centres = points[:, :7]
    got = knn_torch(points, centres, 5)
    assert max(sizes) == most and sum(sizes) == 7 * 2 * 40
    for b in range(2):
        assert got[b].tolist() == brute_knn(points[b], centres[b], 5).tolist()


def test_knn_off_the_cpu_uses_the_larger_device_chunk(monkeypatch):
    """Off the CPU, KNN_CHUNK_DEVICE bounds a chunk instead: fewer, larger launches."""
    sizes = chunk_sizes(monkeypatch)
    monkeypatch.setattr(module, "KNN_CHUNK", 2 * 6)  # one centre's row at a time, were it the CPU's
    monkeypatch.setattr(module, "KNN_CHUNK_DEVICE", 3 * 2 * 6)
    pts = torch.zeros(2, 6, 3, device="meta")
    knn_torch(pts, pts[:, :6], 6)
    assert sizes == [3 * 2 * 6, 3 * 2 * 6]
