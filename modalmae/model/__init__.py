"""The modality-agnostic masked autoencoder."""

from modalmae.model.config import POINTMAE_DECODERS, PRESETS, VIDEOMAE_DECODERS, MAEConfig, mae_base, mae_large, mae_small, mae_tiny
from modalmae.model.mae import Decoder, Encoder, MAEOutput, MaskedAutoencoder

__all__ = [
    "PRESETS", "VIDEOMAE_DECODERS", "POINTMAE_DECODERS", "MAEConfig", "mae_tiny", "mae_small", "mae_base", "mae_large",
    "Encoder", "Decoder", "MaskedAutoencoder", "MAEOutput",
]
