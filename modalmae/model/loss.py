"""Reconstruction losses on masked tokens.

``masked_mse`` is MAE's loss: mean squared error per patch, averaged over the tokens whose
weight is 1. ``chamfer`` is Point-MAE's set loss (tokenizers with a ``loss`` method use their
own per-token loss in place of the MSE). Per-patch target normalization (``norm_pix_loss``) is the tokenizer's business
(``tokenizer.target_stats``), because methods differ: MAE / Audio-MAE standardise each patch
with ``sqrt(var + 1e-6)`` (``tokenizers.base.patch_stats``), VideoMAE each channel of each
tube with ``std + 1e-6``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mse_per_token(pred: Tensor, target: Tensor) -> Tensor:
    """[B, L, P] twice -> [B, L]: mean squared error over each token's values."""
    return (pred.float() - target.float()).pow(2).mean(dim=-1)


def weighted_mean(per_token: Tensor, weight: Tensor) -> Tensor:
    """Mean of [B, L] per-token losses over the tokens whose weight is 1.

    Tokens with weight 0 do not affect the loss at all. An all-zero weight gives a zero loss
    rather than NaN, so a batch with nothing to predict cannot poison training.
    """
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """pred, target [B, L, P]; weight [B, L] (1 = counted) -> scalar MSE over counted tokens."""
    return weighted_mean(mse_per_token(pred, target), weight)


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
