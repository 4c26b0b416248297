"""Converters from other projects' checkpoints (key and shape mapping; nothing is downloaded).

    from modalmae.convert import convert_checkpoint
    model, extra = convert_checkpoint("downloads/videomae-base")   # a transformers folder
    save_pretrained(model, "models/videomae-base", extra=extra)     # our folder from then on

``convert_checkpoint`` reads a file or folder the user downloaded (``common.read_state_dict``:
safetensors, or ``torch.load(weights_only=True)``), recognises its layout from the key names
and returns our ``MaskedAutoencoder`` (pretraining checkpoints) or ``Encoder`` (encoder-only
ones) plus the ``extra`` preprocessing settings our pipelines read (audio frontend, video
frame stride). Layouts: transformers' and the official VideoMAE, MAE's timm ViT (images) and
Audio-MAE's (the same layout over a one-channel fbank), Point-MAE.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from modalmae.convert.audiomae import audiomae_from_timm
from modalmae.convert.common import read_state_dict
from modalmae.convert.mae import mae_from_timm
from modalmae.convert.pointmae import pointmae_from_official
from modalmae.convert.videomae import videomae_from_official, videomae_from_transformers

LAYOUTS = ("videomae-transformers", "videomae", "mae", "audiomae", "pointmae")
# MAE's timm ViT layout, told apart by the patch embedding's input channels.
TIMM_MAE_CHANNELS = {3: "mae", 1: "audiomae"}


def detect_layout(state: dict[str, Tensor], hf_config: dict | None) -> str:
    """Which of ``LAYOUTS`` a state dict follows, from its key names (and transformers config)."""
    if hf_config is not None and hf_config.get("model_type") == "videomae":
        return "videomae-transformers"
    if any(k.startswith("MAE_encoder.") for k in state):
        return "pointmae"
    if "encoder.patch_embed.proj.weight" in state or ("patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].ndim == 5):
        return "videomae"
    if "patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].ndim == 4 and "pos_embed" in state:
        channels = state["patch_embed.proj.weight"].shape[1]
        if channels not in TIMM_MAE_CHANNELS:
            raise ValueError(f"a timm ViT with {channels}-channel patches: neither MAE (3, RGB) nor Audio-MAE (1, fbank)")
        return TIMM_MAE_CHANNELS[channels]
    if hf_config is not None:
        raise ValueError(f"unsupported transformers model_type {hf_config.get('model_type')!r} (supported: videomae)")
    raise ValueError(f"unrecognised checkpoint layout (first keys: {sorted(state)[:6]}); supported: {', '.join(LAYOUTS)}")


def convert_checkpoint(path: str | os.PathLike, *, layout: str = "auto", **options) -> tuple[nn.Module, dict]:
    """(our model, extra settings) from another project's checkpoint at ``path``.

    ``options`` go to the layout's converter, for what its files do not record: ``num_frames``
    / ``image_size`` / heads (official VideoMAE), ``image_size`` / heads (MAE), ``num_frames`` /
    ``num_mel_bins`` (Audio-MAE), ``num_groups`` (Point-MAE); ``sampling_rate`` (video frame
    stride, default 4) is kept in ``extra``."""
    state, hf_config = read_state_dict(path)
    if layout == "auto":
        layout = detect_layout(state, hf_config)
    sampling_rate = options.pop("sampling_rate", 4)
    if layout == "videomae-transformers":
        if hf_config is None:
            raise ValueError(f"{path}: the transformers layout needs the folder with its config.json")
        if options:
            raise ValueError(f"{path}: a transformers checkpoint records its sizes in config.json; drop {', '.join(sorted(options))}")
        model = videomae_from_transformers(state, hf_config)
        return model, {"video": {"sampling_rate": sampling_rate}, "converted_from": layout}
    if layout == "videomae":
        return videomae_from_official(state, **options), {"video": {"sampling_rate": sampling_rate}, "converted_from": layout}
    if layout == "mae":
        return mae_from_timm(state, **options), {"image": {}, "converted_from": layout}
    if layout == "audiomae":
        from modalmae.tokenizers.fbank import AudioFrontend

        model = audiomae_from_timm(state, **options)
        tok = model.tokenizer
        frontend = AudioFrontend(num_frames=tok.num_frames, num_mel_bins=tok.num_mel_bins)  # Audio-MAE's fbank and AudioSet stats
        return model, {"frontend": frontend.config(), "converted_from": layout}
    if layout == "pointmae":
        return pointmae_from_official(state, **options), {"points": {"num_points": 1024}, "converted_from": layout}
    raise ValueError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")


__all__ = ["LAYOUTS", "convert_checkpoint", "detect_layout", "read_state_dict"]
