"""Pre-norm ViT blocks on ``scaled_dot_product_attention``, plus local-window attention masks.

Blocks follow the ViT / MAE layout (LayerNorm eps 1e-6, qkv with bias, MLP ratio 4, GELU):
``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``. Nothing here knows about modalities.

Local attention (Audio-MAE's decoder) is expressed as a boolean attention mask built from each
token's grid coordinates, not by reshaping into windows: it then works on any subset of tokens
in any order (visible + mask tokens, or a decoder-masked subset), and reproduces Swin's shifted
windows, where a shift of ``s`` groups positions ``[0, s), [s, s + w), ...`` along that axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, d]
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm (``final_norm=False``: none, as in encoders
    fine-tuned with mean pooling; ``final_eps``: its epsilon when not ``eps``); ``attn_masks``
    gives one mask per block (or None)."""

    def __init__(
        self, dim: int, *, depth: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6, final_norm: bool = True,
        final_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, eps=eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps if final_eps is None else final_eps) if final_norm else nn.Identity()

    def forward(self, x: Tensor, attn_masks: list[Tensor | None] | None = None, pos: Tensor | None = None) -> Tensor:
        """``pos``, when given, is added before every block (Point-MAE) rather than once."""
        for i, block in enumerate(self.blocks):
            if pos is not None:
                x = x + pos
            x = block(x, None if attn_masks is None else attn_masks[i])
        return self.norm(x)


def window_attention_mask(coords: Tensor, *, window: tuple[int, ...], shift: tuple[int, ...]) -> Tensor:
    """Boolean mask [B, 1, N, N] (True = may attend) letting tokens attend within their window.

    ``coords`` [B, N, n_axes] are integer grid coordinates; a coordinate of -1 on every axis
    marks a token outside the grid (a CLS token), which attends only to itself.
    """
    win = torch.tensor(window, device=coords.device)
    off = torch.tensor([(w - s) % w for w, s in zip(window, shift)], device=coords.device)
    cell = torch.div(coords + off, win, rounding_mode="floor")  # [B, N, n_axes] window index
    outside = (coords < 0).all(dim=-1)  # [B, N]
    same = (cell[:, :, None, :] == cell[:, None, :, :]).all(dim=-1)  # [B, N, N]
    same &= ~(outside[:, :, None] ^ outside[:, None, :])
    eye = torch.eye(coords.shape[1], dtype=torch.bool, device=coords.device)
    same = torch.where(outside[:, :, None] | outside[:, None, :], eye, same)
    return same[:, None]


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
