"""Parity with transformers' VideoMAEForPreTraining: random weights copied by our converter
must give the same predictions and loss on the same clip and mask (the reference runs here)."""

import pytest
import torch

from modalmae.convert.videomae import videomae_from_transformers
from modalmae.masking import masks_from_order, tube_masking

transformers = pytest.importorskip("transformers")


def tiny_reference(**overrides):
    settings = dict(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=3, intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2, decoder_intermediate_size=128, use_mean_pooling=False, norm_pix_loss=True,
    )
    config = transformers.VideoMAEConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    model = transformers.VideoMAEForPreTraining(config).eval()
    # post_init zeroes biases and the mask token; randomise everything so nothing agrees by accident
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("norm_pix", [True, False])
def test_same_predictions_and_loss_as_transformers(norm_pix):
    ref = tiny_reference(norm_pix_loss=norm_pix, layer_norm_eps=1e-12)
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict()).eval()
    g = torch.Generator().manual_seed(1)
    clip = torch.randn(2, 3, 4, 32, 32, generator=g)  # ours: [B, C, T, H, W], normalized
    masks = tube_masking(2, ours.tokenizer.grid, 0.75, generator=g)
    # transformers keeps tokens in index order; give ours the same order so outputs line up
    order = torch.cat([masks.ids_keep.sort(1).values, masks.ids_masked.sort(1).values], dim=1)
    masks = masks_from_order(order, masks.num_masked)
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2), bool_masked_pos=masks.mask.bool())
        got = ours(clip, masks)
    pred = got.pred[masks.mask.bool()].view(2, -1, got.pred.shape[-1])
    assert pred.shape == expected.logits.shape
    assert torch.allclose(pred, expected.logits, atol=1e-4), (pred - expected.logits).abs().max()
    assert torch.allclose(got.loss, expected.loss, atol=1e-4), (got.loss, expected.loss)


def test_token_order_does_not_matter():
    ref = tiny_reference()
    ours = videomae_from_transformers(ref.state_dict(), ref.config.to_dict()).eval()
    g = torch.Generator().manual_seed(2)
    clip = torch.randn(1, 3, 4, 32, 32, generator=g)
    masks = tube_masking(1, ours.tokenizer.grid, 0.5, generator=g)  # shuffled order
    with torch.no_grad():
        expected = ref(clip.transpose(1, 2), bool_masked_pos=masks.mask.bool())
        got = ours(clip, masks)
    assert torch.allclose(got.loss, expected.loss, atol=1e-4)


def test_mean_pooling_layout_is_refused():
    ref = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_frames=4, hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
        intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, use_mean_pooling=True))
    with pytest.raises(ValueError, match="use_mean_pooling"):
        videomae_from_transformers(ref.state_dict(), ref.config.to_dict())
