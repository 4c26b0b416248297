"""ImagePatches: MAE's patch order, round trips, positions, embeddings, shape checks."""

import pytest
import torch

from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD, Tokenizer, patch_stats
from modalmae.tokenizers.image import ImagePatches
from modalmae.tokenizers.positions import sincos_grid


def test_mae_default_grid_and_contract():
    tok = ImagePatches(embed_dim=96)
    assert isinstance(tok, Tokenizer)
    assert tok.grid == (14, 14) and tok.num_tokens == 196 and tok.patch_dim == 16 * 16 * 3
    rebuilt = ImagePatches(**tok.config())
    assert rebuilt.config() == tok.config() and rebuilt.grid == tok.grid


def test_defaults_are_maes_vit_b16_patch_embedding():
    """Called with no arguments: MAE's ViT-B/16, 224 x 224 RGB in 16 x 16 patches to 768 channels,
    ImageNet-normalized."""
    tok = ImagePatches()
    assert tok.config() == {
        "embed_dim": 768, "image_size": [224, 224], "patch_size": 16, "in_channels": 3,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
    }
    assert tuple(tok.proj.weight.shape) == (768, 3, 16, 16) and tok.positions().shape == (1, 196, 768)


def test_state_dict_holds_the_weights_and_positions_not_the_normalization():
    """The input normalization is a setting (``config``), not a weight: a checkpoint holds the
    projection and the position table only, so weights load whatever mean and std were used."""
    tok = ImagePatches(embed_dim=48, image_size=16)
    assert set(tok.state_dict()) == {"proj.weight", "proj.bias", "positions.table"}
    grey = ImagePatches(embed_dim=48, image_size=16, in_channels=1, mean=(0.5,), std=(0.25,))
    grey.load_state_dict(ImagePatches(embed_dim=48, image_size=16, in_channels=1, mean=(0.1,), std=(0.9,)).state_dict())
    assert torch.allclose(grey.pixels(torch.ones(1, 1, 16, 16)), torch.full((1, 1, 16, 16), 0.75))


def test_patch_order_is_maes_row_column_channel():
    tok = ImagePatches(embed_dim=48, image_size=(32, 48), patch_size=16)
    x = torch.randn(2, 3, 32, 48)
    patches = tok.patchify(x)
    assert patches.shape == (2, 2 * 3, 16 * 16 * 3)
    # token 4 = second row, second column; MAE flattens it as (p, q, c): nchpwq -> nhwpqc
    expected = x[1, :, 16:32, 16:32].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[1, 4], expected)
    assert torch.equal(patches[1, 4, :3], x[1, :, 16, 16])  # the first pixel's three channels come first
    assert torch.equal(tok.unpatchify(patches), x)


def test_targets_are_the_normalized_input_patches_and_norm_pix_is_per_patch():
    tok = ImagePatches(embed_dim=48, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    tokens = tok(x)
    assert torch.equal(tokens.targets, tok.patchify(x))
    mean, std = tok.target_stats(tokens.targets)
    expected_mean, expected_std = patch_stats(tokens.targets)
    assert torch.equal(mean, expected_mean) and torch.equal(std, expected_std)
    assert torch.allclose(std[0, 0, 0] ** 2, tokens.targets[0, 0].var() + 1e-6)  # MAE: sqrt(var + 1e-6)


def test_embeddings_are_the_patch_projection_without_positions():
    tok = ImagePatches(embed_dim=48, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    tokens = tok(x)
    assert tokens.embeddings.shape == (2, 4, 48) and tokens.positions.shape == (1, 4, 48)
    # a conv patch embedding is a linear map of each patch flattened in the conv's (c, p, q) order
    flat = x[:, :, :16, 16:32].reshape(2, -1)  # token 1: top row, second column
    expected = flat @ tok.proj.weight.reshape(48, -1).T + tok.proj.bias
    assert torch.allclose(tokens.embeddings[:, 1], expected, atol=1e-5)


def test_positions_are_maes_2d_sincos_for_encoder_and_decoder():
    tok = ImagePatches(embed_dim=64, image_size=(32, 64), patch_size=16)
    assert torch.equal(tok.positions()[0], sincos_grid((2, 4), 64))
    assert torch.equal(tok.decoder_positions(32)()[0], sincos_grid((2, 4), 32))
    assert "positions.table" in tok.state_dict()  # saved with the model


def test_xavier_uniform_on_the_flattened_projection():
    tok = ImagePatches(embed_dim=768)
    bound = (6 / (768 + 768)) ** 0.5  # fan_in = fan_out = 16 * 16 * 3 = 768 on the flat view
    weight = tok.proj.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.equal(tok.proj.bias, torch.zeros(768))


def test_pixels_undo_imagenet_normalization():
    tok = ImagePatches(embed_dim=48, image_size=16)
    raw = torch.rand(1, 3, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(tok.pixels((raw - mean) / std), raw, atol=1e-6)
    grey = ImagePatches(embed_dim=48, image_size=16, in_channels=1, mean=(0.5,), std=(0.25,))
    assert torch.allclose(grey.pixels(torch.ones(1, 1, 16, 16)), torch.full((1, 1, 16, 16), 0.75))


def test_wrong_inputs_are_explained():
    tok = ImagePatches(embed_dim=48, image_size=32)
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\] = \[B, 3, 32, 32\]"):
        tok(torch.randn(1, 3, 32, 48))
    with pytest.raises(ValueError, match="expected images"):
        tok.patchify(torch.randn(3, 32, 32))  # no batch dimension
    with pytest.raises(ValueError, match="not divisible"):
        ImagePatches(image_size=100)
    for size in [(100, 224), (224, 100)]:  # one side that does not divide is enough
        with pytest.raises(ValueError, match=rf"image {size[0]}x{size[1]} is not divisible into 16x16 patches"):
            ImagePatches(embed_dim=48, image_size=size)
    with pytest.raises(ValueError, match="one per channel"):
        ImagePatches(in_channels=1)
    for mean, std in [((0.5,), IMAGENET_STD), (IMAGENET_MEAN, (0.5,))]:  # either one of the wrong length
        with pytest.raises(ValueError, match="mean and std need 3 values, one per channel"):
            ImagePatches(embed_dim=48, image_size=16, mean=mean, std=std)
