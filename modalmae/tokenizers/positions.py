"""Fixed sin-cos position embeddings: MAE / Audio-MAE's grid tables and VideoMAE's 1-D table.

Follows MAE's ``get_2d_sincos_pos_embed``: each grid axis gets ``dim / n_axes`` channels of
``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 1 / 10000^(i / (d/2))``, and the axes
are concatenated last axis first (for a 2-D grid ``(rows, cols)`` the first half of the channels
encodes the column, the second half the row). Keeping that order lets published MAE-family
weights, whose decoders learned against these tables, be loaded unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """[N] positions -> [N, dim] (dim even): first half sines, second half cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def grid_coordinates(grid: tuple[int, ...]) -> Tensor:
    """[L, n_axes] integer coordinates of a row-major (C order) flattened grid."""
    axes = [torch.arange(n) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def sincos_grid(grid: tuple[int, ...], dim: int) -> Tensor:
    """[prod(grid), dim] fixed embedding of a row-major flattened grid of any rank."""
    n = len(grid)
    if dim % (2 * n):
        raise ValueError(f"dim {dim} must be divisible by {2 * n} for a {n}-D sin-cos grid")
    coords = grid_coordinates(grid)  # [L, n]
    per_axis = [sincos_1d(coords[:, axis], dim // n) for axis in reversed(range(n))]
    return torch.cat(per_axis, dim=1)


class FixedPositions(nn.Module):
    """A non-trainable position table, returned broadcastable over the batch: [1, L, dim].

    Saved with the model (a persistent buffer) so a checkpoint carries the exact table it was
    trained with.
    """

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table[None].clone())  # [1, L, dim]

    def forward(self, tokens=None) -> Tensor:  # noqa: ARG002 - grid positions ignore the sample
        return self.table


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """[N, dim] 1-D table of the Transformer paper as VideoMAE uses it over flattened tubes:
    channel 2i is sin(p / 10000^(2i/dim)), channel 2i+1 the matching cosine (interleaved)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").double() / dim
    angles = position / 10000**exponent  # [N, dim]
    table = torch.empty_like(angles)
    table[:, 0::2], table[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return table.float()
