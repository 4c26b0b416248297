"""MAE's image checkpoints (facebookresearch/mae ``models_mae.py`` / ``models_vit.py``) are the
timm ViT layout Audio-MAE shares, over three-channel patches. MAE itself needs timm, which does
not run here; transformers' ViTMAE is the same model and does. So: random ViTMAE weights on
64 x 64 RGB, renamed to MAE's key names, converted by ours, must give ViTMAE's predictions,
loss and features; ViTMAE's sin-cos table must be our tokenizer's."""

import pytest
import torch
from vitmae_reference import tiny_vitmae, to_timm, vitmae_config

from modalmae.convert import convert_checkpoint, detect_layout
from modalmae.convert.mae import mae_from_timm
from modalmae.masking import masks_from_order
from modalmae.model import Encoder, MaskedAutoencoder
from modalmae.tokenizers.image import ImagePatches

transformers = pytest.importorskip("transformers")


def images(batch=2, seed=1):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # [B, C, H, W], normalized


@pytest.mark.parametrize("norm_pix", [False, True])
def test_same_predictions_and_loss_as_vitmae(norm_pix, tmp_path):
    ref = tiny_vitmae(channels=3, norm_pix=norm_pix)
    state = to_timm(ref.state_dict())
    assert state["patch_embed.proj.weight"].shape == (48, 3, 16, 16)
    ours = mae_from_timm(state, image_size=64, encoder_heads=3, decoder_heads=2, norm_eps=1e-12, norm_pix_loss=norm_pix)
    assert isinstance(ours, MaskedAutoencoder) and isinstance(ours.tokenizer, ImagePatches)
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)} == {ref.config.layer_norm_eps}  # every norm, exactly
    x = images()
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    masks = masks_from_order(noise.argsort(dim=1), 12)  # ViTMAE keeps the 4 lowest-noise tokens, in that order
    with torch.no_grad():
        expected = ref(x, noise=noise)
        got = ours(x, masks)
    assert torch.equal(masks.mask, expected.mask)
    masked = masks.mask.bool()
    assert torch.allclose(got.pred[masked], expected.logits[masked], atol=1e-6, rtol=0), (got.pred[masked] - expected.logits[masked]).abs().max()
    assert torch.allclose(got.loss, expected.loss, atol=1e-6, rtol=0)
    assert torch.allclose(ours.tokenizer.patchify(x), ref.patchify(x))  # MAE's patch order on both sides
    # and from a .pth as MAE saves it ({"model": ...}), recognised by its three-channel patches
    torch.save({"model": state}, tmp_path / "checkpoint.pth")
    model, extra = convert_checkpoint(tmp_path / "checkpoint.pth", image_size=64, encoder_heads=3, decoder_heads=2, norm_eps=1e-12)
    assert extra == {"image": {}, "converted_from": "mae"}
    assert torch.allclose(model.encoder(x), ours.encoder(x), atol=1e-6)


def test_pretrained_encoder_alone_gives_vitmaes_features():
    ref = tiny_vitmae(channels=3, norm_pix=False, mask_ratio=0.0)  # keep every token, in grid order below
    state = {k: v for k, v in to_timm(ref.state_dict()).items() if not k.startswith(("decoder", "mask_token"))}
    ours = mae_from_timm(state, image_size=64, encoder_heads=3, norm_eps=1e-12)  # like mae_pretrain_vit_base.pth
    assert isinstance(ours, Encoder) and ours.fc_norm is None
    x = images(seed=3)
    with torch.no_grad():
        expected = ref.vit(x, noise=torch.arange(16.0).expand(2, -1)).last_hidden_state  # [B, 1 + L, D], final norm
        assert torch.allclose(ours(x), expected, atol=1e-6, rtol=0)


def test_finetuned_layout_is_an_encoder_with_fc_norm():
    state = to_timm(tiny_vitmae(channels=3, norm_pix=False).state_dict())
    state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token", "norm."))}
    state["fc_norm.weight"], state["fc_norm.bias"] = torch.rand(48) + 0.5, torch.randn(48)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 48), torch.randn(1000)
    ours = mae_from_timm(state, image_size=64, encoder_heads=3, norm_eps=1e-12)
    assert isinstance(ours, Encoder) and ours.fc_norm is not None
    x = images(batch=1)
    with torch.no_grad():
        feats = ours(x)  # [1, 1 + 16, 48], no final norm
        expected = torch.nn.functional.layer_norm(feats[:, 1:].mean(1), (48,), state["fc_norm.weight"], state["fc_norm.bias"], eps=1e-12)
        assert torch.allclose(ours.pooled(x), expected, atol=1e-5)


def test_vitmaes_sincos_table_is_our_tokenizers():
    decoder = transformers.ViTMAEForPreTraining(vitmae_config(channels=3, norm_pix=True)).decoder
    decoder.initialize_weights(16)  # ViTMAE's own MAE table for a 4 x 4 grid, CLS row first
    tok = ImagePatches(embed_dim=32, image_size=64)
    assert torch.allclose(decoder.decoder_pos_embed[0, 1:], tok.positions()[0], atol=1e-6)
    assert torch.allclose(decoder.decoder_pos_embed[0, 1:], ImagePatches(embed_dim=48, image_size=64).decoder_positions(32)()[0], atol=1e-6)


def test_layout_detection_and_wrong_sizes_are_explained():
    state = to_timm(tiny_vitmae(channels=3, norm_pix=False).state_dict())
    assert detect_layout(state, None) == "mae"
    grey = {**state, "patch_embed.proj.weight": state["patch_embed.proj.weight"][:, :1]}
    assert detect_layout(grey, None) == "audiomae"
    with pytest.raises(ValueError, match="2-channel patches"):
        detect_layout({**state, "patch_embed.proj.weight": state["patch_embed.proj.weight"][:, :2]}, None)
    with pytest.raises(ValueError, match="image_size"):
        mae_from_timm(state, encoder_heads=3)  # the default 224 gives 196 positions, the file has 16
    with pytest.raises(ValueError, match=r"\[D, 3, p, p\]"):
        mae_from_timm(grey, image_size=64, encoder_heads=3)
