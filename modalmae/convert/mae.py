"""MAE image checkpoints (He et al. 2022, facebookresearch/mae) -> our models.

Key and shape mapping only (nothing is downloaded). The official ``.pth`` files hold, under
``model``, MAE's timm ViT layout (``common.timm_mae``) with a three-channel p x p stride-p
convolution over 224 x 224 RGB:

- ``mae_visualize_vit_*.pth`` and pretraining checkpoints of ``main_pretrain.py``: encoder and
  decoder -> our ``MaskedAutoencoder`` (``ImagePatches``);
- ``mae_pretrain_vit_*.pth``: the pretrained encoder alone, with its final ``norm``;
- ``mae_finetuned_vit_*.pth`` (``models_vit.py``, global pooling): the encoder with ``fc_norm``
  instead of ``norm`` and a classifier ``head`` (not kept).

The convolution is our patch projection as it is (MAE's ``patchify`` order, which ours follows).
The files do not record the image size or the number of heads: 224, the standard heads of each
width (ViT-B: 12, ViT-L and ViT-H: 16) and MAE's 16 decoder heads are the defaults.
"""

from __future__ import annotations

from torch import Tensor

from modalmae.convert.common import timm_mae
from modalmae.model import Encoder, MaskedAutoencoder
from modalmae.tokenizers.image import ImagePatches


def mae_from_timm(
    state: dict[str, Tensor],
    *,
    image_size: int = 224,
    encoder_heads: int | None = None,
    decoder_heads: int = 16,
    norm_eps: float = 1e-6,
    norm_pix_loss: bool = True,
) -> MaskedAutoencoder | Encoder:
    """Our model from an MAE state dict: the masked autoencoder for a checkpoint with its
    decoder, else the encoder alone."""
    proj = state["patch_embed.proj.weight"]  # [D, 3, p, p]
    dim, patch = proj.shape[0], proj.shape[2]
    if proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise ValueError(f"MAE's patch embedding is [D, 3, p, p] (RGB, square patches), this one is {list(proj.shape)}")
    tokenizer = ImagePatches(embed_dim=dim, image_size=image_size, patch_size=patch)
    num_tokens = state["pos_embed"].shape[1] - 1
    if num_tokens != tokenizer.num_tokens:
        raise ValueError(
            f"the checkpoint has {num_tokens} patch positions, a {image_size} x {image_size} image in {patch} x {patch} patches "
            f"gives {tokenizer.num_tokens}: pass the image_size it was trained with"
        )
    return timm_mae(
        state, tokenizer, decoder="decoder_embed.weight" in state, encoder_heads=encoder_heads, decoder_heads=decoder_heads,
        norm_eps=norm_eps, norm_pix_loss=norm_pix_loss, what="MAE",
    )
