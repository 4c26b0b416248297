"""The tokenizer contract: what every tokenizer gives the masked autoencoder, and nothing more.

A tokenizer turns a batch of one modality into tokens. It is an ``nn.Module`` built from plain
keyword arguments and usable on its own (``SpectrogramPatches(embed_dim=768)(fbank)``); it
knows nothing of the transformer, the data loaders or the shards. ``Tokenizer`` spells the
contract out as a ``Protocol``; ``TokenizerBase`` gives the defaults most tokenizers share
(MSE loss, MAE's per-patch target normalization, positions added once, no token grid).

Positions are returned one way by every tokenizer: ``Tokens.positions`` [B or 1, L, D], never
added into ``Tokens.embeddings``. The encoder adds them to its input tokens (MAE, VideoMAE,
Audio-MAE), or before every block when ``pos_every_block`` is set (Point-MAE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Tokenizer(Protocol):
    """What the masked autoencoder, the pictures and the checkpoints rely on."""

    embed_dim: int  # D
    patch_dim: int  # P: values per target patch
    num_tokens: int  # L
    grid: tuple[int, ...] | None  # the token grid (enables local attention), or None
    pos_every_block: bool  # positions added before every block, encoder and decoder

    def __call__(self, x: Any) -> Tokens: ...

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
        """A module mapping ``Tokens`` to decoder-width positions [B or 1, L, dim]."""

    def config(self) -> dict:
        """The keyword arguments that rebuild this tokenizer (saved with checkpoints)."""


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
