"""VideoMAE's tokenizer: spacetime tubes of a clip (Tong et al. 2022; Wang et al. 2023, V2).

A [B, C, T, H, W] clip, normalized with ImageNet's mean and std, is cut into tubes of
``tubelet_size`` frames x ``patch_size`` x ``patch_size`` pixels (2 x 16 x 16: 16 x 224 x 224
gives 8 x 14 x 14 = 1568 tokens), embedded by a 3-D convolution with the tube as kernel and
stride, plus VideoMAE's fixed 1-D sinusoid table over the flattened (t, h, w) order. The
convolution is a linear map of each tube on its own, so ``tokens_at`` embeds only the tubes
asked for with the same weights, as a linear layer on the tubes flattened in its kernel's
(c, t, h, w) order.

Targets are the tubes in pixel space (the normalization undone), flattened as
``(t, h, w, c)`` per tube like VideoMAE, and normalized per tube *and channel* when
``norm_pix_loss`` is on: ``(x - mean) / (std_unbiased + 1e-6)`` (VideoMAE's formula, which
differs from MAE's per-patch ``sqrt(var + 1e-6)``).
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD, MaskedTokens, TokenizerBase, Tokens, conv_embed_at, patches_at
from modalmae.tokenizers.positions import FixedPositions, sinusoid_table


class VideoTubes(TokenizerBase):
    def __init__(
        self,
        *,
        embed_dim: int = 768,
        num_frames: int = 16,
        image_size: int | tuple[int, int] = 224,
        tubelet_size: int = 2,
        patch_size: int = 16,
        in_channels: int = 3,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if num_frames % tubelet_size or height % patch_size or width % patch_size:
            raise ValueError(
                f"clip {num_frames}x{height}x{width} is not divisible into {tubelet_size}x{patch_size}x{patch_size} tubes"
            )
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values, one per channel")
        self.embed_dim, self.num_frames, self.image_size = embed_dim, num_frames, (height, width)
        self.tubelet_size, self.patch_size, self.in_channels = tubelet_size, patch_size, in_channels
        self.mean, self.std = tuple(mean), tuple(std)
        self.grid = (num_frames // tubelet_size, height // patch_size, width // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_dim = tubelet_size * patch_size * patch_size * in_channels
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size), stride=(tubelet_size, patch_size, patch_size))
        self.positions = FixedPositions(sinusoid_table(self.num_tokens, embed_dim))
        self.register_buffer("_mean", Tensor(self.mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("_std", Tensor(self.std).view(1, -1, 1, 1, 1), persistent=False)
        # MAE-family init: the tube projection as a linear layer (xavier on the flat view).
        nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))
        nn.init.zeros_(self.proj.bias)

    def config(self) -> dict:
        return {
            "embed_dim": self.embed_dim, "num_frames": self.num_frames, "image_size": list(self.image_size),
            "tubelet_size": self.tubelet_size, "patch_size": self.patch_size, "in_channels": self.in_channels,
            "mean": list(self.mean), "std": list(self.std),
        }

    def _check(self, video: Tensor) -> None:
        expected = (self.in_channels, self.num_frames, *self.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected clips [B, C, T, H, W] = [B, {', '.join(map(str, expected))}], got {list(video.shape)}")

    def patchify(self, video: Tensor) -> Tensor:
        """Normalized [B, C, T, H, W] -> pixel-space tubes [B, L, ts * p * p * C]."""
        self._check(video)
        pixels = video * self._std + self._mean
        ts, p = self.tubelet_size, self.patch_size
        return rearrange(pixels, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)", p0=ts, p1=p, p2=p)

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:  # noqa: ARG002 - grid patches need no coordinates
        """Pixel-space tubes [B, L, P] -> pixel-space clips [B, C, T, H, W] (values in [0, 1])."""
        t, h, w = self.grid
        ts, p = self.tubelet_size, self.patch_size
        return rearrange(patches, "b (t h w) (p0 p1 p2 c) -> b c (t p0) (h p1) (w p2)", t=t, h=h, w=w, p0=ts, p1=p, p2=p)

    def target_stats(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """Per-tube, per-channel mean and ``std + 1e-6``, both broadcast to [B, L, P]."""
        per_channel = rearrange(patches, "b l (q c) -> b l q c", c=self.in_channels)
        mean = per_channel.mean(dim=-2, keepdim=True).expand_as(per_channel)
        std = (per_channel.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6).expand_as(per_channel)
        return rearrange(mean, "b l q c -> b l (q c)"), rearrange(std, "b l q c -> b l (q c)")

    def forward(self, video: Tensor) -> Tokens:
        self._check(video)
        embeddings = rearrange(self.proj(video), "b d t h w -> b (t h w) d")
        return Tokens(embeddings=embeddings, positions=self.positions(), targets=self.patchify(video))

    def tokens_at(self, video: Tensor, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """``self(video)`` at the given tubes, computing only those (see ``Tokenizer.tokens_at``)."""
        self._check(video)
        ts, p = self.tubelet_size, self.patch_size
        # A view [B, t, h, w, C, ts, p, p]: each tube laid out like the convolution's kernel.
        tubes = rearrange(video, "b c (t p0) (h p1) (w p2) -> b t h w c p0 p1 p2", p0=ts, p1=p, p2=p)
        embeddings = conv_embed_at(self.proj, tubes, self.grid, ids_keep)
        targets = None
        if ids_predict is not None:
            pixels = patches_at(tubes, self.grid, ids_predict) * self._std.view(-1, 1, 1, 1) + self._mean.view(-1, 1, 1, 1)
            targets = rearrange(pixels, "b l c p0 p1 p2 -> b l (p0 p1 p2 c)")  # as ``patchify`` orders them
        return MaskedTokens(embeddings=embeddings, positions=self.positions(), targets=targets)

    def decoder_positions(self, dim: int) -> nn.Module:
        return FixedPositions(sinusoid_table(self.num_tokens, dim))
