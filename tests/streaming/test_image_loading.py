"""Images from shard bytes: every stored format and mode to normalized RGB, MAE's crops and flips."""

import io
import json
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA
from modalmae.data.image import ImageDecoder, crop_box
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD
from modalmae.tokenizers.image import ImagePatches

CAT = Image.open(DATA / "images" / "chelsea.png").convert("RGB")  # 451 x 300 RGB photo
CAMERA = Image.open(DATA / "images" / "camera.png")  # 512 x 512 grayscale photo
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


def sample(img: Image.Image, fmt: str = "PNG", meta: dict | None = None, **kw) -> dict:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    entry = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}[fmt]
    return {"__key__": "k", entry: buf.getvalue(), "json": json.dumps(meta or {}).encode()}


def pixels(image: torch.Tensor) -> torch.Tensor:
    return image * STD + MEAN


def test_eval_is_torchvisions_resize_256_then_centre_crop_224():
    got = ImageDecoder(train=False)(sample(CAT, meta={"label": "cat"}), random.Random(0))
    assert got["label"] == "cat" and got["image"].dtype == torch.float32 and got["image"].shape == (3, 224, 224)
    # Resize(256): short side 300 -> 256, long side int(256 * 451 / 300) = 384; CenterCrop(224): left 80, top 16
    expected = np.asarray(CAT.resize((384, 256), Image.Resampling.BICUBIC).crop((80, 16, 304, 240)), dtype=np.float32) / 255
    assert torch.allclose(pixels(got["image"]), torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize(("fmt", "kw", "tolerance"), [
    ("BMP", {}, 0.0), ("TIFF", {"compression": "tiff_lzw"}, 0.0), ("WEBP", {"lossless": True}, 0.0),
    ("JPEG", {"quality": 95}, 0.01), ("WEBP", {"quality": 90}, 0.01), ("GIF", {}, 0.015),  # lossy: close
])
def test_every_stored_format_decodes_to_the_same_picture(fmt, kw, tolerance):
    decode = ImageDecoder(image_size=64, train=False)
    reference = pixels(decode(sample(CAT), None)["image"])
    got = pixels(decode(sample(CAT, fmt, **kw), None)["image"])
    assert got.shape == (3, 64, 64)
    assert (got - reference).abs().mean() <= tolerance + 1e-7


def test_grayscale_gives_three_equal_channels_and_alpha_is_dropped():
    decode = ImageDecoder(image_size=64, train=False)
    grey = decode(sample(CAMERA), None)["image"]
    assert grey.shape == (3, 64, 64)
    assert torch.allclose(pixels(grey)[0], pixels(grey)[1], atol=1e-6) and torch.allclose(pixels(grey)[0], pixels(grey)[2], atol=1e-6)
    rgba = CAT.copy()
    rgba.putalpha(Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 451), dtype=np.uint8)))
    assert torch.equal(decode(sample(rgba), None)["image"], decode(sample(CAT), None)["image"])


def test_16_bit_and_float_images_keep_their_scale():
    decode = ImageDecoder(image_size=64, train=False)
    reference = pixels(decode(sample(CAMERA), None)["image"])  # camera.png spans 0..255

    def decoded(array, fmt):
        return pixels(decode(sample(Image.fromarray(array), fmt), None)["image"])

    dim = np.asarray(CAMERA, dtype=np.uint16) * 128  # 16 bits, up to 32640 of 65535: a darker photo
    assert Image.fromarray(dim).mode == "I;16"
    assert (decoded(dim, "PNG") - reference * (255 * 128 / 65535)).abs().max() < 0.01
    unit = np.asarray(CAMERA, dtype=np.float32) / 255
    assert (decoded(unit / 2, "TIFF") - reference / 2).abs().max() < 0.01  # in [0, 1]: kept as it is
    assert (decoded(unit * 4 - 1, "TIFF") - reference).abs().max() < 0.01  # no nominal range: min..max
    unit[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        decode(sample(Image.fromarray(unit), "TIFF"), None)


def test_eval_crop_is_centred_and_deterministic():
    half = np.zeros((256, 512), np.uint8)
    half[:, 256:] = 255  # left half black, right half white
    img = Image.fromarray(half)
    decode = ImageDecoder(image_size=32, train=False)
    out = pixels(decode(sample(img), random.Random(1))["image"])
    # a centred crop of a mirror-antisymmetric picture is mirror-antisymmetric (up to 8-bit rounding)
    assert torch.allclose(out, 1 - out.flip(-1), atol=1 / 255 + 1e-6)
    assert out[:, :, 0].max() < 0.01 and out[:, :, -1].min() > 0.99
    assert torch.equal(decode(sample(img), random.Random(2))["image"], decode(sample(img), None)["image"])
    # a training decoder without an rng is the evaluation transform
    assert torch.equal(ImageDecoder(image_size=32, train=True)(sample(img), None)["image"], decode(sample(img), None)["image"])


def test_training_crops_vary_with_the_rng_and_repeat_with_the_seed():
    decode = ImageDecoder(image_size=64)
    one = decode(sample(CAT), random.Random(7))["image"]
    assert torch.equal(one, decode(sample(CAT), random.Random(7))["image"])
    others = [decode(sample(CAT), random.Random(seed))["image"] for seed in range(3)]
    assert all(not torch.equal(one, other) for other in others)


def test_crop_box_draws_area_and_aspect_in_maes_ranges():
    rng = random.Random(0)
    for _ in range(300):
        top, left, h, w = crop_box(451, 300, rng, scale=(0.2, 1.0))
        assert top >= 0 and left >= 0 and top + h <= 300 and left + w <= 451
        assert 0.2 - 0.01 <= h * w / (451 * 300) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # no crop of 20 % of a 1000 x 10 strip fits it: the centred 4/3 crop of its full height
    assert crop_box(1000, 10, rng, scale=(0.2, 1.0)) == (0, (1000 - 13) // 2, 10, 13)
    assert crop_box(10, 1000, rng, scale=(0.2, 1.0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_flip_mirrors_half_the_time():
    # a square image at scale 1 is always cropped whole, so only the flip can differ
    plain = ImageDecoder(image_size=64, min_scale=1.0, flip=False)
    reference = plain(sample(CAMERA), random.Random(0))["image"]
    assert all(torch.equal(plain(sample(CAMERA), random.Random(s))["image"], reference) for s in range(1, 6))
    flipping = ImageDecoder(image_size=64, min_scale=1.0)
    flipped = []
    for seed in range(16):
        out = flipping(sample(CAMERA), random.Random(seed))["image"]
        assert torch.equal(out, reference) or torch.equal(out, reference.flip(-1))
        flipped.append(torch.equal(out, reference.flip(-1)))
    assert any(flipped) and not all(flipped)


def test_a_constant_colour_normalizes_to_its_exact_value():
    colour = (10, 200, 255)
    out = ImageDecoder(image_size=32)(sample(Image.new("RGB", (50, 40), colour)), random.Random(0))["image"]
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float32).view(3, 1, 1).expand(3, 32, 32), atol=1e-6)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: viewers turn it 90 degrees clockwise
    decode = ImageDecoder(image_size=64, train=False)
    upright = decode(sample(CAT.transpose(Image.Transpose.ROTATE_270)), None)["image"]
    assert torch.equal(decode(sample(CAT, exif=exif), None)["image"], upright)


def test_oversized_images_and_missing_entries_are_refused():
    decode = ImageDecoder(image_size=32, max_pixels=451 * 300 - 1)
    with pytest.raises(ValueError, match=r"too large: 451 x 300 = 135300 pixels, more than max_pixels 135299"):
        decode(sample(CAT), random.Random(0))
    with pytest.raises(ValueError, match="no image entry"):
        decode({"__key__": "k", "json": b"{}", "txt": b"hello"}, None)


def test_from_checkpoint_reads_the_tokenizer_size_and_the_crop_scale():
    config = {"tokenizer": {"class": "ImagePatches", "config": ImagePatches(embed_dim=48, image_size=48).config()},
              "extra": {"image": {"min_scale": 0.5, "something_else": 1}}}
    train = ImageDecoder.from_checkpoint(config, train=True)
    assert (train.image_size, train.min_scale, train.train) == (48, 0.5, True)
    assert train(sample(CAT), random.Random(0))["image"].shape == (3, 48, 48)
    evaluation = ImageDecoder.from_checkpoint({"tokenizer": config["tokenizer"]}, train=False)
    assert (evaluation.min_scale, evaluation.train) == (0.2, False)
    restored = pickle.loads(pickle.dumps(evaluation))  # DataLoader workers get a pickled copy
    assert torch.equal(restored(sample(CAT), None)["image"], evaluation(sample(CAT), None)["image"])
    wide = {"tokenizer": {"config": ImagePatches(embed_dim=48, image_size=(32, 64)).config()}}
    with pytest.raises(ValueError, match="square"):
        ImageDecoder.from_checkpoint(wide, train=False)
