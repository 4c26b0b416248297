"""Audio-MAE's .pth layout (facebookresearch/AudioMAE ``models_mae.py``) without a reference
model: state dicts built to the documented key names and shapes, random values. The options a
file does not record must default to the published Audio-MAE (1024 x 128 fbank, 16 decoder
heads, LayerNorm eps 1e-6, norm-pix loss); the patch size is read from the weights; a patch
embedding that is not one-channel is refused saying how many channels it has."""

import re

import pytest
import torch
from test_mae_official import block, encoder_state, no_warnings, warned_at_caller

from modalmae.convert import audiomae
from modalmae.convert.audiomae import audiomae_from_timm
from modalmae.model import Encoder, MaskedAutoencoder


def audiomae_state(*, dim=192, patch=16, frames=1024, mels=128, channels=1, dec_dim=32):
    """A one-block pretraining checkpoint (encoder + global decoder) for a ``frames`` x ``mels`` fbank."""
    tokens = (frames // patch) * (mels // patch)
    shapes = {
        "patch_embed.proj.weight": (dim, channels, patch, patch), "patch_embed.proj.bias": (dim,), "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + tokens, dim), **block("blocks.0", dim), "norm.weight": (dim,), "norm.bias": (dim,),
        "decoder_embed.weight": (dec_dim, dim), "decoder_embed.bias": (dec_dim,), "mask_token": (1, 1, dec_dim),
        "decoder_pos_embed": (1, 1 + tokens, dec_dim), **block("decoder_blocks.0", dec_dim),
        "decoder_norm.weight": (dec_dim,), "decoder_norm.bias": (dec_dim,),
        "decoder_pred.weight": (patch * patch, dec_dim), "decoder_pred.bias": (patch * patch,),
    }
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["decoder_pos_embed"][:, 0] = 0  # MAE's sin-cos table has a zero CLS row
    return state


def test_defaults_are_the_published_audiomae():
    """ViT-Ti width 192 -> its 3 heads; Audio-MAE's decoder has 16 heads whatever its width; a
    1024-frame x 128-bin fbank in 16 x 16 patches (64 x 8 = 512 positions); eps 1e-6 and the
    norm-pix loss of the released pretraining."""
    ours = audiomae_from_timm(audiomae_state())
    assert isinstance(ours, MaskedAutoencoder)
    c, tok = ours.config, ours.tokenizer
    assert (tok.num_frames, tok.num_mel_bins, tok.patch_size, tok.num_tokens) == (1024, 128, (16, 16), 512)
    assert (c.encoder_heads, c.decoder_heads, c.norm_eps, c.norm_pix_loss) == (3, 16, 1e-6, True)
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}


def test_the_patch_size_is_read_from_the_weights():
    state = audiomae_state(patch=8, frames=32, mels=16)
    ours = audiomae_from_timm(state, num_frames=32, num_mel_bins=16)  # 4 x 2 patches of 8 x 8 bins
    assert (ours.tokenizer.patch_size, ours.tokenizer.num_tokens) == ((8, 8), 8)
    assert torch.equal(ours.tokenizer.proj.weight, state["patch_embed.proj.weight"].flatten(1))


def test_a_multi_channel_patch_embedding_is_refused():
    with pytest.raises(ValueError, match="^Audio-MAE patch embedding expects 1 input channel, this one has 3$"):
        audiomae_from_timm(audiomae_state(channels=3))


def test_errors_name_audiomae():
    with pytest.raises(ValueError, match="^Audio-MAE encoder: no standard number of heads for width 48; pass it explicitly$"):
        audiomae_from_timm(audiomae_state(dim=48))
    state = audiomae_state()
    state["decoder_pred.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="^" + re.escape("Audio-MAE: shapes do not match: decoder.head.bias: (7,) vs ours (256,)")):
        audiomae_from_timm(state)


LOCAL_DECODER_WARNING = "^Audio-MAE's local-attention \\(Swin\\) decoder has no counterpart here: converting the encoder only$"


def swin_decoder(state):
    """The decoder blocks as Swin blocks: window attention with a relative position bias table
    (16 heads over (2 * 4 - 1)^2 offsets of a 4 x 4 window) beside the usual qkv / proj / MLP."""
    return {**state, "decoder_blocks.0.attn.relative_position_bias_table": torch.zeros(49, 16)}


def other_decoder(state):
    """Decoder blocks that are not timm ViT blocks (no ``decoder_blocks.0.attn.qkv``)."""
    return {k.replace("decoder_blocks.0.", "decoder_blocks.stage.0."): v for k, v in state.items()}


@pytest.mark.parametrize("layout", [swin_decoder, other_decoder])
def test_a_decoder_other_than_maes_converts_to_the_encoder_alone(layout):
    """Only MAE's global-attention decoder has a counterpart here: with any other decoder the
    file converts to its encoder, exactly, and the user is told why the decoder is missing."""
    state = layout(audiomae_state(frames=64, mels=32))
    with pytest.warns(UserWarning, match=LOCAL_DECODER_WARNING) as record:
        ours = audiomae_from_timm(state, num_frames=64, num_mel_bins=32)
    assert isinstance(ours, Encoder)
    assert torch.equal(ours.transformer.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    warned_at_caller(next(w for w in record if "local-attention" in str(w.message)), audiomae, __file__)


def test_audiomaes_own_swin_decoder_converts_to_the_encoder_alone():
    """Audio-MAE's decoder_mode=1 blocks (its timm_patch/swin_transformer.py, SwinV2-CR style):
    qkv / proj / MLP like a ViT block, plus a continuous position bias network ``attn.meta_mlp``
    and a per-head temperature ``attn.tau``; its relative coordinates are not saved."""
    state = audiomae_state(frames=64, mels=32)
    state.update({
        "decoder_blocks.0.attn.tau": torch.ones(16), "decoder_blocks.0.attn.meta_mlp.fc1.weight": torch.zeros(384, 2),
        "decoder_blocks.0.attn.meta_mlp.fc1.bias": torch.zeros(384), "decoder_blocks.0.attn.meta_mlp.fc2.weight": torch.zeros(16, 384),
        "decoder_blocks.0.attn.meta_mlp.fc2.bias": torch.zeros(16),
    })
    with pytest.warns(UserWarning, match=LOCAL_DECODER_WARNING):
        assert isinstance(audiomae_from_timm(state, num_frames=64, num_mel_bins=32), Encoder)


def test_an_encoder_only_file_converts_without_a_warning():
    """A fine-tuned or encoder-only file has no decoder to miss: nothing to warn about."""
    ours = no_warnings(audiomae_from_timm, encoder_state(audiomae_state(frames=64, mels=32)), num_frames=64, num_mel_bins=32)
    assert isinstance(ours, Encoder)


def test_a_global_decoder_without_qkv_biases_converts_whole():
    """MAE's ViT blocks may be built with ``qkv_bias=False``: such a decoder is still the global
    one, converted with the encoder (its fused qkv bias zero), and nothing is warned."""
    state = audiomae_state(frames=64, mels=32)
    del state["decoder_blocks.0.attn.qkv.bias"]
    ours = no_warnings(audiomae_from_timm, state, num_frames=64, num_mel_bins=32)
    assert isinstance(ours, MaskedAutoencoder)
    assert torch.equal(ours.decoder.transformer.blocks[0].attn.qkv.bias, torch.zeros(3 * 32))
    assert torch.equal(ours.decoder.transformer.blocks[0].attn.qkv.weight, state["decoder_blocks.0.attn.qkv.weight"])
