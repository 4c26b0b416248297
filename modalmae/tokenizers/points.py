"""Point-MAE's tokenizer: point groups around farthest-point-sampled centres (Pang et al. 2022).

A cloud [B, N, 3] becomes G groups (64 by default): farthest point sampling picks G centres
(starting from point 0, as pointnet2's FPS does), each centre's k nearest points (32) form a
group, stored relative to its centre. A mini-PointNet embeds each group (shared MLP 3 -> 128
-> 256, max-pool, concat the pooled feature to every point, MLP 512 -> 512 -> D, max-pool);
an MLP of the centre coordinates (3 -> 128 -> D) gives its position, which Point-MAE adds
before *every* transformer block (``pos_every_block``). Targets are the groups' points, and the
loss is the Chamfer distance between predicted and true groups (``chamfer``, L2 or L1).

Grouping is not learned, so it can run in DataLoader workers (``group_points``) where the CPU
fast paths apply: ``fpsample`` for FPS and scipy's cKDTree for kNN give the same groups as
the torch code (tested), except where two FPS candidates are equally far to float rounding,
which the two implementations may break differently. The tokenizer takes raw clouds [B, N, 3] or grouped ones packed as
[B, G, 1 + k, 3] (centre first, then its k points relative to it).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import TokenizerBase, Tokens


def fps_torch(points: Tensor, num: int) -> Tensor:
    """Farthest point sampling of [B, N, 3] -> indices [B, num], starting from point 0."""
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
    """The same FPS on one [N, 3] cloud in fpsample's C++ (identical picks, same start).

    fpsample's faster bucket variants (QuickFPS) are exact too, but in version 1.0.2 they do not
    start from the ``start_idx`` they are given, so their groups would differ from ours.
    """
    try:
        import fpsample
    except ImportError as e:
        raise ImportError("the fast FPS path needs fpsample: pip install 'modalmae[fast]'") from e
    return np.asarray(fpsample.fps_sampling(points, num, start_idx=0), dtype=np.int64)


def knn_torch(points: Tensor, centres: Tensor, k: int) -> Tensor:
    """Indices [B, G, k] of each centre's k nearest points (itself included), nearest first."""
    # Exact distances: the matrix-product shortcut reorders near-equal neighbours.
    d = torch.cdist(centres, points, compute_mode="donot_use_mm_for_euclid_dist")
    return d.topk(k, dim=-1, largest=False).indices


def knn_fast(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    try:
        from scipy.spatial import cKDTree
    except ImportError as e:
        raise ImportError("the fast kNN path needs scipy: pip install 'modalmae[fast]'") from e
    return cKDTree(points).query(centres, k=k)[1].astype(np.int64)


def group_points(points: Tensor, *, num_groups: int, group_size: int, fast: bool = False) -> Tensor:
    """[B, N, 3] (or one [N, 3] cloud) -> packed groups [B, G, 1 + k, 3]: centre, then its k
    nearest points relative to it. ``fast`` uses fpsample + cKDTree (CPU, same groups)."""
    single = points.ndim == 2
    pts = points[None] if single else points
    if fast:
        packed = []
        for cloud in pts.detach().cpu().numpy():
            centre_idx = fps_fast(cloud, num_groups)
            members = knn_fast(cloud, cloud[centre_idx], group_size)
            packed.append(torch.from_numpy(np.concatenate([centre_idx[:, None], members], axis=1)))
        index = torch.stack(packed).to(pts.device)  # [B, G, 1 + k]
    else:
        centre_idx = fps_torch(pts, num_groups)
        centres = torch.gather(pts, 1, centre_idx[..., None].expand(-1, -1, 3))
        index = torch.cat([centre_idx[..., None], knn_torch(pts, centres, group_size)], dim=2)
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
