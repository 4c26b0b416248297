"""Recognising a checkpoint's layout from its key names, and what ``convert_checkpoint`` hands
back beside the model: the preprocessing settings the layout's method used (VideoMAE's frame
stride, Audio-MAE's fbank front end sized to the checkpoint, Point-MAE's 1024 points per
cloud). A file that fits no layout is refused saying what it holds and what is supported."""

import re

import pytest
import torch
from safetensors.torch import save_file
from test_audiomae_official import audiomae_state
from test_mae_official import mae_state
from test_pointmae_conversion import pointmae_state
from test_videomae_official import official_state

from modalmae.convert import convert_checkpoint, detect_layout

SUPPORTED = "videomae-transformers, videomae, mae, audiomae, pointmae"


@pytest.mark.parametrize(("state", "layout"), [
    (lambda: official_state(), "videomae"),  # pretraining: encoder.patch_embed..., encoder_to_decoder, decoder.*
    (lambda: official_state(finetuned=True), "videomae"),  # fine-tuned: no prefix, a 5-D tubelet convolution
    (lambda: mae_state(image=32), "mae"),  # timm ViT, 3-channel 2-D patches + pos_embed
    (lambda: audiomae_state(frames=32, mels=16), "audiomae"),  # the same over a 1-channel fbank
    (lambda: pointmae_state(), "pointmae"),  # MAE_encoder.*
], ids=["videomae-pretrain", "videomae-finetuned", "mae", "audiomae", "pointmae"])
def test_each_layout_is_recognised_from_its_key_names(state, layout):
    assert detect_layout(state(), None) == layout


def test_a_transformers_folder_is_recognised_by_its_model_type():
    assert detect_layout({"videomae.embeddings.patch_embeddings.projection.weight": torch.zeros(1)}, {"model_type": "videomae"}) == "videomae-transformers"
    with pytest.raises(ValueError, match=r"^unsupported transformers model_type 'vit_mae' \(supported: videomae\)$"):
        detect_layout({"vit.embeddings.cls_token": torch.zeros(1)}, {"model_type": "vit_mae"})
    with pytest.raises(ValueError, match=r"^unsupported transformers model_type None \(supported: videomae\)$"):
        detect_layout({"vit.embeddings.cls_token": torch.zeros(1)}, {})


def test_an_unrecognised_state_dict_is_refused_listing_its_first_six_keys():
    """A position table without a patch embedding, or a 2-D patch embedding without a position
    table, is none of the layouts: the message lists the first six keys (sorted) and the layouts."""
    keys = ["z.w", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias", "blocks.0.w"]
    first = "['blocks.0.w', 'head.bias', 'head.weight', 'norm.bias', 'norm.weight', 'pos_embed']"
    with pytest.raises(ValueError, match="^" + re.escape(f"unrecognised checkpoint layout (first keys: {first}); supported: {SUPPORTED}") + "$"):
        detect_layout(dict.fromkeys(keys, torch.zeros(1)), None)
    conv_only = {"patch_embed.proj.weight": torch.zeros(4, 3, 2, 2), "blocks.0.w": torch.zeros(1)}
    with pytest.raises(ValueError, match="^" + re.escape(f"unrecognised checkpoint layout (first keys: ['blocks.0.w', 'patch_embed.proj.weight']); supported: {SUPPORTED}") + "$"):
        detect_layout(conv_only, None)


def test_convert_checkpoint_refuses_an_unknown_layout_and_a_transformers_file_without_config(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="^" + re.escape(f"unknown layout 'timm'; choose from auto, {SUPPORTED}") + "$"):
        convert_checkpoint(path, layout="timm")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: the transformers layout needs the folder with its config.json") + "$"):
        convert_checkpoint(path, layout="videomae-transformers")


# Audio-MAE's fbank (16 kHz, 25 ms windows every 10 ms) and its AudioSet statistics, (x + 4.27) / (2 * 4.57).
AUDIOMAE_FBANK = {"sample_rate": 16000, "frame_shift_ms": 10.0, "frame_length_ms": 25.0, "mean": -4.2677393, "std": 4.5689974, "pad_value": 0.0}


@pytest.mark.parametrize(("state", "options", "extra"), [
    (lambda: {"model": official_state()}, {"num_frames": 4, "image_size": 32, "encoder_heads": 3, "decoder_heads": 2},
     {"video": {"sampling_rate": 4}, "converted_from": "videomae"}),  # VideoMAE samples every 4th frame
    (lambda: {"model": official_state()}, {"num_frames": 4, "image_size": 32, "encoder_heads": 3, "decoder_heads": 2, "sampling_rate": 2},
     {"video": {"sampling_rate": 2}, "converted_from": "videomae"}),
    (lambda: {"model": mae_state(image=32)}, {"image_size": 32}, {"image": {}, "converted_from": "mae"}),
    (lambda: {"model": audiomae_state(patch=8, frames=32, mels=16)}, {"num_frames": 32, "num_mel_bins": 16},
     {"frontend": {**AUDIOMAE_FBANK, "num_frames": 32, "num_mel_bins": 16}, "converted_from": "audiomae"}),
    (lambda: {"base_model": pointmae_state()}, {}, {"points": {"num_points": 1024}, "converted_from": "pointmae"}),  # Point-MAE's npoints
], ids=["videomae", "videomae-stride-2", "mae", "audiomae", "pointmae"])
def test_convert_checkpoint_returns_the_layouts_preprocessing_settings(tmp_path, state, options, extra):
    torch.save(state(), tmp_path / "checkpoint.pth")
    _, got = convert_checkpoint(tmp_path / "checkpoint.pth", **options)
    assert got == extra


def test_a_half_precision_file_converts_to_float32_weights(tmp_path):
    """safetensors files are often saved in float16 / bfloat16: the model is float32, holding
    the same values (which float32 represents exactly)."""
    state = mae_state(image=32)
    for dtype in (torch.float16, torch.bfloat16):
        save_file({k: v.to(dtype) for k, v in state.items()}, tmp_path / "model.safetensors")
        model, _ = convert_checkpoint(tmp_path / "model.safetensors", image_size=32)
        qkv = model.encoder.transformer.blocks[0].attn.qkv.weight
        assert qkv.dtype == torch.float32 and torch.equal(qkv, state["blocks.0.attn.qkv.weight"].to(dtype).float())
