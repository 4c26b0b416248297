"""Audio-visual pretraining: one encoder over the sound and the pictures of the same clips (CAV-MAE, Gong et al. 2023; AVSiam).

Streams video shards built with ``pipelines/build_shards.py --modality video --extract-audio``.
Each sample gives a video clip (--num-frames frames --sampling-rate apart, multi-scale cropped
to --input-size, cut into tubes) and the audio window centred on that clip (--audio-seconds,
default the filterbank's own 10.24 s; silence where it runs past the recording), as a log-mel
fbank cut into 16 x 16 patches. Both modalities' tokens enter one encoder with a learned
modality embedding each: --specific-depth blocks of their own (CAV-MAE: 11 of 12; default all but
the last), then shared blocks (0: fully shared, AVSiam). The decoder reconstructs the masked
patches of both (--audio-mask-ratio, --video-mask-ratio; CAV-MAE: 75 % each), and the pooled
audio and video features of each clip, each encoded alone, are pulled together against the other
clips of the batch on every process (InfoNCE, --contrastive-weight; CAV-MAE: 0.01). A clip
without sound trains on its video alone. With --eval-shards (other clips), audio->video and
video->audio retrieval recall@1/5/10 is logged in metrics.jsonl.

    python pipelines/build_shards.py --modality video --extract-audio --input clips/ --output shards/av
    python recipes/av_mae.py --shards shards/av --model tiny --num-frames 8 --input-size 112 --audio-frames 512 --max-steps 30
    accelerate launch recipes/av_mae.py --shards shards/vggsound --model base --eval-shards shards/vggsound-test

Writes to --output: config.json, metrics.jsonl (loss, loss_audio, loss_video, contrastive),
checkpoints/step_*/ (resumable), model/ (the joint model; ``load_encoder(path, modality="audio")``
takes one modality's encoder), ranks/rank*.json, reconstruction.png (audio and video of one clip).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modalmae.data.audio import MAX_WINDOW_VALUES
from modalmae.data.av import AVDecoder
from modalmae.data.video import ClipOptions
from modalmae.masking import random_masking, tube_masking
from modalmae.model import PRESETS
from modalmae.model.multimodal import MultiModalMAE
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes
from modalmae.train.feed import Corpus
from modalmae.train.config import arg
from modalmae.train.joint import JointConfig, JointPretraining, Stream, parse_weights, run_joint_pretraining
from modalmae.train.recipe import open_shards


@dataclass
class AVMAEConfig(ClipOptions, JointConfig):
    output: str = arg("runs/av_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    audio_mask_ratio: float = arg(0.75, "fraction of spectrogram patches masked (CAV-MAE: 0.75)")
    video_mask_ratio: float = arg(0.75, "fraction of video tubes masked (CAV-MAE: 0.75; VideoMAE alone: 0.9)")
    video_masking: str = arg("tube", "tube: one spatial mask for every time slice (VideoMAE); random: independent per tube", choices=("tube", "random"))
    contrastive_weight: float = arg(0.01, "weight of the InfoNCE term between pooled audio and video features (CAV-MAE: 0.01; 0 = reconstruction only)")
    tubelet_size: int = arg(2, "frames per tube")
    patch_size: int = arg(16, "tube height and width in pixels, and the spectrogram patch size")
    sample_rate: int = arg(16000, "audio is resampled to this rate before the filterbank")
    audio_frames: int = arg(1024, "filterbank frames per clip (10 ms each; 1024 = 10.24 s, Audio-MAE and CAV-MAE)")
    num_mel_bins: int = arg(128, "mel bins of the filterbank")
    audio_seconds: float = arg(None, "length of the audio window centred on each clip (default: what the filterbank frames hold)")
    fbank_mean: float = arg(-4.2677393, "filterbank normalization: (fbank - mean) / (2 * std); AudioSet statistics by default")
    fbank_std: float = arg(4.5689974, "filterbank normalization std")
    max_audio_values: int = arg(MAX_WINDOW_VALUES, "skip a clip whose audio window would hold more samples x channels than this (sized from the audio header's rate, before reading)")


def build(cfg: AVMAEConfig) -> JointPretraining:
    frontend = AudioFrontend(sample_rate=cfg.sample_rate, num_frames=cfg.audio_frames, num_mel_bins=cfg.num_mel_bins, mean=cfg.fbank_mean, std=cfg.fbank_std)

    def decoder(train: bool) -> AVDecoder:
        return AVDecoder(
            video=cfg.video_decoder(train=train, eight_bit=True), frontend=frontend, audio_seconds=cfg.audio_seconds, train=train, max_window_values=cfg.max_audio_values,
        )

    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss)
    tokenizers = {
        "audio": SpectrogramPatches(embed_dim=model_cfg.encoder_dim, num_frames=cfg.audio_frames, num_mel_bins=cfg.num_mel_bins, patch_size=cfg.patch_size),
        "video": VideoTubes(
            embed_dim=model_cfg.encoder_dim, num_frames=cfg.num_frames, image_size=cfg.input_size, tubelet_size=cfg.tubelet_size, patch_size=cfg.patch_size,
        ),
    }
    specific = model_cfg.encoder_depth - 1 if cfg.specific_depth is None else cfg.specific_depth
    model = MultiModalMAE(tokenizers, model_cfg, specific_depth=specific, loss_weights=parse_weights(cfg.loss_weights, flag="--loss-weights"))
    audio_tokens, grid = tokenizers["audio"].num_tokens, tokenizers["video"].grid

    def mask_video(x, generator, batch):
        if cfg.video_masking == "tube":
            return tube_masking(x.shape[0], grid, cfg.video_mask_ratio, generator=generator)
        return random_masking(x.shape[0], tokenizers["video"].num_tokens, cfg.video_mask_ratio, generator=generator)

    held_out = decoder(train=False)
    corpus = Corpus(name="av", sources=open_shards(cfg.shards, "video"), decode=decoder(train=True), batch_size=cfg.batch_size, weights=cfg.weights)
    return JointPretraining(
        model=model,
        streams=[Stream(corpus, ("audio", "video"), shard_modality="video", contrast=("audio", "video"))],
        masking={"audio": lambda x, generator, batch: random_masking(x.shape[0], audio_tokens, cfg.audio_mask_ratio, generator=generator), "video": mask_video},
        # What each modality's sample decoder needs to be rebuilt from the checkpoint.
        extra={"frontend": frontend.config(), "video": {"sampling_rate": cfg.sampling_rate}, "av": {"audio_seconds": held_out.audio_seconds}},
        eval_decoder=held_out,
    )


def main(argv: list[str] | None = None) -> int:
    return run_joint_pretraining(AVMAEConfig, build, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
