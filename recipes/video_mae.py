"""VideoMAE / VideoMAE V2 pretraining on WebDataset shards of video (Tong et al. 2022; Wang et al. 2023).

Streams the shards written by ``pipelines/build_shards.py --modality video``: 16 frames 4 apart
are decoded from a random start (only those frames), multi-scale cropped to 224 and flipped,
cut into 2 x 16 x 16 tubes (8 x 14 x 14 = 1568 tokens), 90 % masked as tubes, and the model
reconstructs the masked tubes (per-tube, per-channel normalized pixels). ``--decoder-mask-ratio
0.5`` adds VideoMAE V2's running-cell decoder masking; ``--masking random`` is MAE-ST's.

    python recipes/video_mae.py --shards shards/clips --model tiny --max-steps 30
    accelerate launch recipes/video_mae.py --shards shards/k400 --model base --repeated-aug 2

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (the
trained encoder + decoder with its tokenizer config; ``modalmae.checkpoint.load_encoder``),
ranks/rank*.json, reconstruction.png.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from modalmae.data.video import ClipOptions
from modalmae.masking import Masks, random_masking, running_cell_predict, tube_masking
from modalmae.model import PRESETS, VIDEOMAE_DECODERS, MaskedAutoencoder
from modalmae.tokenizers.video import VideoTubes
from modalmae.masking.color import ColorOptions
from modalmae.masking.motion import motion_guided_masking
from modalmae.train.config import MASK_RATIO_HELP, MaskRatio, PretrainConfig, arg
from modalmae.train.recipe import Pretraining, run_pretraining


@dataclass
class VideoMAEConfig(ClipOptions, ColorOptions, PretrainConfig):
    output: str = arg("runs/video_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    mask_ratio: MaskRatio = arg(MaskRatio("0.9"), MASK_RATIO_HELP.format(published="VideoMAE: 0.9"))
    masking: str = arg("tube", "tube: one spatial mask for all time slices (VideoMAE); random: independent spacetime masking (MAE-ST); color: thresholded filtered noise (ColorMAE, --noise-color) as tubes, or per slice with --noise-per-frame; motion: a mask drawn on the middle slice and carried along each clip's motion, estimated in the loader (MGMAE)", choices=("tube", "random", "color", "motion"))
    noise_per_frame: bool = arg(False, "with --masking color: a noise field per time slice instead of one for the whole clip")
    decoder_mask_ratio: float = arg(0.0, "fraction of the masked tubes the decoder drops, in VideoMAE V2's running-cell pattern (0 = decode all; V2: 0.5)")
    tubelet_size: int = arg(2, "frames per tube")
    patch_size: int = arg(16, "tube height and width in pixels")
    repeated_aug: int = arg(1, "clips sampled from each decoded video (repeated augmentation); each counts toward --batch-size")


def build(cfg: VideoMAEConfig) -> Pretraining:
    if cfg.masking == "motion" and cfg.mask_ratio.per_sample:
        raise SystemExit("error: --masking motion needs one --mask-ratio for every sample (not uniform:LOW:HIGH)")
    # Clips leave the loader workers in 8 bits and are normalized on the device (model_input).
    decode = cfg.video_decoder(
        clips_per_video=cfg.repeated_aug, motion=cfg.masking == "motion", tubelet_size=cfg.tubelet_size, patch_size=cfg.patch_size,
        eight_bit=True,
    )
    # VideoMAE's decoder (4 blocks, narrower than MAE's) for the standard sizes.
    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss, **VIDEOMAE_DECODERS.get(cfg.model, {}))
    tokenizer = VideoTubes(
        embed_dim=model_cfg.encoder_dim, num_frames=cfg.num_frames, image_size=cfg.input_size,
        tubelet_size=cfg.tubelet_size, patch_size=cfg.patch_size,
    )
    grid = tokenizer.grid

    if cfg.decoder_mask_ratio > 0 and cfg.mask_ratio.per_sample:
        raise SystemExit("error: --decoder-mask-ratio needs one --mask-ratio for every sample (not uniform:LOW:HIGH)")

    color = cfg.color_masks(grid, per_frame=cfg.noise_per_frame)

    def masking(x: torch.Tensor, generator: torch.Generator, ratio: float | torch.Tensor, batch: dict) -> Masks:
        if cfg.masking == "motion":
            masks = motion_guided_masking(batch["motion"], ratio, generator=generator)
        elif cfg.masking == "tube":
            masks = tube_masking(x.shape[0], grid, ratio, generator=generator)
        elif cfg.masking == "color":
            masks = color(x, generator, ratio)
        else:
            masks = random_masking(x.shape[0], tokenizer.num_tokens, ratio, generator=generator)
        if cfg.decoder_mask_ratio > 0:
            masks = masks.with_decoder_masking(running_cell_predict(masks, grid, cfg.decoder_mask_ratio, generator=generator))
        return masks

    return Pretraining(
        model=MaskedAutoencoder(tokenizer, model_cfg), decode=decode, masking=masking,
        extra={"video": {"sampling_rate": cfg.sampling_rate}}, items_per_sample=cfg.repeated_aug,
    )


def main(argv: list[str] | None = None) -> int:
    return run_pretraining("video", VideoMAEConfig, build, argv, doc=__doc__)

if __name__ == "__main__":
    sys.exit(main())
