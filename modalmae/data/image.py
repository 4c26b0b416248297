"""Images from shard bytes, the MAE way (He et al. 2022, ``main_pretrain.py``).

Training: ``RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=3)`` (a crop of 20-100 % of
the area with aspect ratio in [3/4, 4/3], drawn as torchvision's ``get_params`` draws it: 10
tries, then the centre crop nearest that range), resized bicubic to ``image_size``; a horizontal
flip half the time; ImageNet normalization. Evaluation (MAE's linear probing and fine-tuning):
the short side resized bicubic to ``round(image_size / 0.875)`` (256 for 224), then the centre
``image_size`` square. Pillow crops and resamples, as torchvision does with PIL images (8-bit
images are resampled in 8 bits).

Every Pillow mode becomes RGB the way torchvision's ``ImageFolder`` loader makes it
(``convert("RGB")``: grey repeated in three channels, alpha dropped, palettes expanded), except
16-bit, 32-bit and float images, which keep their precision: one float plane in [0, 1] (16-bit
divided by 65535, float kept when already in [0, 1], anything else stretched from its min to
its max), resampled in float and repeated in three channels. The EXIF orientation is applied,
which ``ImageFolder`` does not do (it leaves phone photos on their side).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import torch
from PIL import Image, ImageOps

from modalmae.formats.image import open_image
from modalmae.formats.schema import IMAGE_FORMATS, MAX_IMAGE_PIXELS
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range (width / height)
EVAL_CROP = 0.875  # the centre crop's share of the resized short side (224 of 256)
HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
BICUBIC = Image.Resampling.BICUBIC


def image_field(sample: dict) -> str:
    for fmt in IMAGE_FORMATS:
        if fmt in sample:
            return fmt
    raise ValueError(f"no image entry (one of {', '.join(IMAGE_FORMATS)}) among {sorted(k for k in sample if not k.startswith('__'))}")


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The decoded image, turned upright by its EXIF orientation; a ValueError, before any pixel
    is decoded, for headers declaring more than ``max_pixels`` (``formats.image.open_image``)."""
    image = open_image(data, max_pixels=max_pixels)
    ImageOps.exif_transpose(image, in_place=True)
    return image


def unit_plane(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float single-channel image -> a float ("F") image in [0, 1]."""
    values = np.asarray(image, dtype=np.float32)  # [H, W]
    if not np.isfinite(values).all():
        raise ValueError(f"image has {int((~np.isfinite(values)).sum())} NaN or inf pixel(s)")
    top = 1.0 if image.mode == "F" else 65535.0
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > top:  # no nominal range: stretch what is there
        top, values = max(high - low, 1e-12), values - low
    return Image.fromarray(values / top)


def crop_box(width: int, height: int, rng: random.Random, *, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's ``RandomResizedCrop.get_params``, drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # No try fitted: the centre crop with the aspect ratio nearest the range.
    if width / height < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif width / height > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_and_centre_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(round(size / 0.875), bicubic)`` then ``CenterCrop(size)``."""
    short = round(size / EVAL_CROP)
    width, height = image.size
    if width <= height:
        image = image.resize((short, int(short * height / width)), BICUBIC)
    else:
        image = image.resize((int(short * width / height), short), BICUBIC)
    width, height = image.size
    top, left = round((height - size) / 2), round((width - size) / 2)
    return image.crop((left, top, left + size, top + size))


class ImageDecoder:
    """Raw shard sample -> {"image": float32 [3, S, S] ImageNet-normalized, "label"}; picklable.

    Augments (MAE's random resized crop and flip) only when ``train`` and an ``rng`` is given;
    otherwise the deterministic resize and centre crop.
    """

    def __init__(
        self, *, image_size: int = 224, train: bool = True, min_scale: float = 0.2, flip: bool = True,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale is a share of the image area, in (0, 1]: got {min_scale}")
        self.image_size, self.train, self.min_scale, self.flip, self.max_pixels = image_size, train, min_scale, flip, max_pixels
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @classmethod
    def from_checkpoint(cls, config: dict, *, train: bool) -> ImageDecoder:
        """The decoder a model folder's config.json implies: the tokenizer's image size, and in
        training the crop scale it was trained with (``extra.image.min_scale``; MAE's 0.2 if
        unrecorded)."""
        size = config["tokenizer"]["config"].get("image_size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        if height != width:
            raise ValueError(f"the model takes {height} x {width} images; ImageDecoder makes square ones")
        image = config.get("extra", {}).get("image", {})
        return cls(image_size=height, train=train, min_scale=image.get("min_scale", 0.2))

    def transform(self, image: Image.Image, rng: random.Random | None) -> torch.Tensor:
        """A decoded image (any mode) -> normalized float32 [3, S, S]."""
        image = unit_plane(image) if image.mode in HIGH_BIT_MODES else image.convert("RGB")
        size = self.image_size
        if self.train and rng is not None:
            top, left, h, w = crop_box(*image.size, rng, scale=(self.min_scale, 1.0))
            image = image.crop((left, top, left + w, top + h)).resize((size, size), BICUBIC)
            if self.flip and rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = resize_and_centre_crop(image, size)
        if image.mode == "F":  # bicubic overshoots: clip to the range 8-bit resampling clamps to
            pixels = torch.from_numpy(np.clip(np.asarray(image), 0.0, 1.0))[None].expand(3, -1, -1)
        else:
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        return (pixels - self.mean) / self.std

    def __call__(self, sample: dict, rng: random.Random | None) -> dict:
        image = decode_image(sample[image_field(sample)], max_pixels=self.max_pixels)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        return {"image": self.transform(image, rng), "label": meta.get("label")}
