"""Audio-MAE pretraining on WebDataset shards of audio (Huang et al., "Masked Autoencoders that Listen").

Streams the shards written by ``pipelines/build_shards.py --modality audio``: each clip is
decoded, a random ~10 s window is turned into a 1024 x 128 Kaldi log-mel filterbank, cut into
16 x 16 patches (512 tokens), 80 % are masked, and the model reconstructs them (norm-pix MSE).

    python recipes/audio_mae.py --shards shards/speech --model tiny --max-steps 20
    accelerate launch recipes/audio_mae.py --shards shards/audioset --model base

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (the
trained encoder + decoder with its tokenizer and front-end config; load it with
``modalmae.checkpoint.load_encoder``), ranks/rank*.json, reconstruction.png.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modalmae.data.audio import AudioDecoder
from modalmae.model import PRESETS, MaskedAutoencoder
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.masking.color import ColorOptions
from modalmae.train.config import MASK_RATIO_HELP, MaskRatio, PretrainConfig, arg
from modalmae.train.recipe import Pretraining, run_pretraining


@dataclass
class AudioMAEConfig(ColorOptions, PretrainConfig):
    output: str = arg("runs/audio_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    mask_ratio: MaskRatio = arg(MaskRatio("0.8"), MASK_RATIO_HELP.format(published="Audio-MAE: 0.8"))
    masking: str = arg("random", "random: uniform per sample (Audio-MAE); color: thresholded filtered noise over the time x frequency patch grid (ColorMAE, --noise-color)", choices=("random", "color"))
    blr: float = arg(2e-4, "base learning rate for an effective batch of 256 (Audio-MAE: 2e-4)")
    sample_rate: int = arg(16000, "audio is resampled to this rate before the filterbank")
    num_frames: int = arg(1024, "filterbank frames per clip (10 ms each; 1024 = 10.24 s); clips are cropped or padded")
    num_mel_bins: int = arg(128, "mel bins of the filterbank")
    patch_size: int = arg(16, "square patch size in frames x bins (16 gives 64 x 8 = 512 tokens)")
    fbank_mean: float = arg(-4.2677393, "normalization: (fbank - mean) / (2 * std); AudioSet statistics by default")
    fbank_std: float = arg(4.5689974, "normalization std (see --fbank-mean)")
    local_attention: bool = arg(False, "decoder attends within 4x4-token windows, shifted by 2 in time every other block (Audio-MAE's local decoder)")


def build(cfg: AudioMAEConfig) -> Pretraining:
    frontend = AudioFrontend(
        sample_rate=cfg.sample_rate, num_frames=cfg.num_frames, num_mel_bins=cfg.num_mel_bins,
        mean=cfg.fbank_mean, std=cfg.fbank_std,
    )
    window = dict(decoder_window=(4, 4), decoder_shift=(2, 0)) if cfg.local_attention else {}
    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss, **window)
    tokenizer = SpectrogramPatches(
        embed_dim=model_cfg.encoder_dim, num_frames=cfg.num_frames, num_mel_bins=cfg.num_mel_bins, patch_size=cfg.patch_size
    )

    return Pretraining(
        model=MaskedAutoencoder(tokenizer, model_cfg), decode=AudioDecoder(frontend), extra={"frontend": frontend.config()},
        masking=cfg.color_masks(tokenizer.grid) if cfg.masking == "color" else None,
    )


def main(argv: list[str] | None = None) -> int:
    return run_pretraining("audio", AudioMAEConfig, build, argv, doc=__doc__)

if __name__ == "__main__":
    sys.exit(main())
