"""MAE pretraining on WebDataset shards of images (He et al., "Masked Autoencoders Are Scalable Vision Learners").

Streams the shards written by ``pipelines/build_shards.py --modality image``: each photo is
decoded, randomly resized-cropped (20-100 % of its area, bicubic) to 224 x 224 and flipped,
cut into 16 x 16 patches (14 x 14 = 196 tokens), 75 % masked at random, and the model
reconstructs the masked patches (each normalized by its own mean and variance).

    python recipes/image_mae.py --shards shards/photos --model tiny --input-size 64 --max-steps 30
    accelerate launch recipes/image_mae.py --shards shards/imagenet --model base

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (the
trained encoder + decoder with its tokenizer config; ``modalmae.checkpoint.load_encoder``),
ranks/rank*.json, reconstruction.png.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from modalmae.data.image import ImageDecoder
from modalmae.formats.schema import MAX_IMAGE_PIXELS
from modalmae.model import PRESETS, MaskedAutoencoder
from modalmae.tokenizers.image import ImagePatches
from modalmae.masking.color import ColorOptions
from modalmae.train.config import MASK_RATIO_HELP, MaskRatio, PretrainConfig, arg
from modalmae.train.recipe import Pretraining, run_pretraining


@dataclass
class ImageMAEConfig(ColorOptions, PretrainConfig):
    output: str = arg("runs/image_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    mask_ratio: MaskRatio = arg(MaskRatio("0.75"), MASK_RATIO_HELP.format(published="MAE: 0.75"))
    masking: str = arg("random", "random: uniform per sample (MAE); color: thresholded filtered noise (ColorMAE, --noise-color)", choices=("random", "color"))
    input_size: int = arg(224, "images are randomly resized-cropped to this square size")
    patch_size: int = arg(16, "square patch size in pixels (16 gives 14 x 14 = 196 tokens at 224)")
    min_scale: float = arg(0.2, "smallest share of the image area a training crop covers (MAE: 0.2)")
    flip: bool = arg(True, "random horizontal flips")
    max_pixels: int = arg(MAX_IMAGE_PIXELS, "skip images whose header declares more pixels, before decoding them (as build_shards.py's flag)")


def build(cfg: ImageMAEConfig) -> Pretraining:
    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss)  # MAE's decoder: 512 wide, 8 blocks
    tokenizer = ImagePatches(embed_dim=model_cfg.encoder_dim, image_size=cfg.input_size, patch_size=cfg.patch_size)

    return Pretraining(
        model=MaskedAutoencoder(tokenizer, model_cfg),
        decode=ImageDecoder(image_size=cfg.input_size, min_scale=cfg.min_scale, flip=cfg.flip, max_pixels=cfg.max_pixels),
        extra={"image": {"min_scale": cfg.min_scale}},
        masking=cfg.color_masks(tokenizer.grid) if cfg.masking == "color" else None,
    )


def main(argv: list[str] | None = None) -> int:
    return run_pretraining("image", ImageMAEConfig, build, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
