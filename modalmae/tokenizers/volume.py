"""BM-MAE's tokenizer: 3-D patches of every MRI sequence, one token set per sequence.

A volume [B, S, X, Y, Z] (S sequences, e.g. t1, t1ce, t2, flair at 128^3, 1 mm) is cut into
non-overlapping p^3 patches (16^3: 8 x 8 x 8 = 512 per sequence). Each sequence has its own
patch embedding (a linear map of the flattened patch, the same as a p-stride Conv3d with one
input channel), plus a learned embedding of the sequence and fixed 3-D sin-cos positions shared
by all sequences. Tokens are concatenated sequence by sequence: L = S x 512, token
``s * per_sequence + i`` is patch i of sequence s (patches in (x, y, z) row-major order).
Inputs may be the tensor or ``{"volume": [B, S, X, Y, Z], "present": bool [B, S]}``; which
sequences are present only matters to the masking and the loss. ``tokens_at`` cuts out and
embeds only the patches asked for, each with its own sequence's embedding.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import MaskedTokens, TokenizerBase, Tokens, patches_at
from modalmae.tokenizers.positions import sincos_grid


def volume_of(x: Tensor | dict) -> Tensor:
    return x["volume"] if isinstance(x, dict) else x


class SequencePositions(nn.Module):
    """Fixed 3-D sin-cos grid positions (repeated for every sequence) + a learned embedding per
    sequence: Tokens -> [1, S * G, dim]."""

    def __init__(self, grid: tuple[int, int, int], num_sequences: int, dim: int) -> None:
        super().__init__()
        usable = dim - dim % 6  # 3 axes x (sin, cos); any remaining channels carry no position
        table = torch.nn.functional.pad(sincos_grid(grid, usable), (0, dim - usable))
        self.register_buffer("table", table[None])  # [1, G, dim]
        self.sequence = nn.Parameter(torch.zeros(num_sequences, dim))
        nn.init.normal_(self.sequence, std=0.02)

    def forward(self, tokens: Tokens | None = None) -> Tensor:  # noqa: ARG002 - positions do not depend on the sample
        return (self.table[:, None] + self.sequence[None, :, None]).reshape(1, -1, self.table.shape[-1])


class VolumePatches(TokenizerBase):
    def __init__(
        self,
        *,
        embed_dim: int = 768,
        sequences: list[str] | tuple[str, ...] = ("t1", "t1ce", "t2", "flair"),
        volume_size: int | tuple[int, int, int] = 128,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        size = tuple(volume_size) if isinstance(volume_size, (tuple, list)) else (volume_size,) * 3
        if any(n % patch_size for n in size):
            raise ValueError(f"volume {size} is not divisible into {patch_size}^3 patches")
        self.embed_dim, self.sequences, self.volume_size, self.patch_size = embed_dim, list(sequences), size, patch_size
        # self.grid stays None: tokens of several sequences have no single grid for local attention
        self.sequence_grid = tuple(n // patch_size for n in size)
        self.tokens_per_sequence = self.sequence_grid[0] * self.sequence_grid[1] * self.sequence_grid[2]
        self.num_tokens = len(self.sequences) * self.tokens_per_sequence
        self.patch_dim = patch_size**3
        self.proj = nn.ModuleList(nn.Linear(self.patch_dim, embed_dim) for _ in self.sequences)
        for proj in self.proj:  # MAE-family init: the patch projection as a linear layer
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        self.positions = SequencePositions(self.sequence_grid, len(self.sequences), embed_dim)

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "sequences": self.sequences, "volume_size": list(self.volume_size), "patch_size": self.patch_size}

    def _checked(self, x: Tensor | dict) -> Tensor:
        """The volume [B, S, X, Y, Z] of ``x``, or ValueError."""
        volume = volume_of(x)
        if volume.shape[1:] != (len(self.sequences), *self.volume_size):
            raise ValueError(f"expected volumes [B, {len(self.sequences)}, {', '.join(map(str, self.volume_size))}], got {list(volume.shape)}")
        return volume

    def patchify(self, x: Tensor | dict) -> Tensor:
        """[B, S, X, Y, Z] -> [B, S * G, p^3]."""
        p = self.patch_size
        return rearrange(self._checked(x), "b s (x p) (y q) (z r) -> b (s x y z) (p q r)", p=p, q=p, r=p)

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:  # noqa: ARG002 - grid patches need no coordinates
        """[B, S * G, p^3] -> [B, S, X, Y, Z]."""
        gx, gy, gz = self.sequence_grid
        p = self.patch_size
        return rearrange(patches, "b (s x y z) (p q r) -> b s (x p) (y q) (z r)", x=gx, y=gy, z=gz, p=p, q=p, r=p)

    def forward(self, x: Tensor | dict) -> Tokens:
        patches = self.patchify(x)  # [B, L, P]
        per_sequence = patches.split(self.tokens_per_sequence, dim=1)
        embeddings = torch.cat([proj(chunk) for proj, chunk in zip(self.proj, per_sequence)], dim=1)  # [B, L, D]
        return Tokens(embeddings=embeddings, positions=self.positions(), targets=patches)

    def tokens_at(self, x: Tensor | dict, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """``self(x)`` at the given patches, computing only those (see ``Tokenizer.tokens_at``).
        Each sequence's projection runs on the visible patches of that sequence, whatever
        their number in each sample (a Dirichlet split gives every sample its own)."""
        p = self.patch_size
        patches = rearrange(self._checked(x), "b s (x p) (y q) (z r) -> b s x y z p q r", p=p, q=p, r=p)  # a view
        grid = (len(self.sequences), *self.sequence_grid)
        visible = patches_at(patches, grid, ids_keep).flatten(0, 1).flatten(1)  # [B * Lk, P]
        # Group the visible patches by sequence, embed each group, and put them back in order.
        sequence = (ids_keep // self.tokens_per_sequence).flatten()  # [B * Lk]
        order = sequence.argsort(stable=True)
        groups = visible[order].split(torch.bincount(sequence, minlength=len(self.proj)).tolist())
        embedded = torch.cat([proj(group) for proj, group in zip(self.proj, groups)])  # [B * Lk, D] in ``order``
        embeddings = embedded[order.argsort()].view(*ids_keep.shape, -1)
        targets = None if ids_predict is None else patches_at(patches, grid, ids_predict).flatten(2)
        return MaskedTokens(embeddings=embeddings, positions=self.positions(), targets=targets)

    def decoder_positions(self, dim: int) -> nn.Module:
        return SequencePositions(self.sequence_grid, len(self.sequences), dim)
