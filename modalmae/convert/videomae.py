"""VideoMAE checkpoints (Tong et al. 2022) -> our ``MaskedAutoencoder`` / ``Encoder``.

Two layouts, key and shape mapping only (nothing is downloaded):

- transformers: ``VideoMAEForPreTraining`` (``videomae.`` prefix, decoder under ``decoder.``),
  ``VideoMAEModel`` (no prefix) and ``VideoMAEForVideoClassification`` (``fc_norm``,
  ``classifier``), with their ``config.json``. Query / value biases are ``q_bias`` / ``v_bias``
  in files written by transformers 4, ``query.bias`` / ``value.bias`` in 5; both are read.
- the official repository's ``.pth`` (MCG-NJU/VideoMAE, also VideoMAE V2): weights under a
  ``model`` or ``module`` key; pretraining (``encoder.patch_embed``, ``encoder.blocks.N``,
  ``encoder_to_decoder``, ``decoder.blocks.N``, ``decoder.head``) or fine-tuned (``patch_embed``,
  ``blocks.N``, ``fc_norm``, ``head``). These files do not record the clip size or the number
  of heads: they default to 16 frames at 224 and the standard heads of each width.

VideoMAE keeps separate biases on query and value only; they go into our fused ``qkv`` with a
zero key bias, which computes the same thing. ``encoder_to_decoder`` has no bias and gets a zero
one. Both sides use the same fixed sinusoid position tables, so none are copied. Encoders
fine-tuned with mean pooling have no final LayerNorm (``encoder_norm=False``) and normalize the
pooled feature (``pooled_norm``); classifier heads are not kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modalmae.convert.common import ENCODER_HEADS, block_weights, count_blocks, heads_for, load_mapped
from modalmae.model import Encoder, MAEConfig, MaskedAutoencoder
from modalmae.tokenizers.video import VideoTubes

# The official pretraining scripts' decoders: 4 blocks, heads by width (ViT-S/B/L/H).
VIDEOMAE_DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}


def _hf_attention(src: dict[str, Tensor], hf: str, ours: str) -> dict[str, Tensor]:
    """transformers' separate query / key / value -> a timm-style block under ``ours``."""
    attn = f"{hf}.attention.attention"
    dim = src[f"{attn}.query.weight"].shape[0]
    zero = torch.zeros(dim)
    q_bias = src.get(f"{attn}.q_bias", src.get(f"{attn}.query.bias", zero))
    v_bias = src.get(f"{attn}.v_bias", src.get(f"{attn}.value.bias", zero))
    timm = {
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
    return timm


def _decoder_ends(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The decoder's input projection, mask token, final norm and head: the same keys in the
    transformers pretraining layout and the official one."""
    projection = state["encoder_to_decoder.weight"]
    return {
        "decoder.embed.weight": projection,
        "decoder.embed.bias": torch.zeros(projection.shape[0]),  # VideoMAE's projection has no bias
        "decoder.mask_token": state["mask_token"],
        "decoder.transformer.norm.weight": state["decoder.norm.weight"],
        "decoder.transformer.norm.bias": state["decoder.norm.bias"],
        "decoder.head.weight": state["decoder.head.weight"],
        "decoder.head.bias": state["decoder.head.bias"],
    }


# transformers' VideoMAE builds the decoder's last LayerNorm and the classifier's fc_norm with
# torch's default epsilon, whatever its layer_norm_eps says (modeling_videomae.py).
TORCH_LAYER_NORM_EPS = 1e-5


def _require_rgb(channels: int, *, what: str) -> None:
    """VideoMAE's clips are RGB, normalised with ImageNet's statistics; a file with another number of
    channels carries no statistics of its own, so it is refused rather than normalised wrongly."""
    if channels != 3:
        raise ValueError(f"{what}: the patch embedding takes {channels} channels; only RGB (3) checkpoints are converted")


def videomae_config(hf: dict, *, has_fc_norm: bool = False) -> tuple[dict, MAEConfig]:
    """transformers ``VideoMAEConfig.to_dict()`` -> (VideoTubes kwargs, MAEConfig)."""
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported activation {hf['hidden_act']!r} (only exact GELU)")
    enc_ratio = hf["intermediate_size"] / hf["hidden_size"]
    dec_ratio = hf["decoder_intermediate_size"] / hf["decoder_hidden_size"]
    if enc_ratio != dec_ratio:
        raise ValueError(f"encoder and decoder MLP ratios differ ({enc_ratio} vs {dec_ratio}); MAEConfig has one")
    _require_rgb(hf["num_channels"], what="VideoMAE (transformers)")
    tokenizer = {
        "embed_dim": hf["hidden_size"], "num_frames": hf["num_frames"], "image_size": hf["image_size"],
        "tubelet_size": hf["tubelet_size"], "patch_size": hf["patch_size"], "in_channels": hf["num_channels"],
    }
    # transformers' use_mean_pooling (default True) means "no final LayerNorm in the encoder".
    mean_pooling = hf.get("use_mean_pooling", True)
    config = MAEConfig(
        encoder_dim=hf["hidden_size"], encoder_depth=hf["num_hidden_layers"], encoder_heads=hf["num_attention_heads"],
        decoder_dim=hf["decoder_hidden_size"], decoder_depth=hf["decoder_num_hidden_layers"],
        decoder_heads=hf["decoder_num_attention_heads"], mlp_ratio=enc_ratio, norm_eps=hf["layer_norm_eps"],
        decoder_norm_eps=TORCH_LAYER_NORM_EPS, pooled_norm_eps=TORCH_LAYER_NORM_EPS,
        norm_pix_loss=hf.get("norm_pix_loss", True), encoder_norm=not mean_pooling, pooled_norm=mean_pooling and has_fc_norm,
    )
    return tokenizer, config


def videomae_from_transformers(state: dict[str, Tensor], hf_config: dict) -> MaskedAutoencoder | Encoder:
    """Our model from a transformers VideoMAE state dict and its config dict: the masked
    autoencoder for ``VideoMAEForPreTraining``, the encoder alone for the other classes."""
    prefix = "videomae." if any(k.startswith("videomae.") for k in state) else ""
    has_decoder = "encoder_to_decoder.weight" in state
    tok_kwargs, config = videomae_config(hf_config, has_fc_norm="fc_norm.weight" in state)
    tokenizer = VideoTubes(**tok_kwargs)
    enc = {
        "tokenizer.proj.weight": state[f"{prefix}embeddings.patch_embeddings.projection.weight"],
        "tokenizer.proj.bias": state[f"{prefix}embeddings.patch_embeddings.projection.bias"],
    }
    if config.encoder_norm:
        enc["transformer.norm.weight"], enc["transformer.norm.bias"] = state[f"{prefix}layernorm.weight"], state[f"{prefix}layernorm.bias"]
    if config.pooled_norm:
        enc["fc_norm.weight"], enc["fc_norm.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
    for i in range(config.encoder_depth):
        enc.update(_hf_attention(state, f"{prefix}encoder.layer.{i}", f"transformer.blocks.{i}"))
    if not has_decoder:
        return load_mapped(Encoder(tokenizer, config), enc, what="VideoMAE encoder (transformers)")
    mapped = {**{f"encoder.{k}": v for k, v in enc.items()}, **_decoder_ends(state)}
    for i in range(config.decoder_depth):
        mapped.update(_hf_attention(state, f"decoder.decoder_layers.{i}", f"decoder.transformer.blocks.{i}"))
    return load_mapped(MaskedAutoencoder(tokenizer, config), mapped, what="VideoMAE (transformers)")


def videomae_from_official(
    state: dict[str, Tensor],
    *,
    num_frames: int = 16,
    image_size: int = 224,
    encoder_heads: int | None = None,
    decoder_heads: int | None = None,
    norm_eps: float = 1e-6,
    norm_pix_loss: bool = True,
) -> MaskedAutoencoder | Encoder:
    """Our model from the official repository's state dict (the tensors under ``model``): the
    masked autoencoder for a pretraining checkpoint, the encoder alone for a fine-tuned one."""
    pretrain = "encoder.patch_embed.proj.weight" in state
    src = "encoder." if pretrain else ""
    proj = state[f"{src}patch_embed.proj.weight"]  # [D, C, t, p, p]
    if proj.ndim != 5 or proj.shape[3] != proj.shape[4]:
        raise ValueError(f"VideoMAE (official layout): the patch embedding should be [D, C, t, p, p], got {list(proj.shape)}")
    dim, channels, tubelet, patch = proj.shape[0], proj.shape[1], proj.shape[2], proj.shape[3]
    _require_rgb(channels, what="VideoMAE (official layout)")
    depth = count_blocks(state, f"{src}blocks.")
    mlp_ratio = state[f"{src}blocks.0.mlp.fc1.weight"].shape[0] / dim
    has_norm, has_fc_norm = f"{src}norm.weight" in state, "fc_norm.weight" in state
    dec_dim = state["encoder_to_decoder.weight"].shape[0] if pretrain else 384
    config = MAEConfig(
        encoder_dim=dim, encoder_depth=depth, encoder_heads=encoder_heads or heads_for(dim, ENCODER_HEADS, what="VideoMAE encoder"),
        decoder_dim=dec_dim, decoder_depth=count_blocks(state, "decoder.blocks.") if pretrain else 4,
        decoder_heads=decoder_heads or heads_for(dec_dim, VIDEOMAE_DECODER_HEADS, what="VideoMAE decoder"),
        mlp_ratio=mlp_ratio, norm_eps=norm_eps, norm_pix_loss=norm_pix_loss, encoder_norm=has_norm, pooled_norm=has_fc_norm,
    )
    tokenizer = VideoTubes(
        embed_dim=dim, num_frames=num_frames, image_size=image_size, tubelet_size=tubelet, patch_size=patch, in_channels=channels,
    )
    enc = {"tokenizer.proj.weight": proj, "tokenizer.proj.bias": state[f"{src}patch_embed.proj.bias"]}
    if has_norm:
        enc["transformer.norm.weight"], enc["transformer.norm.bias"] = state[f"{src}norm.weight"], state[f"{src}norm.bias"]
    if has_fc_norm:
        enc["fc_norm.weight"], enc["fc_norm.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
    for i in range(depth):
        enc.update(block_weights(state, f"{src}blocks.{i}", f"transformer.blocks.{i}"))
    if not pretrain:
        return load_mapped(Encoder(tokenizer, config), enc, what="VideoMAE encoder (official layout)")
    mapped = {**{f"encoder.{k}": v for k, v in enc.items()}, **_decoder_ends(state)}
    for i in range(config.decoder_depth):
        mapped.update(block_weights(state, f"decoder.blocks.{i}", f"decoder.transformer.blocks.{i}"))
    return load_mapped(MaskedAutoencoder(tokenizer, config), mapped, what="VideoMAE (official layout)")
