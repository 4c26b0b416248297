"""MAE's image .pth layout (facebookresearch/mae ``models_mae.py``) without a reference model:
state dicts built to the documented key names and shapes, random values. The options a file
does not record must default to the published MAE (224 x 224 RGB, 16 decoder heads, LayerNorm
eps 1e-6, norm-pix loss); the patch size is read from the weights; a file that does not fit is
refused naming MAE."""

import re

import pytest
import torch

from modalmae.convert.mae import mae_from_timm
from modalmae.model import MaskedAutoencoder


def block(prefix, dim):
    return {
        f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,), f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.qkv.bias": (3 * dim,), f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,), f"{prefix}.mlp.fc1.weight": (4 * dim, dim),
        f"{prefix}.mlp.fc1.bias": (4 * dim,), f"{prefix}.mlp.fc2.weight": (dim, 4 * dim), f"{prefix}.mlp.fc2.bias": (dim,),
    }


def mae_state(*, dim=192, patch=16, image=224, dec_dim=32):
    """A one-block pretraining checkpoint (encoder + decoder) for ``image`` x ``image`` RGB."""
    tokens = (image // patch) ** 2
    shapes = {
        "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,), "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + tokens, dim), **block("blocks.0", dim), "norm.weight": (dim,), "norm.bias": (dim,),
        "decoder_embed.weight": (dec_dim, dim), "decoder_embed.bias": (dec_dim,), "mask_token": (1, 1, dec_dim),
        "decoder_pos_embed": (1, 1 + tokens, dec_dim), **block("decoder_blocks.0", dec_dim),
        "decoder_norm.weight": (dec_dim,), "decoder_norm.bias": (dec_dim,),
        "decoder_pred.weight": (patch * patch * 3, dec_dim), "decoder_pred.bias": (patch * patch * 3,),
    }
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["decoder_pos_embed"][:, 0] = 0  # MAE's sin-cos table has a zero CLS row
    return state


def test_defaults_are_the_published_mae():
    """ViT-Ti width 192 -> its 3 heads; MAE's decoder has 16 heads whatever its width; 224 x 224
    in 16 x 16 patches (196 positions); eps 1e-6 and the norm-pix loss of the released models."""
    ours = mae_from_timm(mae_state())
    assert isinstance(ours, MaskedAutoencoder)
    c, tok = ours.config, ours.tokenizer
    assert (tok.image_size, tok.patch_size, tok.num_tokens) == ((224, 224), 16, 196)
    assert (c.encoder_heads, c.decoder_heads, c.norm_eps, c.norm_pix_loss) == (3, 16, 1e-6, True)
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}


def test_the_patch_size_is_read_from_the_weights():
    state = mae_state(patch=8, image=32)
    ours = mae_from_timm(state, image_size=32)  # 4 x 4 patches of 8 x 8 pixels
    assert (ours.tokenizer.patch_size, ours.tokenizer.num_tokens) == (8, 16)
    assert torch.equal(ours.tokenizer.proj.weight, state["patch_embed.proj.weight"])


def test_non_square_or_non_rgb_patches_are_refused():
    state = mae_state()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][..., :8]  # 16 x 8 kernels
    with pytest.raises(ValueError, match=re.escape("[D, 3, p, p] (RGB, square patches), this one is [192, 3, 16, 8]")):
        mae_from_timm(state)


def test_errors_name_mae():
    with pytest.raises(ValueError, match="^MAE encoder: no standard number of heads for width 48; pass it explicitly$"):
        mae_from_timm(mae_state(dim=48))
    state = mae_state()
    state["decoder_pred.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="^" + re.escape("MAE: shapes do not match: decoder.head.bias: (7,) vs ours (768,)")):
        mae_from_timm(state)
