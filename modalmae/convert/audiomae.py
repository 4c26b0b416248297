"""Audio-MAE checkpoints (Huang et al. 2022; timm-style ViT layout) -> our models.

Key and shape mapping only (nothing is downloaded). The official ``.pth`` holds, under
``model``, MAE's timm ViT layout (``common.timm_mae``), with a one-channel 16 x 16 stride-16
convolution over the [1, 1024, 128] fbank: pretraining checkpoints (``models_mae.py``) with
the decoder, fine-tuned ones (``models_vit.py``, global pooling) with ``fc_norm`` and a
classifier ``head`` (not kept). The convolution flattened is our patch projection (same (time,
frequency) order as our ``patchify``). The number of heads is not in the file: the standard
heads of each width (ViT-B: 12) and Audio-MAE's 16 decoder heads are the defaults. Audio-MAE's
local-attention decoder (SwinV2-CR blocks, recognised by the weights a ViT block lacks) has no
counterpart here: such a checkpoint converts to its encoder alone, with a warning.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from modalmae.convert.common import VIT_BLOCK, VIT_BLOCK_BIASES, timm_mae
from modalmae.model import Encoder, MaskedAutoencoder
from modalmae.tokenizers.spectrogram import SpectrogramPatches


def audiomae_from_timm(
    state: dict[str, Tensor],
    *,
    num_frames: int = 1024,
    num_mel_bins: int = 128,
    encoder_heads: int | None = None,
    decoder_heads: int = 16,
    norm_eps: float = 1e-6,
    norm_pix_loss: bool = True,
) -> MaskedAutoencoder | Encoder:
    """Our model from an Audio-MAE state dict: the masked autoencoder for a pretraining
    checkpoint with the global decoder, else the encoder alone."""
    proj = state["patch_embed.proj.weight"]  # [D, 1, p, p]
    dim, patch = proj.shape[0], tuple(proj.shape[2:])
    if proj.shape[1] != 1:
        raise ValueError(f"Audio-MAE patch embedding expects 1 input channel, this one has {proj.shape[1]}")
    tokenizer = SpectrogramPatches(embed_dim=dim, num_frames=num_frames, num_mel_bins=num_mel_bins, patch_size=patch)
    num_tokens = state["pos_embed"].shape[1] - 1
    if num_tokens != tokenizer.num_tokens:
        raise ValueError(
            f"the checkpoint has {num_tokens} patch positions, a {num_frames} x {num_mel_bins} fbank in {patch} patches gives "
            f"{tokenizer.num_tokens}: pass the num_frames / num_mel_bins it was trained with (overlapping patches are not supported)"
        )
    # MAE's global decoder is made of plain ViT blocks. Audio-MAE's local one (decoder_mode=1) has
    # SwinV2-CR blocks: the same qkv / proj / norm / mlp names plus attn.meta_mlp.* and attn.tau
    # (its relative positions are not saved), so any weight a ViT block lacks marks it.
    decoder_names = {k.split(".", 2)[-1] for k in state if k.startswith("decoder_blocks.")}  # "decoder_blocks.N.<name>" -> name
    global_decoder = "decoder_embed.weight" in state and set(VIT_BLOCK) <= decoder_names <= {*VIT_BLOCK, *VIT_BLOCK_BIASES}
    if "decoder_embed.weight" in state and not global_decoder:
        warnings.warn("Audio-MAE's local-attention (Swin) decoder has no counterpart here: converting the encoder only", stacklevel=2)
    return timm_mae(
        state, tokenizer, decoder=global_decoder, encoder_heads=encoder_heads, decoder_heads=decoder_heads,
        norm_eps=norm_eps, norm_pix_loss=norm_pix_loss, what="Audio-MAE",
    )
