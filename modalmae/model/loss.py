"""Reconstruction losses on masked tokens.

``masked_mse`` is MAE's loss: mean squared error per patch, averaged over the tokens whose
weight is 1, with optional per-patch target normalization (``norm_pix_loss``: each target patch
standardised by its own mean and variance, eps 1e-6, as MAE / Audio-MAE / VideoMAE do).
"""

from __future__ import annotations

from torch import Tensor


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """[..., P] -> each patch minus its mean, over sqrt(unbiased variance + eps) (MAE's formula)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor, *, norm_pix: bool) -> tuple[Tensor, Tensor]:
    """pred, target [B, L, P]; weight [B, L] (1 = counted) -> (scalar loss, the target used).

    Tokens with weight 0 do not affect the loss at all. An all-zero weight gives a zero loss
    rather than NaN, so a batch with nothing to predict cannot poison training.
    """
    if norm_pix:
        target = normalize_patches(target)
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, L]
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0), target
