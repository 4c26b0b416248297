"""MAE's tokenizer: non-overlapping square patches of an image (He et al. 2022).

A [B, C, H, W] image, normalized with ImageNet's mean and std (``modalmae.data.image``), is cut
into (H / p) x (W / p) patches (224 x 224 in 16 x 16 patches: 14 x 14 = 196 tokens), row-major,
each embedded by a p x p stride-p convolution (MAE's ``PatchEmbed``; initialised xavier-uniform
on its flattened view, as MAE does), with MAE's fixed 2-D sin-cos positions. ``tokens_at``
embeds only the patches asked for with the same weights, the convolution applied as the linear
map it is on each patch flattened in its kernel's (channel, row, column) order.

Targets are the patches of the normalized input, flattened per patch as (row, column, channel)
like MAE's ``patchify`` (``nchpwq -> nhwpqc``); norm-pix normalizes each by its own mean and
``sqrt(var + 1e-6)`` (the default ``target_stats``). ``pixels`` undoes the input normalization
for pictures.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD, MaskedTokens, TokenizerBase, Tokens, conv_embed_at, patches_at
from modalmae.tokenizers.positions import FixedPositions, sincos_grid


class ImagePatches(TokenizerBase):
    def __init__(
        self,
        *,
        embed_dim: int = 768,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"image {height}x{width} is not divisible into {patch_size}x{patch_size} patches")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values, one per channel")
        self.embed_dim, self.image_size, self.patch_size, self.in_channels = embed_dim, (height, width), patch_size, in_channels
        self.mean, self.std = tuple(mean), tuple(std)
        self.grid = (height // patch_size, width // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.patch_dim = patch_size * patch_size * in_channels
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.positions = FixedPositions(sincos_grid(self.grid, embed_dim))
        self.register_buffer("_mean", Tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", Tensor(self.std).view(1, -1, 1, 1), persistent=False)
        # MAE initialises the patch projection like a linear layer (xavier on the flat view).
        nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))
        nn.init.zeros_(self.proj.bias)

    def config(self) -> dict:
        return {
            "embed_dim": self.embed_dim, "image_size": list(self.image_size), "patch_size": self.patch_size,
            "in_channels": self.in_channels, "mean": list(self.mean), "std": list(self.std),
        }

    def _check(self, images: Tensor) -> None:
        expected = (self.in_channels, *self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected images [B, C, H, W] = [B, {', '.join(map(str, expected))}], got {list(images.shape)}")

    def patchify(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, L, p * p * C], each patch flattened as (row, column, channel)."""
        self._check(images)
        p = self.patch_size
        return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, patches: Tensor, coords: Tensor | None = None) -> Tensor:  # noqa: ARG002 - grid patches need no coordinates
        """[B, L, p * p * C] -> [B, C, H, W]."""
        h, w = self.grid
        p = self.patch_size
        return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p)

    def pixels(self, images: Tensor) -> Tensor:
        """Normalized images [B, C, H, W] -> pixel values (in [0, 1] for real pictures)."""
        return images * self._std + self._mean

    def forward(self, images: Tensor) -> Tokens:
        self._check(images)
        embeddings = rearrange(self.proj(images), "b d h w -> b (h w) d")  # [B, L, D]
        return Tokens(embeddings=embeddings, positions=self.positions(), targets=self.patchify(images))

    def tokens_at(self, images: Tensor, ids_keep: Tensor, ids_predict: Tensor | None = None) -> MaskedTokens:
        """``self(images)`` at the given patches, computing only those (see ``Tokenizer.tokens_at``)."""
        self._check(images)
        p = self.patch_size
        # A view [B, h, w, C, p, p]: each patch laid out like the convolution's kernel.
        patches = rearrange(images, "b c (h p) (w q) -> b h w c p q", p=p, q=p)
        embeddings = conv_embed_at(self.proj, patches, self.grid, ids_keep)
        targets = None
        if ids_predict is not None:
            targets = rearrange(patches_at(patches, self.grid, ids_predict), "b l c p q -> b l (p q c)")  # as ``patchify``
        return MaskedTokens(embeddings=embeddings, positions=self.positions(), targets=targets)

    def decoder_positions(self, dim: int) -> nn.Module:
        return FixedPositions(sincos_grid(self.grid, dim))
