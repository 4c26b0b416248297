"""Masking strategies: functions of (batch, token count, ratio, torch.Generator) -> ``Masks``.

Convention, stated once for the whole package: in ``Masks.mask`` 1 means *masked* (hidden
from the encoder, reconstructed by the decoder), 0 means visible.

Every sample masks exactly ``round(ratio * L)`` tokens, as in MAE's per-sample shuffle, so
batches are dense (no padding) and the encoder cost is fixed. Randomness comes only from the
generator passed in, so a seed reproduces the masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Masks:
    """Index views of one batch of masks (B samples, L tokens, Lk kept, Lm = L - Lk masked)."""

    ids_keep: Tensor  # [B, Lk] long: visible tokens, the encoder's input order
    ids_masked: Tensor  # [B, Lm] long: masked tokens
    ids_restore: Tensor  # [B, L] long: where token i sits in cat(ids_keep, ids_masked)
    mask: Tensor  # [B, L] float: 1 = masked, 0 = visible

    @property
    def num_masked(self) -> int:
        return self.ids_masked.shape[1]

    def to(self, device: torch.device | str) -> "Masks":
        return Masks(*(t.to(device) for t in (self.ids_keep, self.ids_masked, self.ids_restore, self.mask)))


def num_masked_tokens(num_tokens: int, ratio: float) -> int:
    """round(ratio * L), refusing ratios that would leave the encoder or the loss empty."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(round(ratio * num_tokens))


def masks_from_order(order: Tensor, num_masked: int) -> Masks:
    """Build ``Masks`` from a per-sample token order [B, L]: the last ``num_masked`` are masked."""
    batch, length = order.shape
    num_keep = length - num_masked
    ids_restore = torch.argsort(order, dim=1)
    mask = torch.ones(batch, length, device=order.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to token order
    return Masks(order[:, :num_keep], order[:, num_keep:], ids_restore, mask)


def random_masking(
    batch_size: int,
    num_tokens: int,
    ratio: float,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Masks:
    """MAE / Audio-MAE random masking: an independent uniform shuffle per sample.

    The noise is drawn on the generator's device (torch requires it) and moved to ``device``.
    """
    num_masked = num_masked_tokens(num_tokens, ratio)
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device)
    order = torch.argsort(noise, dim=1)  # [B, L]
    return masks_from_order(order.to(device or generator.device), num_masked)
