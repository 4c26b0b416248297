import math
import re

import numpy as np
import pytest
import torch

from modalmae.tokenizers.positions import (
    grid_coordinates,
    sincos_1d,
    sincos_grid,
    sinusoid_table,
)


def mae_2d_reference(embed_dim, rows, cols):
    """MAE's published 2-D table written out from its formula with numpy, independently."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    # MAE: grid = meshgrid(grid_w, grid_h); emb_h uses grid[0] (the column index), emb_w grid[1]
    return np.concatenate([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], axis=1)


def test_2d_table_matches_mae_convention():
    ours = sincos_grid((64, 8), 192).numpy()
    ref = mae_2d_reference(192, 64, 8)
    assert ours.shape == (512, 192)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_known_values():
    table = sincos_grid((4, 4), 8)
    # token (0, 0): sines 0, cosines 1
    assert torch.allclose(table[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    # token (row 0, col 1): first half encodes the column -> sin(1), sin(1/100)
    assert math.isclose(table[1, 0].item(), math.sin(1.0), rel_tol=1e-6)
    assert math.isclose(table[1, 1].item(), math.sin(0.01), rel_tol=1e-5)


def test_grid_coordinates_row_major():
    coords = grid_coordinates((2, 3))
    assert coords.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert sincos_grid((2, 3, 4), 12).shape == (24, 12)


def test_sin_cos_tables_refuse_widths_they_cannot_split_evenly():
    with pytest.raises(ValueError, match="^sin-cos embedding needs an even dim, got 7$"):
        sincos_1d(torch.arange(4), 7)
    for grid, dim, need in (((2, 2), 10, 4), ((2, 2, 2), 16, 6)):
        with pytest.raises(ValueError, match="^" + re.escape(f"dim {dim} must be divisible by {need} for a {len(grid)}-D sin-cos grid") + "$"):
            sincos_grid(grid, dim)


@pytest.mark.parametrize("dim", [6, 5])  # an odd width too: the last channel a sine
def test_videomaes_table_interleaves_sines_and_cosines(dim):
    """VideoMAE's 1-D table: channel j is sin (even j) or cos (odd j) of p / 10000^(2 floor(j/2) / dim)."""
    expected = [[(math.sin if j % 2 == 0 else math.cos)(p / 10000 ** (2 * (j // 2) / dim)) for j in range(dim)] for p in range(7)]
    torch.testing.assert_close(sinusoid_table(7, dim), torch.tensor(expected, dtype=torch.float32))
