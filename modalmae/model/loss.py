"""Reconstruction losses on masked tokens.

``masked_mse`` is MAE's loss: mean squared error per patch, averaged over the tokens whose
weight is 1. Per-patch target normalization (``norm_pix_loss``) is the tokenizer's business
(``tokenizer.target_stats``), because methods differ: MAE / Audio-MAE standardise each patch
with ``sqrt(var + 1e-6)`` (``tokenizers.base.patch_stats``), VideoMAE each channel of each
tube with ``std + 1e-6``.
"""

from __future__ import annotations

from torch import Tensor


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """pred, target [B, L, P]; weight [B, L] (1 = counted) -> scalar loss.

    Tokens with weight 0 do not affect the loss at all. An all-zero weight gives a zero loss
    rather than NaN, so a batch with nothing to predict cannot poison training.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, L]
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)
