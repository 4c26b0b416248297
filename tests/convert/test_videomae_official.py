"""The official VideoMAE .pth layout (MCG-NJU/VideoMAE ``modeling_pretrain.py`` /
``modeling_finetune.py``) without a reference model: state dicts built to the documented key
names and shapes, random values. What the file records (width, channels, tubelet, patch, MLP
ratio, depths) must be read from it; what it does not record must default to the published
model (16 frames at 224, standard heads per width, a 384-wide, 4-block decoder for fine-tuned
files); and a file that does not fit is refused naming what was being loaded."""

import re

import pytest
import torch

from modalmae.convert.videomae import videomae_from_official
from modalmae.model import Encoder, MaskedAutoencoder


def block(prefix, dim, mlp):
    return {
        f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,), f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.q_bias": (dim,), f"{prefix}.attn.v_bias": (dim,), f"{prefix}.attn.proj.weight": (dim, dim),
        f"{prefix}.attn.proj.bias": (dim,), f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (mlp * dim, dim), f"{prefix}.mlp.fc1.bias": (mlp * dim,),
        f"{prefix}.mlp.fc2.weight": (dim, mlp * dim), f"{prefix}.mlp.fc2.bias": (dim,),
    }


def official_state(*, dim=48, channels=3, tubelet=2, patch=16, mlp=4, dec_dim=32, finetuned=False):
    """A one-block VideoMAE state dict: pretraining (``encoder.`` + decoder) or fine-tuned
    (no prefix, ``fc_norm`` and a classifier ``head`` instead of the final ``norm``)."""
    src = "" if finetuned else "encoder."
    shapes = {
        f"{src}patch_embed.proj.weight": (dim, channels, tubelet, patch, patch), f"{src}patch_embed.proj.bias": (dim,),
        **block(f"{src}blocks.0", dim, mlp),
    }
    if finetuned:
        shapes.update({"fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (5, dim), "head.bias": (5,)})
    else:
        shapes.update({
            "encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,), "encoder_to_decoder.weight": (dec_dim, dim),
            "mask_token": (1, 1, dec_dim), **block("decoder.blocks.0", dec_dim, mlp),
            "decoder.norm.weight": (dec_dim,), "decoder.norm.bias": (dec_dim,),
            "decoder.head.weight": (tubelet * patch * patch * channels, dec_dim), "decoder.head.bias": (tubelet * patch * patch * channels,),
        })
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("finetuned", [False, True])
def test_defaults_are_the_published_videomae(finetuned):
    """Called with the state dict alone: VideoMAE's 16 frames at 224 (8 x 14 x 14 = 1568 tubes),
    ViT-S's 6 heads for width 384, norm-pix loss and LayerNorm eps 1e-6. A fine-tuned file has no
    decoder, so the config records the official pretraining decoder (384 wide, 4 blocks, 6 heads)."""
    ours = videomae_from_official(official_state(dim=384, dec_dim=192, finetuned=finetuned))
    tok, c = ours.tokenizer, ours.config
    assert (tok.num_frames, tok.image_size, tok.tubelet_size, tok.patch_size, tok.num_tokens) == (16, (224, 224), 2, 16, 1568)
    assert (c.encoder_dim, c.encoder_heads, c.norm_eps, c.norm_pix_loss) == (384, 6, 1e-6, True)
    if finetuned:
        assert isinstance(ours, Encoder) and ours.fc_norm is not None
        assert (c.decoder_dim, c.decoder_depth, c.decoder_heads) == (384, 4, 6)
    else:
        assert isinstance(ours, MaskedAutoencoder)
        assert (c.decoder_dim, c.decoder_depth, c.decoder_heads) == (192, 1, 3)  # VideoMAE's decoder for ViT-S: 192 wide, 3 heads


@pytest.mark.parametrize("finetuned", [False, True])
@pytest.mark.parametrize(("tubelet", "patch", "mlp"), [(2, 16, 4), (4, 8, 2)])
def test_sizes_recorded_in_the_file_are_read_from_it(finetuned, tubelet, patch, mlp):
    """Tubelet, patch and MLP ratio come from the weights' shapes; the options that the file
    cannot record (frames, size, heads, eps, norm-pix) are taken as given."""
    state = official_state(tubelet=tubelet, patch=patch, mlp=mlp, finetuned=finetuned)
    ours = videomae_from_official(state, num_frames=8, image_size=32, encoder_heads=3, decoder_heads=2, norm_eps=1e-5, norm_pix_loss=False)
    tok, c = ours.tokenizer, ours.config
    assert (tok.tubelet_size, tok.patch_size, tok.num_frames, tok.image_size) == (tubelet, patch, 8, (32, 32))
    assert (c.mlp_ratio, c.encoder_heads, c.norm_eps, c.norm_pix_loss) == (mlp, 3, 1e-5, False)
    prefix = "" if finetuned else "encoder."
    assert torch.equal(ours.tokenizer.proj.weight, state[f"{prefix}patch_embed.proj.weight"])


@pytest.mark.parametrize(("dim", "dec_dim", "what"), [(48, 192, "VideoMAE encoder"), (384, 32, "VideoMAE decoder")])
def test_a_width_without_standard_heads_asks_for_them(dim, dec_dim, what):
    with pytest.raises(ValueError, match=f"^{what}: no standard number of heads for width {min(dim, dec_dim)}; pass it explicitly$"):
        videomae_from_official(official_state(dim=dim, dec_dim=dec_dim))


@pytest.mark.parametrize(
    ("finetuned", "what", "key"),
    [(True, "VideoMAE encoder (official layout)", "fc_norm.bias"), (False, "VideoMAE (official layout)", "decoder.head.bias")],
)
def test_a_mismatched_file_is_refused_naming_the_model_and_the_weight(finetuned, what, key):
    state = official_state(finetuned=finetuned)
    state[key] = torch.zeros(7)  # fc_norm / decoder head of another model: 7 values where ours has 48 / 1536
    with pytest.raises(ValueError, match="^" + re.escape(f"{what}: shapes do not match: {key}: (7,) vs ours")):
        videomae_from_official(state, num_frames=4, image_size=32, encoder_heads=3, decoder_heads=2)


@pytest.mark.parametrize("finetuned", [False, True])
def test_a_file_that_is_not_rgb_is_refused(finetuned):
    """VideoMAE normalises RGB with ImageNet's statistics; a 1-channel file records none of its own."""
    with pytest.raises(ValueError, match=r"^VideoMAE \(official layout\): the patch embedding takes 1 channels; only RGB \(3\)"):
        videomae_from_official(official_state(channels=1, finetuned=finetuned))


def test_a_patch_embedding_that_is_not_square_is_refused():
    state = official_state()
    state["encoder.patch_embed.proj.weight"] = torch.zeros(48, 3, 2, 16, 8)
    with pytest.raises(ValueError, match=r"should be \[D, C, t, p, p\], got \[48, 3, 2, 16, 8\]"):
        videomae_from_official(state)


def test_convert_checkpoint_keeps_the_frame_stride_for_the_official_layout(tmp_path):
    """convert_checkpoint passes the options the file cannot record to the converter and keeps
    the frame stride (sampling_rate, VideoMAE's 4 unless given) in the extra settings."""
    from modalmae.convert import convert_checkpoint

    torch.save({"model": official_state()}, tmp_path / "videomae.pth")
    model, extra = convert_checkpoint(tmp_path / "videomae.pth", num_frames=4, image_size=32, encoder_heads=3, decoder_heads=2)
    assert extra == {"video": {"sampling_rate": 4}, "converted_from": "videomae"} and model.tokenizer.num_frames == 4
    _, extra = convert_checkpoint(tmp_path / "videomae.pth", num_frames=4, image_size=32, encoder_heads=3, decoder_heads=2, sampling_rate=2)
    assert extra["video"] == {"sampling_rate": 2}
