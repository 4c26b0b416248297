"""Audio-MAE's layout is MAE's timm ViT (facebookresearch/AudioMAE ``models_mae.py``:
``patch_embed.proj``, ``cls_token``, ``pos_embed`` with a CLS row, ``blocks.N``, ``norm``,
``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``,
``decoder_pred``). Audio-MAE itself needs timm, which does not run here; transformers' ViTMAE
is the same MAE and does. So: random ViTMAE weights on a one-channel 64 x 64 "spectrogram",
renamed to the Audio-MAE key names, converted by ours, must give ViTMAE's predictions and loss."""

import pytest
import torch
from vitmae_reference import tiny_vitmae, to_timm

from modalmae.convert import convert_checkpoint
from modalmae.convert.audiomae import audiomae_from_timm
from modalmae.masking import masks_from_order
from modalmae.model import Encoder, MaskedAutoencoder

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("norm_pix", [False, True])
def test_same_predictions_and_loss_as_vitmae(norm_pix, tmp_path):
    ref = tiny_vitmae(channels=1, norm_pix=norm_pix)
    state = to_timm(ref.state_dict())
    ours = audiomae_from_timm(state, num_frames=64, num_mel_bins=64, encoder_heads=3, decoder_heads=2, norm_eps=1e-12, norm_pix_loss=norm_pix)
    assert isinstance(ours, MaskedAutoencoder) and ours.encoder.cls_token is not None
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)} == {ref.config.layer_norm_eps}  # every norm, exactly
    spec = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))  # [B, T, F]
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    masks = masks_from_order(noise.argsort(dim=1), 12)  # ViTMAE keeps the 4 lowest-noise tokens, in that order
    with torch.no_grad():
        expected = ref(spec[:, None], noise=noise)
        got = ours(spec, masks)
    assert torch.equal(masks.mask, expected.mask)
    masked = masks.mask.bool()
    assert torch.allclose(got.pred[masked], expected.logits[masked], atol=1e-6, rtol=0), (got.pred[masked] - expected.logits[masked]).abs().max()
    assert torch.allclose(got.loss, expected.loss, atol=1e-6, rtol=0)
    # and from a .pth as Audio-MAE saves it ({"model": ...}), recognised by key names
    torch.save({"model": state}, tmp_path / "pretrained.pth")
    model, extra = convert_checkpoint(tmp_path / "pretrained.pth", num_frames=64, num_mel_bins=64, encoder_heads=3, decoder_heads=2, norm_eps=1e-12)
    assert extra["converted_from"] == "audiomae" and extra["frontend"]["num_frames"] == 64
    assert torch.allclose(model.encoder(spec), ours.encoder(spec), atol=1e-6)


def test_finetuned_layout_is_an_encoder_with_fc_norm():
    state = to_timm(tiny_vitmae(channels=1, norm_pix=False).state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token", "norm."))}
    state["fc_norm.weight"], state["fc_norm.bias"] = torch.rand(48) + 0.5, torch.randn(48)
    state["head.weight"], state["head.bias"] = torch.randn(527, 48), torch.randn(527)
    ours = audiomae_from_timm(state, num_frames=64, num_mel_bins=64, encoder_heads=3, norm_eps=1e-12)
    assert isinstance(ours, Encoder) and ours.fc_norm is not None
    spec = torch.randn(1, 64, 64)
    with torch.no_grad():
        feats = ours(spec)  # [1, 1 + 16, 48], no final norm
        expected = torch.nn.functional.layer_norm(feats[:, 1:].mean(1), (48,), state["fc_norm.weight"], state["fc_norm.bias"], eps=1e-12)
        assert torch.allclose(ours.pooled(spec), expected, atol=1e-5)


def test_wrong_spectrogram_size_is_explained():
    state = to_timm(tiny_vitmae(channels=1, norm_pix=False).state_dict())
    with pytest.raises(ValueError, match="num_frames"):
        audiomae_from_timm(state, encoder_heads=3)  # defaults 1024 x 128 = 512 positions, the file has 16
