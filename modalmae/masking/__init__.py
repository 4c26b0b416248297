"""Masking strategies: functions of a batch's shape (or what they mask by), a ratio or budget,
and a ``torch.Generator`` -> ``Masks``.

- ``random_masking(batch_size, num_tokens, ratio)``: MAE, Audio-MAE, MAE-ST, Point-MAE;
- ``tube_masking(batch_size, grid, ratio)``: VideoMAE (one spatial mask for every time slice);
- ``running_cell_predict(masks, grid, ratio)``: VideoMAE V2's decoder masking;
- ``block_masking(centres, ratio)``: Point-MAE's block variant (a token and its neighbours);
- ``dirichlet_masking(present, tokens_per_sequence, num_visible, alpha)``: MultiMAE / BM-MAE's
  visible budget split across MRI sequences, or across the modalities of a joint model;
  ``completion_masks``: whole sequences from the others;
- ``concat_masks(parts)``: one modality's masks after another's, over their concatenated tokens
  (per-modality ratios in a joint model: CAV-MAE).

Convention, stated once for the whole package: in ``Masks.mask`` 1 means *masked* (hidden
from the encoder, reconstructed by the decoder), 0 means visible.

Every sample keeps and masks exactly as many tokens as every other (``round(ratio * L)``
masked, as in MAE's per-sample shuffle), so batches are dense (no padding) and the encoder cost
is fixed. The exception is a ratio per sample (``random_masking`` and ``tube_masking`` take a
[B] tensor of ratios; ``modalmae.masking.schedule``): the index lists are then padded to the
batch's longest and the padding flagged in ``Masks.keep_valid`` / ``Masks.masked_valid``.
Randomness comes only from the generator passed in, so a seed reproduces the masks.

More strategies, one module each: ``color`` (ColorMAE), ``motion`` (MGMAE), ``schedule``
(ratios over steps and per sample).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Masks:
    """Index views of one batch of masks (B samples, L tokens, Lk kept, Lm = L - Lk masked)."""

    ids_keep: Tensor  # [B, Lk] long: visible tokens, the encoder's input order
    ids_masked: Tensor  # [B, Lm] long: masked tokens
    mask: Tensor  # [B, L] float: 1 = masked, 0 = visible
    # [B, Lp] long: the masked tokens the decoder reconstructs (decoder masking, VideoMAE V2);
    # None = all of them.
    ids_predict: Tensor | None = None
    # Only when samples keep different counts (a ratio per sample): bool [B, Lk] / [B, Lm],
    # False for the padding slots past a sample's own count. A padding slot of ``ids_keep``
    # repeats one of the sample's masked tokens, one of ``ids_masked`` a visible token (whose
    # ``mask`` is 0, so it carries no loss); neither may be attended to.
    keep_valid: Tensor | None = None
    masked_valid: Tensor | None = None

    @property
    def padded(self) -> bool:
        return self.keep_valid is not None

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


def masks_from_order(order: Tensor, num_masked: int | Tensor) -> Masks:
    """Build ``Masks`` from a per-sample token order [B, L]: the last ``num_masked`` are masked
    (one count for all, or a [B] tensor of counts: the index lists are then padded)."""
    length = order.shape[1]
    if not isinstance(num_masked, Tensor):
        num_keep = length - num_masked
        ids_masked = order[:, num_keep:]
        mask = torch.zeros(order.shape, device=order.device).scatter_(1, ids_masked, 1.0)  # in token order
        return Masks(order[:, :num_keep], ids_masked, mask)
    counts = num_masked.to(order.device)  # [B]
    most, fewest = int(counts.max()), int(counts.min())
    slots = torch.arange(length, device=order.device)
    mask = torch.zeros(order.shape, device=order.device).scatter_(1, order, (slots[None] >= length - counts[:, None]).float())
    return Masks(
        ids_keep=order[:, : length - fewest], ids_masked=order[:, length - most :], mask=mask,
        keep_valid=slots[None, : length - fewest] < (length - counts[:, None]),
        masked_valid=slots[None, length - most :] >= (length - counts[:, None]),
    )


def per_sample_counts(ratio: Tensor, num_tokens: int) -> Tensor:
    if not ((ratio >= 0) & (ratio < 1)).all():
        raise ValueError(f"mask ratios must be in [0, 1), got {ratio.tolist()}")
    return torch.round(ratio * num_tokens).long()


def slices_order(spatial: Tensor, per_slice: Tensor) -> Tensor:
    """A token order (kept first, then masked; each in token order) from per-slice position
    orders ``spatial`` [B, T', HW] (kept positions first) and each sample's masked count per
    slice ``per_slice`` [B]: token ``s * HW + p`` is masked when ``p`` is among the last
    ``per_slice`` of slice s's order."""
    batch, slices, area = spatial.shape
    per_slice = per_slice.to(spatial.device)
    positions = torch.arange(area, device=spatial.device).expand_as(spatial)
    rank = torch.empty_like(spatial).scatter_(2, spatial, positions)  # [B, T', HW] rank of each position
    hidden = (rank >= (area - per_slice[:, None, None])).flatten(1)  # [B, T'HW]
    slot = torch.arange(slices * area, device=spatial.device)
    return torch.argsort(hidden.long() * (slices * area) + slot, dim=1)


def random_masking(
    batch_size: int,
    num_tokens: int,
    ratio: float | Tensor,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Masks:
    """MAE / Audio-MAE random masking: an independent uniform shuffle per sample (``ratio``: one
    for all, or [B], one per sample).

    The noise is drawn on the generator's device (torch requires it) and moved to ``device``.
    """
    num_masked = per_sample_counts(ratio, num_tokens) if isinstance(ratio, Tensor) else num_masked_tokens(num_tokens, ratio)
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device)
    order = torch.argsort(noise, dim=1)  # [B, L]
    return masks_from_order(order.to(device or generator.device), num_masked)


def tube_masking(
    batch_size: int,
    grid: tuple[int, int, int],
    ratio: float | Tensor,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Masks:
    """VideoMAE's tube masking: one random spatial mask per sample, shared by every time slice.

    ``grid`` is (T', H', W') tubes; each sample masks ``round(ratio * H' * W')`` spatial
    positions in all T' slices, so a masked region cannot be copied from a neighbouring frame
    (``ratio``: one for all, or [B], one per sample).
    """
    t, h, w = grid
    noise = torch.rand(batch_size, h * w, generator=generator, device=generator.device)
    spatial = torch.argsort(noise, dim=1)  # [B, HW]: kept positions first, masked last
    if isinstance(ratio, Tensor):
        per_slice = per_sample_counts(ratio, h * w)
        return masks_from_order(slices_order(spatial[:, None].expand(-1, t, -1), per_slice).to(device or generator.device), t * per_slice)
    per_slice = num_masked_tokens(h * w, ratio)
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
    if masks.padded:
        raise ValueError("decoder masking needs the same number of masked tokens in every sample (one mask ratio, not one per sample)")
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


def block_masking(centres: Tensor, ratio: float | Tensor, *, generator: torch.Generator) -> Masks:
    """Point-MAE's block masking: per sample, a random token and its nearest neighbours (by
    ``centres`` [B, L, c], e.g. point-group centres) are masked, ``round(ratio * L)`` in all
    (``ratio``: one for all, or [B], one per sample)."""
    batch, length, _ = centres.shape
    if isinstance(ratio, Tensor):
        num_masked = per_sample_counts(ratio, length).to(centres.device)
    else:
        num_masked = num_masked_tokens(length, ratio)
    seed = torch.randint(0, length, (batch,), generator=generator, device=generator.device).to(centres.device)
    rows = torch.arange(batch, device=centres.device)
    dist = (centres - centres[rows, seed][:, None]).pow(2).sum(-1)  # [B, L]
    nearest = torch.argsort(dist, dim=1, stable=True)  # the seed first
    # Kept tokens first (nearest beyond the block, in order), then the block: sort by a key.
    counts = torch.as_tensor(num_masked, device=centres.device).reshape(-1, 1)
    rank = torch.arange(length, device=centres.device).expand(batch, -1)
    order = torch.gather(nearest, 1, torch.argsort(torch.where(rank >= counts, rank - counts, length + rank), dim=1))
    return masks_from_order(order, num_masked)


def _split_budget(ratios: np.ndarray, total: int, capacity: np.ndarray | int) -> np.ndarray:
    """Integer counts summing exactly to ``total``, near ``ratios * total`` (largest
    remainders), none above its ``capacity``; the overflow goes to the sequences with room."""
    counts = np.minimum(np.floor(ratios * total).astype(np.int64), capacity)
    while counts.sum() < total:
        room = counts < capacity
        want = np.where(room, ratios * total - counts, -np.inf)  # largest shortfall first
        counts[int(np.argmax(want))] += 1
    return counts


def dirichlet_masking(
    present: Tensor, tokens_per_sequence: int | Sequence[int], num_visible: int, *, alpha: float = 1.0, generator: torch.Generator
) -> Masks:
    """MultiMAE / BM-MAE masking across sequences: per sample, ``num_visible`` visible tokens
    split among the sequences it has by a draw of Dirichlet(alpha) (alpha = 1: uniform over
    the splits; small alpha favours few sequences), each sequence's share a uniform random
    subset of its tokens. Tokens are sequence-major: sequence s holds the ``tokens_per_sequence``
    (one count for all, or one per sequence: the modalities of a joint model) after those of
    the sequences before it.

    ``present`` bool [B, S]. Absent sequences get no visible token and are not masked either:
    ``mask`` is 0 there (no loss), though their tokens sit among ``ids_masked`` so every sample
    has the same counts. Every sample keeps exactly ``num_visible`` tokens.
    """
    batch, num_sequences = present.shape
    sizes = np.broadcast_to(np.asarray(tokens_per_sequence, dtype=np.int64), (num_sequences,))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    length = int(starts[-1])
    have = present.cpu().numpy()
    if not have.any(axis=1).all():
        raise ValueError("a sample has no sequence present")
    if ((have * sizes).sum(axis=1) <= num_visible).any():
        fewest = int((have * sizes).sum(axis=1).min())
        raise ValueError(f"{num_visible} visible tokens leave nothing to reconstruct in a sample with {fewest} tokens present")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    rng = np.random.default_rng(seed)  # numpy has the Dirichlet draw; seeded from the generator
    orders, masks = [], []
    for b in range(batch):
        seqs = have[b].nonzero()[0].tolist()
        counts = _split_budget(rng.dirichlet([alpha] * len(seqs)), num_visible, sizes[seqs])
        keep, rest = [], []
        for s, count in zip(seqs, counts):
            perm = torch.from_numpy(rng.permutation(int(sizes[s])) + starts[s])
            keep.append(perm[:count])
            rest.append(perm[count:])
        absent = [torch.arange(starts[s], starts[s + 1]) for s in range(num_sequences) if s not in seqs]
        others = torch.cat(rest + absent)
        orders.append(torch.cat([*keep, others[torch.from_numpy(rng.permutation(len(others)))]]))
        mask = torch.ones(length)
        for tokens in absent:
            mask[tokens] = 0.0
        masks.append(mask)
    built = masks_from_order(torch.stack(orders).to(present.device), length - num_visible)
    mask = torch.stack(masks).to(present.device)
    mask[torch.arange(batch)[:, None], built.ids_keep] = 0.0
    return dataclasses.replace(built, mask=mask)


def concat_masks(parts: Sequence[Masks]) -> Masks:
    """The masks of several token sequences (the modalities of a joint model, each masked by
    its own method and ratio) as masks of their concatenation: sequence i's token j becomes
    token ``offset_i + j``. Visible tokens come sequence by sequence, so every sample has the
    same count of each sequence at the same columns of ``ids_keep``."""
    if any(p.padded for p in parts):
        raise ValueError("masks with a ratio per sample (padded) cannot be joined; use one ratio per modality")
    offsets = np.cumsum([0] + [p.mask.shape[1] for p in parts[:-1]]).tolist()

    def joined(field: str) -> Tensor | None:
        values = [getattr(p, field) for p in parts]
        if field == "ids_predict" and all(v is None for v in values):
            return None
        if field == "ids_predict":  # a part without decoder masking predicts all its masked tokens
            values = [p.ids_masked if v is None else v for p, v in zip(parts, values)]
        return torch.cat([v + off for v, off in zip(values, offsets)], dim=1)

    return Masks(
        ids_keep=joined("ids_keep"), ids_masked=joined("ids_masked"), mask=torch.cat([p.mask for p in parts], dim=1),
        ids_predict=joined("ids_predict"),
    )


def completion_masks(present: Tensor, targets: Tensor, tokens_per_sequence: int) -> Masks:
    """Masks for reconstructing whole sequences from the others: every token of a present,
    non-target sequence is visible, every token of a ``targets`` sequence is predicted.
    ``present`` and ``targets`` bool [B, S]; every sample must have the same number of visible
    and of target sequences."""
    visible = present & ~targets
    if (visible.sum(1) != visible[0].sum()).any() or (targets.sum(1) != targets[0].sum()).any() or not visible[0].any():
        raise ValueError("every sample needs the same number (> 0) of visible and of target sequences")
    token_seq = torch.arange(present.shape[1], device=present.device).repeat_interleave(tokens_per_sequence)  # [L]
    vis_tokens, tgt_tokens = visible[:, token_seq], targets[:, token_seq]  # [B, L]
    rank = torch.where(vis_tokens, 0, torch.where(tgt_tokens, 1, 2))  # visible, then targets, then the rest
    order = torch.argsort(rank * token_seq.numel() + torch.arange(token_seq.numel(), device=present.device), dim=1)
    built = masks_from_order(order, token_seq.numel() - int(vis_tokens[0].sum()))
    num_targets = int(tgt_tokens[0].sum())
    return dataclasses.replace(built, mask=tgt_tokens.float(), ids_predict=built.ids_masked[:, :num_targets])
