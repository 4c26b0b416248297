"""Audio-MAE's tokenizer: non-overlapping 16x16 patches of a log-mel spectrogram.

A [B, T, F] filterbank (T = 1024 frames of 10 ms, F = 128 mel bins, see ``fbank.AudioFrontend``)
is cut into (T / 16) x (F / 16) = 64 x 8 = 512 patches, time-major as in Audio-MAE's
``patchify`` (``nchpwq -> nhwpqc``), each projected to ``embed_dim`` by a linear layer (the same
map as Audio-MAE's 16x16 stride-16 convolution, flattened), with fixed 2-D sin-cos positions.
Targets are the raw patches; norm-pix normalizes each by its own mean and ``sqrt(var + 1e-6)``.
``tokens_at`` cuts out and embeds only the patches asked for.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import MaskedTokens, TokenizerBase, Tokens, patches_at
from modalmae.tokenizers.positions import FixedPositions, sincos_grid


class SpectrogramPatches(TokenizerBase):
    def __init__(
        self,
        *,
        embed_dim: int = 768,
        num_frames: int = 1024,
        num_mel_bins: int = 128,
        patch_size: tuple[int, int] | int = 16,
    ) -> None:
        super().__init__()
        pt, pf = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if num_frames % pt or num_mel_bins % pf:
            raise ValueError(
                f"spectrogram {num_frames}x{num_mel_bins} is not divisible into {pt}x{pf} patches"
            )
        self.embed_dim = embed_dim
        self.num_frames, self.num_mel_bins = num_frames, num_mel_bins
        self.patch_size = (pt, pf)
        self.grid = (num_frames // pt, num_mel_bins // pf)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.patch_dim = pt * pf
        self.proj = nn.Linear(self.patch_dim, embed_dim)
        self.positions = FixedPositions(sincos_grid(self.grid, embed_dim))
        # MAE initialises the patch projection like a linear layer (xavier on the flat view).
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def config(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "num_frames": self.num_frames,
            "num_mel_bins": self.num_mel_bins,
            "patch_size": list(self.patch_size),
        }

    def _checked(self, spec: Tensor) -> Tensor:
        """[B, T, F] (or [B, 1, T, F]) -> [B, T, F], or ValueError."""
        if spec.ndim == 4:
            spec = spec[:, 0]
        if spec.shape[1:] != (self.num_frames, self.num_mel_bins):
            raise ValueError(
                f"expected spectrograms of {self.num_frames} frames x {self.num_mel_bins} bins, "
                f"got {tuple(spec.shape[1:])}"
            )
        return spec

    def patchify(self, spec: Tensor) -> Tensor:
        """[B, T, F] (or [B, 1, T, F]) -> [B, L, pt * pf]."""
        pt, pf = self.patch_size
        return rearrange(self._checked(spec), "b (h p) (w q) -> b (h w) (p q)", p=pt, q=pf)

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:  # noqa: ARG002 - grid patches need no coordinates
        """[B, L, pt * pf] -> [B, T, F]."""
        pt, pf = self.patch_size
        h, w = self.grid
        return rearrange(patches, "b (h w) (p q) -> b (h p) (w q)", h=h, w=w, p=pt, q=pf)

    def forward(self, spec: Tensor) -> Tokens:
        patches = self.patchify(spec)  # [B, L, P]
        return Tokens(embeddings=self.proj(patches), positions=self.positions(), targets=patches)

    def tokens_at(self, spec: Tensor, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """``self(spec)`` at the given patches, computing only those (see ``Tokenizer.tokens_at``)."""
        pt, pf = self.patch_size
        patches = rearrange(self._checked(spec), "b (h p) (w q) -> b h w p q", p=pt, q=pf)  # a view
        embeddings = self.proj(patches_at(patches, self.grid, ids_keep).flatten(2))
        targets = None if ids_predict is None else patches_at(patches, self.grid, ids_predict).flatten(2)
        return MaskedTokens(embeddings=embeddings, positions=self.positions(), targets=targets)

    def decoder_positions(self, dim: int) -> nn.Module:
        return FixedPositions(sincos_grid(self.grid, dim))

