import math
import re

import pytest
import torch

from modalmae.tokenizers.positions import sinusoid_table
from modalmae.tokenizers.video import IMAGENET_MEAN, IMAGENET_STD, VideoTubes


def test_videomae_default_grid():
    tok = VideoTubes(embed_dim=96)
    assert tok.grid == (8, 14, 14) and tok.num_tokens == 1568 and tok.patch_dim == 2 * 16 * 16 * 3


def test_patchify_round_trip_in_pixel_space_and_tube_order():
    tok = VideoTubes(embed_dim=48, num_frames=4, image_size=32)
    x = torch.randn(2, 3, 4, 32, 32)
    patches = tok.patchify(x)
    assert patches.shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)
    pixels = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    assert torch.allclose(tok.unpatchify(patches), pixels, atol=1e-6)
    # token 1 = first tubelet, top row, second column; its vector is (t, h, w, c) ordered
    expected = pixels[0, :, 0:2, 0:16, 16:32].permute(1, 2, 3, 0).reshape(-1)
    assert torch.allclose(patches[0, 1], expected, atol=1e-6)
    with pytest.raises(ValueError, match=re.escape("expected clips [B, C, T, H, W] = [B, 3, 4, 32, 32], got [1, 3, 2, 32, 32]")):
        tok.patchify(torch.randn(1, 3, 2, 32, 32))


def test_target_stats_per_tube_and_channel():
    tok = VideoTubes(embed_dim=48, num_frames=2, image_size=16)
    patches = tok.patchify(torch.randn(1, 3, 2, 16, 16))
    mean, std = tok.target_stats(patches)
    normed = ((patches - mean) / std).view(1, 1, -1, 3)  # [B, L, voxels, C]
    assert torch.allclose(normed.mean(dim=2), torch.zeros(1, 1, 3), atol=1e-5)
    assert torch.allclose(normed.std(dim=2), torch.ones(1, 1, 3), atol=1e-3)


def test_sinusoid_table_formula():
    table = sinusoid_table(10, 8)
    p, j = 3, 5  # odd channel: cosine of p / 10000^(2*(j//2)/d)
    assert math.isclose(table[p, j].item(), math.cos(p / 10000 ** (2 * (j // 2) / 8)), rel_tol=1e-6)
    assert math.isclose(table[p, 4].item(), math.sin(p / 10000 ** (4 / 8)), rel_tol=1e-6)
    assert torch.equal(table[0, 0::2], torch.zeros(4)) and torch.equal(table[0, 1::2], torch.ones(4))


def test_embeddings_shape():
    tok = VideoTubes(embed_dim=48, num_frames=4, image_size=32)
    tokens = tok(torch.randn(2, 3, 4, 32, 32))
    assert tokens.embeddings.shape == (2, 8, 48) and tokens.targets.shape == (2, 8, 1536)
