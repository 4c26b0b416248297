"""Audio-MAE's .pth layout (facebookresearch/AudioMAE ``models_mae.py``) without a reference
model: state dicts built to the documented key names and shapes, random values. The options a
file does not record must default to the published Audio-MAE (1024 x 128 fbank, 16 decoder
heads, LayerNorm eps 1e-6, norm-pix loss); the patch size is read from the weights; a patch
embedding that is not one-channel is refused saying how many channels it has."""

import pytest
import torch
from test_mae_official import block

from modalmae.convert.audiomae import audiomae_from_timm
from modalmae.model import MaskedAutoencoder


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
