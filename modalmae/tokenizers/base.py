"""The tokenizer contract: what every tokenizer gives the masked autoencoder, and nothing more.

A tokenizer turns a batch of one modality into tokens. It is an ``nn.Module`` built from plain
keyword arguments and usable on its own (``SpectrogramPatches(embed_dim=768)(fbank)``); it
knows nothing of the transformer, the data loaders or the shards. ``Tokenizer`` spells the
contract out as a ``Protocol``; ``TokenizerBase`` gives the defaults most tokenizers share
(MSE loss, MAE's per-patch target normalization, positions added once, no token grid).

Positions are returned one way by every tokenizer: ``Tokens.positions`` [B or 1, L, D], never
added into ``Tokens.embeddings``. The encoder adds them to its input tokens (MAE, VideoMAE,
Audio-MAE), or before every block when ``pos_every_block`` is set (Point-MAE).

A masked autoencoder uses only part of the tokens: the embeddings of the visible ones (10 % of
a clip for VideoMAE) and the targets of those it predicts. ``tokens_at`` gives just those, as
``MaskedTokens``. Its default tokenizes everything and gathers; the grid tokenizers override it
to cut out and embed only the patches asked for (their patch embedding is a linear map of each
patch on its own, so the tokens are the same, to float rounding where a convolution becomes a
matrix product), which spares the embedding of the masked tokens and the targets of the
visible ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The per-channel mean and std RGB inputs are normalized with (ImageNet's), as MAE and VideoMAE do.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Tokens:
    embeddings: Tensor  # [B, L, D] token embeddings, without positions
    positions: Tensor  # [B or 1, L, D] position embeddings of the same tokens
    targets: Tensor  # [B, L, P] raw patches the decoder reconstructs
    coords: Tensor | None = None  # [B, L, c] per-sample coordinates (point-group centres), else None


@dataclass
class MaskedTokens:
    """The part of ``Tokens`` a masked autoencoder uses (``Tokenizer.tokens_at``): embeddings of
    the visible tokens, targets of the predicted ones, and the positions and coordinates of every
    token (the decoder places its queries with them; they are a table or cheap to compute)."""

    embeddings: Tensor  # [B, Lk, D] embeddings of the tokens ids_keep, without positions
    positions: Tensor  # [B or 1, L, D] position embeddings of every token
    targets: Tensor | None  # [B, Lp, P] raw patches of the tokens ids_predict; None when not asked
    coords: Tensor | None = None  # [B, L, c] every token's coordinates (point-group centres), else None


@runtime_checkable
class Tokenizer(Protocol):
    """What the masked autoencoder, the pictures and the checkpoints rely on."""

    embed_dim: int  # D
    patch_dim: int  # P: values per target patch
    num_tokens: int  # L
    grid: tuple[int, ...] | None  # the token grid (enables local attention), or None
    pos_every_block: bool  # positions added before every block, encoder and decoder

    def __call__(self, x: Any) -> Tokens: ...

    def tokens_at(self, x: Any, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """What ``self(x)`` gives, gathered: embeddings at ``ids_keep`` [B, Lk], targets at
        ``ids_predict`` [B, Lp] (None: no targets), positions and coordinates of every token.
        Computes only what it returns where the tokens are independent of each other."""

    def patchify(self, x: Any) -> Tensor:
        """Inputs -> targets [B, L, P]."""

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:
        """[B, L, P] -> input space; ``coords`` are ``Tokens.coords`` where patches are relative
        to them (point groups), unused otherwise."""

    def target_stats(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) broadcastable to [B, L, P]: the method's norm-pix target normalization."""

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """[B, L, P] twice -> [B, L] per-token reconstruction loss."""

    def decoder_positions(self, dim: int) -> nn.Module:
        """A module mapping ``Tokens`` or ``MaskedTokens`` (it may read their ``coords``) to
        decoder-width positions [B or 1, L, dim] of every token."""

    def config(self) -> dict:
        """The keyword arguments that rebuild this tokenizer (saved with checkpoints)."""


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x [B, L, C], ids [B, K] -> [B, K, C]."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def patches_at(blocks: Tensor, grid: tuple[int, ...], ids: Tensor) -> Tensor:
    """The patches at ``ids`` [B, K] (row-major indices into ``grid``) of ``blocks``
    [B, *grid, *patch], a view of the input cut into patches (any strides) -> [B, K, *patch].
    Only the K patches are copied, not the whole input."""
    batch = torch.arange(ids.shape[0], device=ids.device)[:, None]
    return blocks[(batch, *torch.unravel_index(ids, grid))]


def conv_embed_at(proj: nn.Module, blocks: Tensor, grid: tuple[int, ...], ids: Tensor) -> Tensor:
    """The patch convolution ``proj`` (kernel = stride = one patch) at ``ids`` only: applied as
    the linear map it is to those patches of ``blocks`` [B, *grid, C, *kernel], a view laid out
    like its kernel -> [B, K, D]. The same weights; equal to the convolution to float rounding."""
    return F.linear(patches_at(blocks, grid, ids).flatten(2), proj.weight.flatten(1), proj.bias)


def patch_stats(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """MAE's per-patch statistics of [..., P]: mean and sqrt(unbiased variance + eps), [..., 1]."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps) ** 0.5


def mse_per_token(pred: Tensor, target: Tensor) -> Tensor:
    """[B, L, P] twice -> [B, L]: mean squared error over each token's values (MAE's loss)."""
    return (pred.float() - target.float()).pow(2).mean(dim=-1)


class TokenizerBase(nn.Module):
    """Defaults of the contract: no token grid, positions added once, MSE per token, MAE's
    per-patch target normalization. Subclasses set the sizes and override what differs."""

    embed_dim: int
    patch_dim: int
    num_tokens: int
    grid: tuple[int, ...] | None = None
    pos_every_block = False

    def target_stats(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        return patch_stats(patches)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return mse_per_token(pred, target)

    def tokens_at(self, x: Any, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """Tokenizes everything and gathers: right for any tokenizer, and the only exact way
        where a token depends on the others (point groups: their embedding's BatchNorm sees the
        whole batch of groups)."""
        tokens = self(x)
        return MaskedTokens(
            embeddings=gather_tokens(tokens.embeddings, ids_keep),
            positions=tokens.positions,
            targets=None if ids_predict is None else gather_tokens(tokens.targets, ids_predict),
            coords=tokens.coords,
        )
