"""Point clouds from shard bytes, the Point-MAE way: N points, unit sphere, scale and translate.

Each sample's ``.npy`` holds float32 [M, 3 + C] (xyz first; see schema.py). Training takes
``num_points`` of them (a random subset, as Point-MAE's ShapeNet loader does, or farthest
point sampling; clouds with fewer points are sampled with replacement), centres them and
scales them into the unit sphere, then applies Point-MAE's ``PointcloudScaleAndTranslate``
(per-axis scale in [2/3, 3/2], shift in [-0.2, 0.2]). The groups the tokenizer needs are formed
here, in the DataLoader worker, where the CPU fast path (numba-compiled FPS and kNN: the ``[fast]``
extra) applies; it gives the torch code's groups index for index, ties and duplicates included.

A sample's ``.npy`` header is checked before its array is allocated (numpy allocates the
declared shape first): at most ``max_points`` points, and no more data than the bytes hold. A
NaN or inf coordinate (as float32) is a ValueError, so the stream skips the sample.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import torch

from modalmae.formats.arrays import check_point_header
from modalmae.formats.schema import MAX_POINTS
from modalmae.tokenizers.points import fast_kernels, fps_fast, fps_torch, group_points


def fast_paths_available() -> bool:
    try:
        fast_kernels()
    except ImportError:
        return False
    return True


def load_cloud(data: bytes, *, max_points: int = MAX_POINTS) -> np.ndarray:
    """float32 [M, 3] xyz from ``.npy`` bytes (never unpickles); the header is checked first."""
    stream = io.BytesIO(data)
    check_point_header(stream, max_points=max_points, available=len(data))
    stream.seek(0)
    array = np.lib.format.read_array(stream, allow_pickle=False)  # [M, 3 + C]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is what the check below finds
        xyz = np.ascontiguousarray(array[:, :3], dtype=np.float32)
    if bad := int((~np.isfinite(xyz)).any(axis=1).sum()):
        raise ValueError(f"{bad} point(s) with NaN or inf coordinates (as float32)")
    return xyz


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1 (Point-MAE's pc_norm)."""
    centred = points - points.mean(axis=0)
    radius = np.sqrt((centred**2).sum(axis=1)).max()
    return centred / radius if radius > 0 else centred


def choose_points(points: np.ndarray, num: int, *, rng: np.random.Generator, sampling: str, fast: bool) -> np.ndarray:
    if len(points) < num:
        return points[rng.choice(len(points), num, replace=True)]
    if sampling == "fps":
        start = rng.permutation(len(points))  # FPS starts at index 0: shuffle for a random start
        shuffled = points[start]
        idx = fps_fast(shuffled, num) if fast else fps_torch(torch.from_numpy(shuffled)[None], num)[0].numpy()
        return shuffled[idx]
    return points[rng.choice(len(points), num, replace=False)]


def scale_and_translate(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scale = rng.uniform(2.0 / 3.0, 3.0 / 2.0, size=3).astype(np.float32)
    shift = rng.uniform(-0.2, 0.2, size=3).astype(np.float32)
    return points * scale + shift


class PointDecoder:
    """Raw shard sample -> {"points": packed groups [G, 1 + k, 3], "cloud": [N, 3], "label"}."""

    def __init__(
        self, *, num_points: int = 1024, num_groups: int = 64, group_size: int = 32, sampling: str = "random",
        augment: bool = True, fast: bool | None = None, max_points: int = MAX_POINTS,
    ) -> None:
        if sampling not in ("random", "fps"):
            raise ValueError(f"unknown point sampling {sampling!r}: random or fps")
        if num_points < max(num_groups, group_size):
            raise ValueError(f"{num_points} points cannot form {num_groups} groups of {group_size}")
        self.num_points, self.num_groups, self.group_size = num_points, num_groups, group_size
        self.sampling, self.augment, self.max_points = sampling, augment, max_points
        if fast:
            fast_kernels()  # asked for explicitly: say what is missing now, not at the first sample
        self.fast = fast_paths_available() if fast is None else fast
        if self.fast:  # compiled (or loaded from numba's cache) here: loader workers inherit it or read the cache
            group_points(torch.zeros(1, 3), num_groups=1, group_size=1, fast=True)

    @classmethod
    def from_checkpoint(cls, config: dict, *, train: bool) -> PointDecoder:
        """The decoder a model folder's config.json implies: the tokenizer's groups, the points
        per cloud and their sampling it was trained with (``extra.points``; 1024 random points
        if unrecorded), Point-MAE's augmentation in training only."""
        tok, points = config["tokenizer"]["config"], config.get("extra", {}).get("points", {})
        return cls(
            num_points=points.get("num_points", 1024), num_groups=tok["num_groups"], group_size=tok["group_size"],
            sampling=points.get("sampling", "random"), augment=train,
        )

    def __call__(self, sample: dict, rng: random.Random) -> dict:
        points = load_cloud(sample["npy"], max_points=self.max_points)
        np_rng = np.random.default_rng(rng.getrandbits(64))
        points = normalize(choose_points(points, self.num_points, rng=np_rng, sampling=self.sampling, fast=self.fast))
        if self.augment:
            points = scale_and_translate(points, np_rng)
        cloud = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        packed = group_points(cloud, num_groups=self.num_groups, group_size=self.group_size, fast=self.fast)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        return {"points": packed, "cloud": cloud, "label": meta.get("label")}
