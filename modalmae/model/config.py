"""Model sizes. Presets are plain functions returning a ``MAEConfig``; pass overrides as kwargs.

``mae_base`` is ViT-B (768 wide, 12 blocks, 12 heads) with MAE's 512-wide, 8-block decoder, the
configuration of MAE, Audio-MAE and VideoMAE ViT-B. ``mae_tiny`` is for tests and CPU demos.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class MAEConfig:
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # LayerNorm epsilon (MAE: 1e-6; transformers' VideoMAE default: 1e-12)
    # The epsilon of the decoder's last LayerNorm and of the pooled norm when they differ from
    # ``norm_eps`` (transformers' VideoMAE builds both with torch's default 1e-5); None: norm_eps.
    decoder_norm_eps: float | None = None
    pooled_norm_eps: float | None = None
    cls_token: bool = False
    # The encoder's last LayerNorm over every token (MAE pretraining). Encoders fine-tuned with
    # mean pooling (VideoMAE, Audio-MAE) drop it and normalize the pooled feature instead
    # (``pooled_norm``, their ``fc_norm``).
    encoder_norm: bool = True
    pooled_norm: bool = False
    # A learned embedding added to every input token: the modality embedding of an encoder
    # taken out of a joint model (``MultiModalMAE.encoder_for``).
    modality_embed: bool = False
    norm_pix_loss: bool = True
    # Local attention in the decoder (Audio-MAE: windows of 4x4 tokens, shifted by (2, 0) in
    # every other block). None = global attention. decoder_shift None = half a window.
    decoder_window: tuple[int, ...] | None = None
    decoder_shift: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MAEConfig":
        d = dict(d)
        for key in ("decoder_window", "decoder_shift"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def mae_tiny(**overrides) -> MAEConfig:
    """192 wide, 4 blocks, 3 heads; decoder 128 wide, 2 blocks: seconds per step on a CPU."""
    base = MAEConfig(encoder_dim=192, encoder_depth=4, encoder_heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4)
    return replace(base, **overrides)


def mae_small(**overrides) -> MAEConfig:
    """ViT-S encoder (384 / 12 / 6) with a 256-wide, 4-block decoder."""
    base = MAEConfig(encoder_dim=384, encoder_depth=12, encoder_heads=6, decoder_dim=256, decoder_depth=4, decoder_heads=8)
    return replace(base, **overrides)


def mae_base(**overrides) -> MAEConfig:
    """ViT-B encoder (768 / 12 / 12) with MAE's decoder (512 / 8 / 16)."""
    return replace(MAEConfig(), **overrides)


def mae_large(**overrides) -> MAEConfig:
    """ViT-L encoder (1024 / 24 / 16) with MAE's decoder (512 / 8 / 16)."""
    return replace(MAEConfig(encoder_dim=1024, encoder_depth=24, encoder_heads=16), **overrides)


PRESETS = {"tiny": mae_tiny, "small": mae_small, "base": mae_base, "large": mae_large}


# VideoMAE pairs its encoders with a smaller decoder than MAE's: 4 blocks, half the encoder's
# width for ViT-S/B (192 / 384) and 512 for ViT-L, MLP ratio 4.
VIDEOMAE_DECODERS = {
    "small": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3},
    "base": {"decoder_dim": 384, "decoder_depth": 4, "decoder_heads": 6},
    "large": {"decoder_dim": 512, "decoder_depth": 4, "decoder_heads": 8},
}

# Point-MAE: a 384-wide, 12-block encoder (our "small" but 6 heads) with a 4-block decoder of
# the same width.
POINTMAE_DECODERS = {
    "small": {"decoder_dim": 384, "decoder_depth": 4, "decoder_heads": 6},
}
