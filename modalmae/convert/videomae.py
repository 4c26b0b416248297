"""Weights of transformers' ``VideoMAEForPreTraining`` -> our ``MaskedAutoencoder``.

Key and shape mapping only; nothing is downloaded. transformers keeps separate query / key /
value projections with biases on query and value only (VideoMAE's ``q_bias`` / ``v_bias``):
they are stacked into our fused ``qkv`` with a zero key bias, which computes the same thing.
Likewise ``encoder_to_decoder`` has no bias and gets a zero one. Both sides use the same fixed
sinusoid position tables, so none are copied.

    from transformers import VideoMAEForPreTraining
    hf = VideoMAEForPreTraining.from_pretrained(local_folder)
    model = videomae_from_transformers(hf.state_dict(), hf.config.to_dict())
"""

from __future__ import annotations

import torch
from torch import Tensor

from modalmae.model import MAEConfig, MaskedAutoencoder
from modalmae.tokenizers.video import VideoTubes


def videomae_config(hf: dict) -> tuple[dict, MAEConfig]:
    """transformers ``VideoMAEConfig.to_dict()`` -> (VideoTubes kwargs, MAEConfig)."""
    if hf.get("use_mean_pooling", True):
        raise ValueError(
            "this VideoMAE config has use_mean_pooling=True, i.e. no final encoder LayerNorm; "
            "only the pretraining layout (use_mean_pooling=False) maps onto MaskedAutoencoder"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported activation {hf['hidden_act']!r} (only exact GELU)")
    enc_ratio = hf["intermediate_size"] / hf["hidden_size"]
    dec_ratio = hf["decoder_intermediate_size"] / hf["decoder_hidden_size"]
    if enc_ratio != dec_ratio:
        raise ValueError(f"encoder and decoder MLP ratios differ ({enc_ratio} vs {dec_ratio}); MAEConfig has one")
    tokenizer = {
        "embed_dim": hf["hidden_size"], "num_frames": hf["num_frames"], "image_size": hf["image_size"],
        "tubelet_size": hf["tubelet_size"], "patch_size": hf["patch_size"], "in_channels": hf["num_channels"],
    }
    config = MAEConfig(
        encoder_dim=hf["hidden_size"], encoder_depth=hf["num_hidden_layers"], encoder_heads=hf["num_attention_heads"],
        decoder_dim=hf["decoder_hidden_size"], decoder_depth=hf["decoder_num_hidden_layers"],
        decoder_heads=hf["decoder_num_attention_heads"], mlp_ratio=enc_ratio, norm_eps=hf["layer_norm_eps"],
        norm_pix_loss=hf.get("norm_pix_loss", True),
    )
    return tokenizer, config


def _block(src: dict[str, Tensor], hf: str, ours: str, dim: int) -> dict[str, Tensor]:
    attn = f"{hf}.attention.attention"
    zero = torch.zeros(dim)
    q_bias, v_bias = src.get(f"{attn}.query.bias", zero), src.get(f"{attn}.value.bias", zero)
    return {
        f"{ours}.norm1.weight": src[f"{hf}.layernorm_before.weight"],
        f"{ours}.norm1.bias": src[f"{hf}.layernorm_before.bias"],
        f"{ours}.attn.qkv.weight": torch.cat([src[f"{attn}.{n}.weight"] for n in ("query", "key", "value")]),
        f"{ours}.attn.qkv.bias": torch.cat([q_bias, zero, v_bias]),
        f"{ours}.attn.proj.weight": src[f"{hf}.attention.output.dense.weight"],
        f"{ours}.attn.proj.bias": src[f"{hf}.attention.output.dense.bias"],
        f"{ours}.norm2.weight": src[f"{hf}.layernorm_after.weight"],
        f"{ours}.norm2.bias": src[f"{hf}.layernorm_after.bias"],
        f"{ours}.mlp.fc1.weight": src[f"{hf}.intermediate.dense.weight"],
        f"{ours}.mlp.fc1.bias": src[f"{hf}.intermediate.dense.bias"],
        f"{ours}.mlp.fc2.weight": src[f"{hf}.output.dense.weight"],
        f"{ours}.mlp.fc2.bias": src[f"{hf}.output.dense.bias"],
    }


def videomae_from_transformers(state: dict[str, Tensor], hf_config: dict) -> MaskedAutoencoder:
    """Build our model from a ``VideoMAEForPreTraining`` state dict and its config dict."""
    tok_kwargs, config = videomae_config(hf_config)
    model = MaskedAutoencoder(VideoTubes(**tok_kwargs), config)
    enc, dec = config.encoder_dim, config.decoder_dim
    mapped = {
        "encoder.tokenizer.proj.weight": state["videomae.embeddings.patch_embeddings.projection.weight"],
        "encoder.tokenizer.proj.bias": state["videomae.embeddings.patch_embeddings.projection.bias"],
        "encoder.transformer.norm.weight": state["videomae.layernorm.weight"],
        "encoder.transformer.norm.bias": state["videomae.layernorm.bias"],
        "decoder.embed.weight": state["encoder_to_decoder.weight"],
        "decoder.embed.bias": torch.zeros(dec),
        "decoder.mask_token": state["mask_token"],
        "decoder.transformer.norm.weight": state["decoder.norm.weight"],
        "decoder.transformer.norm.bias": state["decoder.norm.bias"],
        "decoder.head.weight": state["decoder.head.weight"],
        "decoder.head.bias": state["decoder.head.bias"],
    }
    for i in range(config.encoder_depth):
        mapped.update(_block(state, f"videomae.encoder.layer.{i}", f"encoder.transformer.blocks.{i}", enc))
    for i in range(config.decoder_depth):
        mapped.update(_block(state, f"decoder.decoder_layers.{i}", f"decoder.transformer.blocks.{i}", dec))
    # Position tables are buffers computed from the config; keep ours.
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if set(missing) - buffers or unexpected:
        raise KeyError(f"VideoMAE conversion left weights unset: {sorted(set(missing) - buffers)}; unexpected: {unexpected}")
    return model
