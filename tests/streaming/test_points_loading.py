"""Point clouds from shard bytes: safe loading, normalization, sampling, augmentation, grouping."""

import io
import random

import numpy as np
import pytest
import torch

from conftest import DATA
from modalmae.data.points import PointDecoder, choose_points, load_cloud, normalize, scale_and_translate


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


KITTEN = np.loadtxt(DATA / "points" / "kitten.xyz", dtype=np.float32)  # a real scan, x y z nx ny nz


def real_cloud():
    return KITTEN


def test_load_cloud_is_safe_and_strict():
    assert load_cloud(npy(np.ones((5, 6), np.float64))).shape == (5, 3)
    with pytest.raises(ValueError):  # object arrays would need pickle: refused
        load_cloud(npy(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError, match="NaN"):
        load_cloud(npy(np.array([[0, 0, np.nan]], np.float32)))
    with pytest.raises(ValueError, match=r"\[N, 3\+\]"):
        load_cloud(npy(np.ones((4, 2), np.float32)))


def test_normalize_and_augment():
    pts = normalize(real_cloud()[:, :3])
    assert np.allclose(pts.mean(0), 0, atol=1e-5) and np.isclose(np.sqrt((pts**2).sum(1)).max(), 1.0)
    moved = scale_and_translate(pts, np.random.default_rng(0))
    ratio = (moved - moved.mean(0)).std(0) / pts.std(0)
    assert ((ratio >= 2 / 3 - 1e-3) & (ratio <= 1.5 + 1e-3)).all()


def test_choose_points():
    rng = np.random.default_rng(0)
    pts = real_cloud()[:, :3]
    subset = choose_points(pts, 1024, rng=rng, sampling="random", fast=False)
    assert subset.shape == (1024, 3) and len(np.unique(subset, axis=0)) == 1024
    upsampled = choose_points(pts[:100], 256, rng=rng, sampling="random", fast=False)
    assert upsampled.shape == (256, 3)
    fps = choose_points(pts, 64, rng=np.random.default_rng(1), sampling="fps", fast=False)
    assert fps.shape == (64, 3) and len(np.unique(fps, axis=0)) == 64


def test_choose_points_fps_fast_is_identical():
    pytest.importorskip("numba")
    pts = real_cloud()[:, :3]
    for seed in range(3):
        fps = choose_points(pts, 256, rng=np.random.default_rng(seed), sampling="fps", fast=False)
        assert np.array_equal(fps, choose_points(pts, 256, rng=np.random.default_rng(seed), sampling="fps", fast=True))


def test_decoder_output():
    sample = {"npy": npy(real_cloud()), "json": b'{"label": "cat"}', "__key__": "k"}
    slow = PointDecoder(num_points=512, num_groups=16, group_size=8, fast=False)(sample, random.Random(3))
    assert slow["points"].shape == (16, 9, 3) and slow["cloud"].shape == (512, 3) and slow["label"] == "cat"
    with pytest.raises(ValueError, match="cannot form"):
        PointDecoder(num_points=16, num_groups=64)


@pytest.mark.parametrize(("num_points", "sampling"), [(1024, "random"), (1024, "fps"), (8192, "random")])
def test_decoder_fast_grouping_is_identical(num_points, sampling):
    """The loader's groups, fast path and torch path, bit for bit; 8192 points from the 5,210 of
    the scan are drawn with replacement, so the cloud holds duplicates (exact ties)."""
    pytest.importorskip("numba")
    sample = {"npy": npy(real_cloud()), "__key__": "k"}
    kwargs = {"num_points": num_points, "num_groups": 64, "group_size": 32, "sampling": sampling}
    for seed in range(2):
        slow = PointDecoder(**kwargs, fast=False)(sample, random.Random(seed))
        fast = PointDecoder(**kwargs, fast=True)(sample, random.Random(seed))
        assert torch.equal(slow["cloud"], fast["cloud"]) and torch.equal(slow["points"], fast["points"])
