"""Reducing per-token losses to the training loss: the mean over the tokens that count.

The per-token loss itself is the tokenizer's (``Tokenizer.loss``: MSE for patches, Chamfer for
point groups), and so is the per-patch target normalization (``norm_pix_loss``,
``Tokenizer.target_stats``), because methods differ: MAE / Audio-MAE standardise each patch with
``sqrt(var + 1e-6)``, VideoMAE each channel of each tube with ``std + 1e-6``.
"""

from __future__ import annotations

from torch import Tensor


def weighted_mean(per_token: Tensor, weight: Tensor) -> Tensor:
    """Mean of [B, L] per-token losses over the tokens whose weight is 1.

    Tokens with weight 0 do not affect the loss at all. An all-zero weight gives a zero loss
    rather than NaN, so a batch with nothing to predict cannot poison training.
    """
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)
