"""Masking strategies: functions of (batch, token count, ratio, torch.Generator) -> ``Masks``.

Convention, stated once for the whole package: in ``Masks.mask`` 1 means *masked* (hidden
from the encoder, reconstructed by the decoder), 0 means visible.

Every sample masks exactly ``round(ratio * L)`` tokens, as in MAE's per-sample shuffle, so
batches are dense (no padding) and the encoder cost is fixed. Randomness comes only from the
generator passed in, so a seed reproduces the masks.
"""

from __future__ import annotations

import dataclasses
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
    # [B, Lp] long: the masked tokens the decoder reconstructs (decoder masking, VideoMAE V2);
    # None = all of them.
    ids_predict: Tensor | None = None

    @property
    def num_masked(self) -> int:
        return self.ids_masked.shape[1]

    def to(self, device: torch.device | str) -> "Masks":
        values = (getattr(self, f.name) for f in dataclasses.fields(self))  # astuple would deep-copy
        return Masks(*(None if t is None else t.to(device) for t in values))

    def with_decoder_masking(self, ids_predict: Tensor) -> "Masks":
        return dataclasses.replace(self, ids_predict=ids_predict)


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


def tube_masking(
    batch_size: int,
    grid: tuple[int, int, int],
    ratio: float,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Masks:
    """VideoMAE's tube masking: one random spatial mask per sample, shared by every time slice.

    ``grid`` is (T', H', W') tubes; each sample masks ``round(ratio * H' * W')`` spatial
    positions in all T' slices, so a masked region cannot be copied from a neighbouring frame.
    """
    t, h, w = grid
    per_slice = num_masked_tokens(h * w, ratio)
    noise = torch.rand(batch_size, h * w, generator=generator, device=generator.device)
    spatial = torch.argsort(noise, dim=1)  # [B, HW]: kept positions first, masked last
    # Every slice repeats the spatial order, offset by its first token index.
    offsets = torch.arange(t, device=spatial.device)[:, None] * (h * w)  # [T', 1]
    keep = (spatial[:, None, : h * w - per_slice] + offsets).flatten(1)
    masked = (spatial[:, None, h * w - per_slice :] + offsets).flatten(1)
    order = torch.cat([keep, masked], dim=1)
    return masks_from_order(order.to(device or generator.device), t * per_slice)


def running_cell_predict(masks: Masks, grid: tuple[int, int, int], ratio: float = 0.5, *, generator: torch.Generator) -> Tensor:
    """VideoMAE V2's decoder masking: which masked tokens the decoder reconstructs -> [B, Lp].

    A 2x2 spatial cell holding ``int(4 * ratio)`` drops and the rest keeps is tiled over every
    time slice; its pattern rotates by one position per slice, from a random phase per sample.
    The decoder keeps exactly ``Lm - round(ratio * Lm)`` masked tokens per sample: those the
    cell keeps first (in random order), topped up from the dropped ones only when the cell
    keeps too few (never with tube masking over a multiple of 4 slices, where it is exact).
    """
    t, h, w = grid
    drops = int(4 * ratio)
    if not 0 < drops < 4:
        raise ValueError(f"decoder mask ratio {ratio} leaves no running cell (needs 0.25 <= ratio < 1)")
    batch, num_masked = masks.ids_masked.shape
    queue = torch.tensor([1] * drops + [0] * (4 - drops))
    phase = torch.randint(0, 4, (batch,), generator=generator, device=generator.device).cpu()
    step = torch.arange(1, t + 1)  # VideoMAE V2 advances the cell before drawing each slice
    cells = queue[(torch.arange(4)[None, None, :] + phase[:, None, None] + step[None, :, None]) % 4]  # [B, T', 4]
    rows, cols = torch.arange(h) % 2, torch.arange(w) % 2
    dropped = cells[:, :, rows[:, None] * 2 + cols[None, :]].flatten(1)  # [B, T' * H' * W'], 1 = drop
    dropped = dropped.to(masks.ids_masked.device)
    score = torch.gather(dropped, 1, masks.ids_masked).float()  # 0 = the cell keeps it
    score = score + torch.rand(batch, num_masked, generator=generator, device=generator.device).to(score.device)
    keep = num_masked - int(round(ratio * num_masked))
    order = torch.argsort(score, dim=1)[:, :keep]
    return torch.gather(masks.ids_masked, 1, order)


def block_masking(centres: Tensor, ratio: float, *, generator: torch.Generator) -> Masks:
    """Point-MAE's block masking: per sample, a random token and its nearest neighbours (by
    ``centres`` [B, L, c], e.g. point-group centres) are masked, ``round(ratio * L)`` in all."""
    batch, length, _ = centres.shape
    num_masked = num_masked_tokens(length, ratio)
    seed = torch.randint(0, length, (batch,), generator=generator, device=generator.device).to(centres.device)
    rows = torch.arange(batch, device=centres.device)
    dist = (centres - centres[rows, seed][:, None]).pow(2).sum(-1)  # [B, L]
    nearest = torch.argsort(dist, dim=1, stable=True)  # the seed first
    order = torch.cat([nearest[:, num_masked:], nearest[:, :num_masked]], dim=1)
    return masks_from_order(order, num_masked)
