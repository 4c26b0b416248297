"""MAE's image .pth layout (facebookresearch/mae ``models_mae.py``) without a reference model:
state dicts built to the documented key names and shapes, random values. The options a file
does not record must default to the published MAE (224 x 224 RGB, 16 decoder heads, LayerNorm
eps 1e-6, norm-pix loss); the patch size is read from the weights; a file that does not fit is
refused naming MAE."""

import re
import warnings
from pathlib import Path

import pytest
import torch

import modalmae
from modalmae.convert import common
from modalmae.convert.mae import mae_from_timm
from modalmae.model import Encoder, MaskedAutoencoder

# mutmut's instrumented copy (mutants/modalmae) runs every function inside a wrapper, which adds
# stack frames between a caller and the library: there a warning's stacklevel cannot reach the caller.
INSTRUMENTED = Path(modalmae.__file__).parent.parent.name == "mutants"


def warned_at_caller(record, issuer, caller):
    """The warning names the line that called the converter (in the file ``caller``), not the
    line of ``issuer`` (a module) that issues it."""
    assert record.filename != issuer.__file__
    if not INSTRUMENTED:
        assert record.filename == caller


def no_warnings(fn, *args, **kwargs):
    """fn(*args, **kwargs), asserting that it warns about nothing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    assert [str(w.message) for w in caught] == []
    return out


def block(prefix, dim, mlp_ratio=4):
    hidden = mlp_ratio * dim
    return {
        f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,), f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.qkv.bias": (3 * dim,), f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,), f"{prefix}.mlp.fc1.weight": (hidden, dim),
        f"{prefix}.mlp.fc1.bias": (hidden,), f"{prefix}.mlp.fc2.weight": (dim, hidden), f"{prefix}.mlp.fc2.bias": (dim,),
    }


def mae_state(*, dim=192, patch=16, image=224, dec_dim=32, mlp_ratio=4):
    """A one-block pretraining checkpoint (encoder + decoder) for ``image`` x ``image`` RGB."""
    tokens = (image // patch) ** 2
    shapes = {
        "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,), "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + tokens, dim), **block("blocks.0", dim, mlp_ratio), "norm.weight": (dim,), "norm.bias": (dim,),
        "decoder_embed.weight": (dec_dim, dim), "decoder_embed.bias": (dec_dim,), "mask_token": (1, 1, dec_dim),
        "decoder_pos_embed": (1, 1 + tokens, dec_dim), **block("decoder_blocks.0", dec_dim, mlp_ratio),
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
    encoder_only = encoder_state(mae_state())
    encoder_only["norm.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match="^" + re.escape("MAE encoder: shapes do not match: transformer.norm.bias: (7,) vs ours (192,)")):
        mae_from_timm(encoder_only)


def encoder_state(state):
    """The pretrained encoder alone, as in ``mae_pretrain_vit_*.pth``: no decoder keys."""
    return {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}


def test_the_mlp_width_is_read_from_the_weights():
    """MAE's blocks are 4x wide, but the file says: fc1 of 2 x 192 rows is an MLP ratio of 2 (one
    ratio for the encoder and the decoder, as in MAE's ``mlp_ratio``)."""
    state = mae_state(mlp_ratio=2)
    ours = mae_from_timm(state)
    assert ours.config.mlp_ratio == 2.0
    assert torch.equal(ours.encoder.transformer.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])
    assert torch.equal(ours.decoder.transformer.blocks[0].mlp.fc2.weight, state["decoder_blocks.0.mlp.fc2.weight"])


def test_an_encoder_alone_keeps_maes_decoder_in_its_config():
    """With no decoder in the file the config keeps MAE's published one (512 wide, 8 blocks),
    what pretraining would continue with; nothing is warned about."""
    ours = no_warnings(mae_from_timm, encoder_state(mae_state()))
    assert isinstance(ours, Encoder)
    assert (ours.config.decoder_dim, ours.config.decoder_depth, ours.config.encoder_depth) == (512, 8, 1)


CLS_ROW_WARNING = "^decoder_pos_embed has a non-zero CLS row, which our decoder does not add: predictions will differ slightly$"


@pytest.mark.parametrize("value", [0.5, -0.01])
def test_a_non_zero_cls_row_in_decoder_pos_embed_is_warned_about(value):
    """Our decoder adds no position to the CLS token: a learned decoder table whose CLS row is
    not zero converts (the patch rows exactly) but predicts slightly differently, so say so."""
    state = mae_state()
    state["decoder_pos_embed"][:, 0, 3] = value
    with pytest.warns(UserWarning, match=CLS_ROW_WARNING) as record:
        ours = mae_from_timm(state)
    assert torch.equal(ours.decoder.positions.table, state["decoder_pos_embed"][:, 1:])
    warned_at_caller(next(w for w in record if "CLS row" in str(w.message)), common, __file__)


@pytest.mark.parametrize("value", [0.0, 1e-6])
def test_a_zero_cls_row_is_not_warned_about(value):
    """MAE's sin-cos table has a zero CLS row (the patch rows are not zero); float noise up to
    1e-6 counts as zero."""
    state = mae_state()
    state["decoder_pos_embed"][:, 0] = value
    assert isinstance(no_warnings(mae_from_timm, state), MaskedAutoencoder)
