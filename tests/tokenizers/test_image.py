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
    with pytest.raises(ValueError, match="one per channel"):
        ImagePatches(in_channels=1)
