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
    fps_fast = choose_points(pts, 64, rng=np.random.default_rng(1), sampling="fps", fast=True)
    assert np.array_equal(fps, fps_fast)


def test_decoder_output_and_fast_grouping_agree():
    sample = {"npy": npy(real_cloud()), "json": b'{"label": "cat"}', "__key__": "k"}
    slow = PointDecoder(num_points=512, num_groups=16, group_size=8, fast=False)(sample, random.Random(3))
    fast = PointDecoder(num_points=512, num_groups=16, group_size=8, fast=True)(sample, random.Random(3))
    assert slow["points"].shape == (16, 9, 3) and slow["cloud"].shape == (512, 3) and slow["label"] == "cat"
    assert torch.equal(slow["cloud"], fast["cloud"]) and torch.equal(slow["points"][:, 0], fast["points"][:, 0])
    with pytest.raises(ValueError, match="cannot form"):
        PointDecoder(num_points=16, num_groups=64)
