"""Reading other projects' checkpoint files and the mapping steps the converters share.

Files are read without unpickling code: ``.safetensors`` with safetensors, ``.pth`` / ``.pt`` /
``.bin`` / ``.ckpt`` only through ``torch.load(weights_only=True)`` (tensors and plain
containers; anything else is refused by torch). A transformers folder is read from its
``model.safetensors`` (or ``pytorch_model.bin``) and ``config.json``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from modalmae.model import Encoder, MAEConfig, MaskedAutoencoder

# Where training scripts put the weights inside a saved dict (VideoMAE: model / module;
# Point-MAE: base_model; Lightning and others: state_dict).
WRAPPER_KEYS = ("model", "module", "base_model", "state_dict", "model_state")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict | None]:
    """(state dict, transformers config dict or None) from a file or a transformers folder."""
    path = Path(path)
    config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's unpickler names the forbidden global, or the file is not a checkpoint
            raise ValueError(f"{path}: not readable as weights only: torch.load(weights_only=True) refused it ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return unwrap(state, source=path), config


def unwrap(state: dict, *, source: object = "checkpoint") -> dict[str, Tensor]:
    """Descend into the ``model`` / ``module`` / ``base_model`` / ``state_dict`` entry holding the
    tensors, and drop a DDP ``module.`` prefix."""
    while isinstance(state, dict) and not any(isinstance(v, Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{source}: no tensors found (top-level keys: {sorted(state)[:10]})")
        state = inner
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def count_blocks(state: dict[str, Tensor], prefix: str) -> int:
    """How many ``<prefix><i>.`` blocks the state dict holds."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if found != set(range(len(found))):
        raise ValueError(f"blocks under {prefix!r} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


# The weights of a timm-style ViT block that block_weights reads, and the query/key/value biases it
# may read instead of a fused one.
VIT_BLOCK = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)
VIT_BLOCK_BIASES = ("attn.qkv.bias", "attn.q_bias", "attn.v_bias")


def block_weights(src: dict[str, Tensor], prefix: str, ours: str) -> dict[str, Tensor]:
    """A timm-style ViT block (norm1, attn.qkv, attn.proj, norm2, mlp.fc1 / fc2: our own names)
    at ``prefix``. The fused qkv bias is taken as is, built from VideoMAE's ``q_bias`` / ``v_bias``
    (no key bias), or zero when the block has none (Point-MAE)."""
    out = {f"{ours}.{name}": src[f"{prefix}.{name}"] for name in VIT_BLOCK}
    dim = src[f"{prefix}.norm1.weight"].shape[0]
    if f"{prefix}.attn.qkv.bias" in src:
        out[f"{ours}.attn.qkv.bias"] = src[f"{prefix}.attn.qkv.bias"]
    elif f"{prefix}.attn.q_bias" in src:
        out[f"{ours}.attn.qkv.bias"] = torch.cat([src[f"{prefix}.attn.q_bias"], torch.zeros(dim), src[f"{prefix}.attn.v_bias"]])
    else:
        out[f"{ours}.attn.qkv.bias"] = torch.zeros(3 * dim)
    return out


def load_mapped(model: nn.Module, mapped: dict[str, Tensor], *, what: str) -> nn.Module:
    """Load ``mapped`` into ``model``, which must then have every parameter set (buffers such as
    fixed position tables may keep the model's own values). Shapes must match exactly; half-precision
    weights become the model's dtype (float32 as built), without passing through another."""
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{what}: shapes do not match: " + "; ".join(bad[:5]))
    missing, unexpected = model.load_state_dict(mapped, strict=False)  # copied into each parameter's own dtype
    buffers = {name for name, _ in model.named_buffers()}
    unset = sorted(set(missing) - buffers)
    if unset or unexpected:
        raise KeyError(f"{what}: conversion left weights unset: {unset[:8]}; unexpected: {unexpected[:8]}")
    return model.eval()


# Heads of the standard ViT encoders (ViT-Ti/S/B/L/H), for files that do not record them.
# Decoders differ between methods, so each converter has its own table.
ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def heads_for(dim: int, table: dict[int, int], *, what: str) -> int:
    if dim not in table:
        raise ValueError(f"{what}: no standard number of heads for width {dim}; pass it explicitly")
    return table[dim]


def timm_mae(
    state: dict[str, Tensor],
    tokenizer: nn.Module,
    *,
    decoder: bool,
    encoder_heads: int | None,
    decoder_heads: int,
    norm_eps: float,
    norm_pix_loss: bool,
    what: str,
) -> MaskedAutoencoder | Encoder:
    """Our model from MAE's timm ViT layout (facebookresearch/mae, also Audio-MAE's), around
    ``tokenizer``: the masked autoencoder when ``decoder``, else the encoder alone.

    The layout: ``patch_embed.proj`` (a p x p stride-p convolution), ``cls_token``, ``pos_embed``
    [1, 1 + L, D] (first row for the CLS token), ``blocks.N`` (timm blocks: our own names), then
    ``norm`` (pretraining) or ``fc_norm`` (fine-tuned with global pooling; its ``head`` is not
    kept); the pretraining decoder: ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
    ``decoder_blocks.N``, ``decoder_norm``, ``decoder_pred``. The convolution is loaded into the
    tokenizer's projection in its own flattening order, which the tokenizers' patch order
    follows. Position tables are copied, not recomputed, so learned positions convert exactly
    too; the CLS row of ``pos_embed`` is folded into the CLS token (the only thing it is added
    to). The caller checks that ``tokenizer`` has the file's number of positions.
    """
    dim = tokenizer.embed_dim
    depth = count_blocks(state, "blocks.")
    has_norm, has_fc_norm = "norm.weight" in state, "fc_norm.weight" in state
    config = MAEConfig(
        encoder_dim=dim, encoder_depth=depth, encoder_heads=encoder_heads or heads_for(dim, ENCODER_HEADS, what=f"{what} encoder"),
        decoder_dim=state["decoder_embed.weight"].shape[0] if decoder else 512,
        decoder_depth=count_blocks(state, "decoder_blocks.") if decoder else 8,
        decoder_heads=decoder_heads, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, norm_eps=norm_eps,
        cls_token=True, norm_pix_loss=norm_pix_loss, encoder_norm=has_norm, pooled_norm=has_fc_norm,
    )
    pos = state["pos_embed"]  # [1, 1 + L, D]
    enc = {
        "tokenizer.proj.weight": state["patch_embed.proj.weight"].reshape(tokenizer.proj.weight.shape),
        "tokenizer.proj.bias": state["patch_embed.proj.bias"],
        "tokenizer.positions.table": pos[:, 1:],
        "cls_token": state["cls_token"] + pos[:, :1],
    }
    for name, ours, present in (("norm", "transformer.norm", has_norm), ("fc_norm", "fc_norm", has_fc_norm)):
        if present:
            enc[f"{ours}.weight"], enc[f"{ours}.bias"] = state[f"{name}.weight"], state[f"{name}.bias"]
    for i in range(depth):
        enc.update(block_weights(state, f"blocks.{i}", f"transformer.blocks.{i}"))
    if not decoder:
        return load_mapped(Encoder(tokenizer, config), enc, what=f"{what} encoder")
    dec_pos = state["decoder_pos_embed"]
    if dec_pos[:, 0].abs().max() > 1e-6:
        warnings.warn("decoder_pos_embed has a non-zero CLS row, which our decoder does not add: predictions will differ slightly", stacklevel=3)
    mapped = {f"encoder.{k}": v for k, v in enc.items()}
    mapped.update({
        "decoder.embed.weight": state["decoder_embed.weight"],
        "decoder.embed.bias": state["decoder_embed.bias"],
        "decoder.mask_token": state["mask_token"],
        "decoder.positions.table": dec_pos[:, 1:],
        "decoder.transformer.norm.weight": state["decoder_norm.weight"],
        "decoder.transformer.norm.bias": state["decoder_norm.bias"],
        "decoder.head.weight": state["decoder_pred.weight"],
        "decoder.head.bias": state["decoder_pred.bias"],
    })
    for i in range(config.decoder_depth):
        mapped.update(block_weights(state, f"decoder_blocks.{i}", f"decoder.transformer.blocks.{i}"))
    return load_mapped(MaskedAutoencoder(tokenizer, config), mapped, what=what)
