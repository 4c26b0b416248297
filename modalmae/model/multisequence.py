"""Several sequences (MRI t1 / t1ce / t2 / flair) in one token set: BM-MAE's loss and inference.

The tokens of sequence s are ``s * T ... s * T + T - 1`` (``VolumePatches``). BM-MAE and MultiMAE
weigh every sequence alike: the training loss is the mean, over the sequences that have masked
tokens in the batch, of each sequence's MSE over its masked tokens, so a sequence present in few
subjects is not drowned by the others, and a sequence with nothing masked in a batch (absent
everywhere, or wholly visible) contributes nothing instead of a division by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modalmae.masking import completion_masks
from modalmae.tokenizers.base import mse_per_token
from modalmae.model.mae import MAEOutput, MaskedAutoencoder


def per_sequence_sums(out: MAEOutput, num_sequences: int) -> Tensor:
    """[S, 2]: per sequence, the summed MSE of its masked (loss) tokens and how many there are."""
    per_token = out.dense(mse_per_token(out.pred_tokens, out.target_tokens) * out.weight)  # [B, L]
    sums = per_token.view(per_token.shape[0], num_sequences, -1).sum(dim=(0, 2))
    counts = out.loss_mask.view(out.loss_mask.shape[0], num_sequences, -1).sum(dim=(0, 2))
    return torch.stack([sums, counts], dim=1)


def sequence_balanced_loss(out: MAEOutput, num_sequences: int) -> tuple[Tensor, Tensor]:
    """(scalar loss, [S, 2] sums and counts): the mean of the per-sequence MSEs over the
    sequences with masked tokens; zero (with a gradient path) when there are none."""
    stats = per_sequence_sums(out, num_sequences)
    sums, counts = stats[:, 0], stats[:, 1]
    has = counts > 0
    per_sequence = sums / counts.clamp(min=1.0)
    loss = per_sequence[has].mean() if has.any() else out.pred_tokens.sum() * 0.0
    return loss, stats.detach()


def sequence_losses(out: MAEOutput, tokenizer) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of a multi-sequence model (``sequence_balanced_loss``) and each
    sequence's [sum, count] of masked-token MSE, named ``loss_<sequence>`` for the metrics."""
    loss, stats = sequence_balanced_loss(out, len(tokenizer.sequences))
    return loss, {f"loss_{name}": stats[i] for i, name in enumerate(tokenizer.sequences)}


@torch.no_grad()
def complete_sequences(model: MaskedAutoencoder, volume: Tensor, present: Tensor, targets: Tensor) -> Tensor:
    """Reconstruct the ``targets`` sequences [B, S] (bool) of ``volume`` [B, S, X, Y, Z] from the
    other ``present`` ones, all of whose tokens the encoder sees. Returns [B, S, X, Y, Z] with the
    predictions in the target sequences and zeros elsewhere. With norm-pix targets the patches
    come back per-patch normalized (their own mean and scale are unknown)."""
    tokenizer = model.tokenizer
    masks = completion_masks(present, targets, tokenizer.tokens_per_sequence)
    out = model({"volume": volume, "present": present}, masks.to(volume.device))
    return tokenizer.unpatchify(out.pred * out.loss_mask[..., None])
