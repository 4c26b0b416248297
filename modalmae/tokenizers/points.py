"""Point-MAE's tokenizer: point groups around farthest-point-sampled centres (Pang et al. 2022).

A cloud [B, N, 3] becomes G groups (64 by default): farthest point sampling picks G centres
(starting from point 0, as pointnet2's FPS does), each centre's k nearest points (32) form a
group, stored relative to its centre. A mini-PointNet embeds each group (shared MLP 3 -> 128
-> 256, max-pool, concat the pooled feature to every point, MLP 512 -> 512 -> D, max-pool);
an MLP of the centre coordinates (3 -> 128 -> D) gives its position, which Point-MAE adds
before *every* transformer block (``pos_every_block``). Targets are the groups' points, and the
loss is the Chamfer distance between predicted and true groups (``chamfer``, L2 or L1).

Grouping is defined exactly, ties included, so that every implementation picks the same point
indices, not merely points at the same places:
- distance: d(p, q) = (dx * dx + dy * dy) + dz * dz with dx = p.x - q.x, every operation rounded
  to float32 (no fused multiply-add);
- FPS: the first centre is point 0; each next one is the point whose distance to the nearest
  centre so far is largest, the lowest index among equally far points (so once every point
  is at distance 0, i.e. more centres than distinct points, the rest are point 0);
- kNN: a centre's k members are the points with the k smallest (d, index), in that order:
  nearest first, equally near points by index (the centre, or a lower copy of it, first).
Grouping is not learned, so it can run in DataLoader workers (``group_points``), where the CPU
fast path (``fast=True``, the ``[fast]`` extra: FPS and kNN in one pass, compiled with numba in
``point_kernels``) gives groups identical to the torch code's, index for index (tested).
The tokenizer takes raw clouds [B, N, 3] or grouped ones packed as [B, G, 1 + k, 3] (centre
first, then its k points relative to it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import TokenizerBase, Tokens

FAST_HINT = "pip install 'modalmae[fast]'"
KNN_CHUNK = 1 << 17  # distances per kNN chunk on the CPU: small enough to stay in cache, large enough to amortize each op
KNN_CHUNK_DEVICE = 1 << 24  # on an accelerator: fewer, larger launches; memory stays bounded (64 MB a tensor)


def fast_kernels() -> ModuleType:
    """The fast path's compiled kernels (``point_kernels``, numba), or an ImportError saying how
    to get them."""
    try:
        return importlib.import_module("modalmae.tokenizers.point_kernels")
    except ImportError as e:
        raise ImportError(f"the fast grouping path needs numba ({e.name} is missing): {FAST_HINT}") from e


def _fast_array(points: np.ndarray, what: str, *, batched: bool = False) -> np.ndarray:
    """A finite float32 [N, 3] array (``batched``: [B, N, 3]), C-contiguous, as the kernels take it."""
    ndim, shape = (3, "[B, N, 3]") if batched else (2, "[N, 3]")
    if points.dtype != np.float32 or points.ndim != ndim or points.shape[-1] != 3:
        raise ValueError(f"the fast path takes {what} as float32 {shape}, got {points.dtype} {list(points.shape)}")
    if not np.isfinite(points).all():
        raise ValueError(f"the fast path takes finite {what}: NaN or infinity found")
    return np.ascontiguousarray(points)


def _check_counts(n: int, *, centres: int = 0, neighbours: int = 0) -> None:
    if centres > n:
        raise ValueError(f"cannot pick {centres} centres from {n} points")
    if neighbours > n:
        raise ValueError(f"cannot take {neighbours} neighbours from {n} points")


def fps_torch(points: Tensor, num: int) -> Tensor:
    """Farthest point sampling of [B, N, 3] -> indices [B, num], starting from point 0.

    The reference: ``pow(2).sum(-1)`` adds the three squares in order, as the module docstring's
    d does (checked by the tests), and ``argmax`` keeps the first of equal maxima."""
    batch, n, _ = points.shape
    if num > n:
        raise ValueError(f"cannot pick {num} centres from {n} points")
    chosen = torch.zeros(batch, num, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, n), float("inf"), device=points.device)  # distance to the chosen set
    rows = torch.arange(batch, device=points.device)
    last = torch.zeros(batch, dtype=torch.long, device=points.device)
    for i in range(1, num):
        d = (points - points[rows, last][:, None]).pow(2).sum(-1)  # [B, N]
        nearest = torch.minimum(nearest, d)
        last = nearest.argmax(dim=1)
        chosen[:, i] = last
    return chosen


def fps_fast(points: np.ndarray, num: int) -> np.ndarray:
    """``fps_torch`` on one float32 cloud [N, 3], compiled -> [num] int64, identical picks."""
    kernels, cloud = fast_kernels(), _fast_array(points, "one cloud")
    _check_counts(len(cloud), centres=num)
    return kernels.group_clouds(cloud[None], max(num, 0), 0)[0, :, 0]


def knn_fast(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """``knn_torch`` on one float32 cloud [N, 3] and its centres [G, 3], compiled -> [G, k]
    int64, identical."""
    kernels, cloud, centres = fast_kernels(), _fast_array(points, "points"), _fast_array(centres, "centres")
    _check_counts(len(cloud), neighbours=k)
    if k <= 0:
        return np.zeros((len(centres), 0), dtype=np.int64)
    return kernels.nearest_k(cloud, centres, k)


def _fast_clouds(pts: Tensor, num_groups: int, group_size: int) -> tuple[ModuleType, np.ndarray]:
    """[B, N, 3] -> (the kernels, the clouds checked for them), with the message when numba is missing."""
    kernels = fast_kernels()
    if pts.dtype != torch.float32:
        raise ValueError(f"the fast grouping path takes float32 points, got {pts.dtype}")
    clouds = _fast_array(pts.detach().cpu().numpy(), "clouds", batched=True)
    _check_counts(clouds.shape[1], centres=num_groups, neighbours=group_size)
    return kernels, clouds


def _smallest(d: Tensor, k: int) -> Tensor:
    """[..., N] distances -> positions [..., k] of the k smallest (distance, position), in order."""
    n = d.shape[-1]
    if k < n:
        vals, idx = d.topk(k + 1, dim=-1, largest=False)  # ascending; equal values in any order
        # Where the k-th and (k+1)-th are equally near (duplicates, mostly), which points are in
        # depends on the tie rule: those rows keep their nearer points (they lead the ascending
        # top k) and fill the rest with the lowest positions at that edge distance.
        tied = vals[..., k - 1] == vals[..., k]
        vals, idx = vals[..., :k], idx[..., :k]
        if tied.any():
            rows, top, edge = d[tied], idx[tied], vals[tied][:, k - 1 :]  # [T, N], [T, k], [T, 1]
            nearer = (vals[tied] < edge).sum(-1)  # [T]
            row, col = (rows == edge).nonzero(as_tuple=True)  # row-major: positions ascending
            per_row = torch.bincount(row, minlength=len(rows))
            rank = torch.arange(len(row), device=d.device) - (per_row.cumsum(0) - per_row)[row]
            keep = rank < k - nearer[row]
            top[row[keep], nearer[row[keep]] + rank[keep]] = col[keep]
            idx[tied], vals[tied] = top, rows.gather(-1, top)
    else:
        vals, idx = d, torch.arange(n, device=d.device).expand_as(d)
    idx, by_index = idx.sort(dim=-1)  # by position, then a stable sort by distance
    return idx.gather(-1, vals.gather(-1, by_index).sort(dim=-1, stable=True).indices)


def knn_torch(points: Tensor, centres: Tensor, k: int) -> Tensor:
    """Indices [B, G, k] of each centre's k nearest points, nearest first, ties by index.

    Distances are the module docstring's d (``torch.cdist``'s rounding differs), a coordinate
    plane at a time, ``KNN_CHUNK`` of them at once on the CPU (cache-sized: about as fast as
    the cdist + topk this replaced), ``KNN_CHUNK_DEVICE`` on an accelerator.
    """
    batch, n, _ = points.shape
    if k > n:
        raise ValueError(f"cannot take {k} neighbours from {n} points")
    planes = points.transpose(1, 2).contiguous()[:, :, None]  # [B, 3, 1, N]
    step = max(1, (KNN_CHUNK if points.device.type == "cpu" else KNN_CHUNK_DEVICE) // (batch * n))
    chunks = (centres[:, s : s + step, :, None] for s in range(0, centres.shape[1], step))  # [B, g, 3, 1]
    return torch.cat([_smallest(_distances(planes, chunk), k) for chunk in chunks], dim=1)


def _distances(planes: Tensor, centres: Tensor) -> Tensor:
    """Points as coordinate planes [..., 3, 1, N], centres [..., g, 3, 1] -> d [..., g, N]:
    (dx * dx + dy * dy) + dz * dz, plane by plane (in place: no [g, N, 3] temporaries)."""
    d = planes.select(-3, 0) - centres.select(-2, 0)
    d.mul_(d)
    for axis in (1, 2):
        delta = planes.select(-3, axis) - centres.select(-2, axis)
        d.add_(delta.mul_(delta))
    return d


def group_indices(points: Tensor, *, num_groups: int, group_size: int, fast: bool = False) -> Tensor:
    """[B, N, 3] (or one [N, 3] cloud) -> indices [B, G, 1 + k] (or [G, 1 + k]): each centre,
    then its k nearest points. ``fast``: the compiled kernels on the CPU, a cloud at a time
    (finite float32 only), giving the same indices as the torch code."""
    single = points.ndim == 2
    pts = points[None] if single else points
    if fast:
        kernels, clouds = _fast_clouds(pts, num_groups, group_size)
        index = torch.from_numpy(kernels.group_clouds(clouds, num_groups, group_size)).to(pts.device)
    else:
        centre_idx = fps_torch(pts, num_groups)
        centres = torch.gather(pts, 1, centre_idx[..., None].expand(-1, -1, 3))
        index = torch.cat([centre_idx[..., None], knn_torch(pts, centres, group_size)], dim=2)
    return index[0] if single else index


def group_points(points: Tensor, *, num_groups: int, group_size: int, fast: bool = False) -> Tensor:
    """[B, N, 3] (or one [N, 3] cloud) -> packed groups [B, G, 1 + k, 3]: centre, then its k
    nearest points relative to it. ``fast`` uses the compiled kernels (CPU, same groups)."""
    single = points.ndim == 2
    pts = points[None] if single else points
    if fast:
        kernels, clouds = _fast_clouds(pts, num_groups, group_size)
        packed = kernels.pack_clouds(clouds, kernels.group_clouds(clouds, num_groups, group_size))
        grouped = torch.from_numpy(packed).to(pts.device)
    else:
        index = group_indices(pts, num_groups=num_groups, group_size=group_size)
        rows = torch.arange(pts.shape[0], device=pts.device)[:, None, None]
        grouped = pts[rows, index]  # [B, G, 1 + k, 3]
        grouped = torch.cat([grouped[:, :, :1], grouped[:, :, 1:] - grouped[:, :, :1]], dim=2)
    return grouped[0] if single else grouped


def chamfer(a: Tensor, b: Tensor, *, squared: bool = True, chunk_elements: int = 1 << 24) -> Tensor:
    """Chamfer distance between point sets a [M, n, 3] and b [M, m, 3] -> [M].

    Point-MAE's CD-L2 (``squared``): mean squared distance from each point of a to its nearest
    point of b, plus the same from b to a. CD-L1: the mean of the two mean (unsquared)
    distances. Pairwise distances are computed ``chunk_elements`` at a time, so memory stays
    bounded however many sets there are.
    """
    sets, n, m = a.shape[0], a.shape[1], b.shape[1]
    if sets == 0:  # nothing predicted (every group visible): empty, but on the inputs' graph
        return (a.float().sum((1, 2)) + b.float().sum((1, 2))) * 0
    step = max(1, chunk_elements // (n * m))
    out = []
    for start in range(0, sets, step):
        x, y = a[start : start + step].float(), b[start : start + step].float()
        d = (x[:, :, None] - y[:, None]).pow(2).sum(-1)  # [s, n, m] squared distances
        ab, ba = d.min(dim=2).values, d.min(dim=1).values  # [s, n], [s, m]
        if squared:
            out.append(ab.mean(1) + ba.mean(1))
        else:  # clamp: sqrt has no gradient at 0
            out.append((ab.clamp_min(1e-12).sqrt().mean(1) + ba.clamp_min(1e-12).sqrt().mean(1)) / 2)
    return torch.cat(out)


class MiniPointNet(nn.Module):
    """Point-MAE's group encoder: [B*G, k, 3] -> [B*G, dim]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1))
        self.second = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, dim, 1))

    def forward(self, groups: Tensor) -> Tensor:
        x = self.first(groups.transpose(1, 2))  # [BG, 256, k]
        pooled = x.max(dim=2, keepdim=True).values  # [BG, 256, 1]
        x = self.second(torch.cat([pooled.expand_as(x), x], dim=1))  # [BG, dim, k]
        return x.max(dim=2).values


class CentrePositions(nn.Module):
    """Point-MAE's position MLP on group centres: Tokens (their ``coords``) -> [B, G, dim]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))

    def forward(self, tokens: Tokens) -> Tensor:
        return self.mlp(tokens.coords)


class PointGroups(TokenizerBase):
    pos_every_block = True  # Point-MAE adds positions before every block, encoder and decoder

    def __init__(self, *, embed_dim: int = 384, num_groups: int = 64, group_size: int = 32, loss: str = "chamfer_l2") -> None:
        super().__init__()
        if loss not in ("chamfer_l2", "chamfer_l1"):
            raise ValueError(f"unknown point loss {loss!r}: chamfer_l2 or chamfer_l1")
        self.embed_dim, self.num_groups, self.group_size, self.loss_name = embed_dim, num_groups, group_size, loss
        # self.grid stays None: no regular grid, no local-window attention
        self.num_tokens = num_groups
        self.patch_dim = group_size * 3
        self.embed = MiniPointNet(embed_dim)
        self.positions = CentrePositions(embed_dim)

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "num_groups": self.num_groups, "group_size": self.group_size, "loss": self.loss_name}

    def grouped(self, x: Tensor) -> Tensor:
        """Raw [B, N, 3] or packed [B, G, 1 + k, 3] -> packed."""
        if x.ndim == 4:
            if x.shape[1:] != (self.num_groups, self.group_size + 1, 3):
                raise ValueError(f"packed groups must be [B, {self.num_groups}, {self.group_size + 1}, 3], got {list(x.shape)}")
            return x
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected point clouds [B, N, 3] or packed groups [B, G, 1 + k, 3], got {list(x.shape)}")
        return group_points(x, num_groups=self.num_groups, group_size=self.group_size)

    def patchify(self, x: Tensor) -> Tensor:
        """-> [B, G, k * 3]: each group's points relative to its centre."""
        return rearrange(self.grouped(x)[:, :, 1:], "b g k c -> b g (k c)")

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:
        """[B, G, k * 3] relative groups + their centres ``coords`` [B, G, 3] (``Tokens.coords``)
        -> absolute points [B, G, k, 3]."""
        if coords is None:
            raise ValueError("point groups are stored relative to their centres: pass coords (Tokens.coords)")
        return rearrange(patches, "b g (k c) -> b g k c", c=3) + coords[:, :, None]

    def target_stats(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError("point groups have no norm-pix targets: train with norm_pix_loss off")

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Chamfer distance per group: [B, L, k * 3] twice -> [B, L]."""
        b, l, _ = pred.shape
        a, t = (rearrange(v, "b l (k c) -> (b l) k c", c=3) for v in (pred, target))
        return chamfer(a, t, squared=self.loss_name == "chamfer_l2").view(b, l)

    def forward(self, x: Tensor) -> Tokens:
        packed = self.grouped(x)
        centres, groups = packed[:, :, 0], packed[:, :, 1:]  # [B, G, 3], [B, G, k, 3]
        b = groups.shape[0]
        features = self.embed(rearrange(groups, "b g k c -> (b g) k c")).view(b, self.num_groups, -1)
        targets = rearrange(groups, "b g k c -> b g (k c)")
        return Tokens(embeddings=features, positions=self.positions.mlp(centres), targets=targets, coords=centres)

    def decoder_positions(self, dim: int) -> nn.Module:
        return CentrePositions(dim)
