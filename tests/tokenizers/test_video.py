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


def test_defaults_are_videomaes_vit_b():
    """VideoMAE ViT-B: 16 frames of 224 x 224 cut into 2 x 16 x 16 tubes of RGB, width 768,
    ImageNet's normalization; the normalization is a setting, not saved with the weights."""
    tok = VideoTubes()
    assert tok.config() == {
        "embed_dim": 768, "num_frames": 16, "image_size": [224, 224], "tubelet_size": 2, "patch_size": 16, "in_channels": 3,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }
    assert sorted(tok.state_dict()) == ["positions.table", "proj.bias", "proj.weight"]


@pytest.mark.parametrize("frames,size", [(5, (32, 32)), (4, (30, 32)), (4, (32, 30))])  # one axis off at a time
def test_a_clip_that_does_not_divide_into_tubes_is_refused(frames, size):
    message = f"clip {frames}x{size[0]}x{size[1]} is not divisible into 2x16x16 tubes"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        VideoTubes(embed_dim=48, num_frames=frames, image_size=size)


@pytest.mark.parametrize("mean,std", [((0.5,), (0.5, 0.5, 0.5)), ((0.5, 0.5, 0.5), (0.5, 0.5))])  # either one wrong
def test_mean_and_std_need_one_value_per_channel(mean, std):
    with pytest.raises(ValueError, match="^mean and std need 3 values, one per channel$"):
        VideoTubes(embed_dim=48, num_frames=4, image_size=32, mean=mean, std=std)
