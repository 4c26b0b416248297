"""build_shards for images: real photos in every stored format, and broken files among them."""

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, read_shards
from modalmae.formats.schema import IMAGE_FORMATS, sample_key
from modalmae.shards import image
from modalmae.shards.build import build_shards

CHELSEA, CAMERA = DATA / "images" / "chelsea.png", DATA / "images" / "camera.png"


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR (correct CRC) declaring width x height RGB, no pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    cat = Image.open(CHELSEA).convert("RGB")
    shutil.copy(CHELSEA, root / "chelsea.png")
    (root / "grey").mkdir()
    shutil.copy(CAMERA, root / "grey" / "camera.png")
    files = {
        "cat.JPEG": encoded(cat, "JPEG", quality=90),  # suffixes are matched case-insensitively
        "cat.webp": encoded(cat, "WEBP", quality=80),
        "grey/camera.tif": encoded(Image.open(CAMERA), "TIFF", compression="tiff_lzw"),
        "cat.bmp": encoded(cat.resize((90, 60)), "BMP"),
        "cat.gif": encoded(cat.resize((90, 60)).convert("P"), "GIF", save_all=True, append_images=[cat.resize((90, 60)).convert("P").rotate(90)]),
        "disguised.jpg": encoded(cat.resize((40, 30)), "PNG"),  # a PNG under a JPEG name
        "pair.jpg": encoded(cat, "MPO", save_all=True, append_images=[cat.rotate(180)]),  # a camera's MPO: a JPEG
        "float.tif": encoded(Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)), "TIFF"),
        # broken ones
        "empty.png": b"",
        "garbage.jpg": b"this is a text file, not a photograph\n" * 20,
        "netpbm.png": encoded(cat.resize((40, 30)), "PPM"),  # an image, but in no format the shards store
        "truncated.jpg": encoded(cat, "JPEG", quality=90)[:4000],
        "bomb.png": png_header(100_000, 100_000),
        "zero.png": png_header(0, 300),
        "nan.tif": encoded(Image.fromarray(np.array([[0.5, np.nan], [np.inf, 0.0]], np.float32)), "TIFF"),
        "notes.txt": b"not tried: no image suffix\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = build_shards(builder=image.BUILDER, input_dir=raw, output_dir=out, workers=1, progress=False, label_from_parent=True)
    samples, _ = read_shards(out)
    return manifest, samples


def test_photos_are_stored_byte_for_byte_under_their_real_format(raw, built):
    manifest, samples = built
    assert manifest["modality"] == "image" and manifest["ignored_files"] == 1  # notes.txt
    kept = {
        "chelsea.png": "png", "grey/camera.png": "png", "cat.JPEG": "jpg", "cat.webp": "webp", "grey/camera.tif": "tif",
        "cat.bmp": "bmp", "cat.gif": "gif", "disguised.jpg": "png", "pair.jpg": "jpg", "float.tif": "tif",
    }
    assert manifest["num_samples"] == len(kept)
    for relpath, fmt in kept.items():
        sample = samples[sample_key(relpath)]
        entries = set(sample) - {"json"}
        assert entries == {fmt} and fmt in IMAGE_FORMATS, relpath
        assert sample[fmt] == (raw / relpath).read_bytes(), relpath
        meta = json.loads(sample["json"])
        assert meta["source"] == relpath and meta["format"] == fmt
        with Image.open(raw / relpath) as img:
            assert (meta["width"], meta["height"], meta["mode"]) == (*img.size, img.mode), relpath


def test_metadata_of_real_photos(built):
    _, samples = built
    cat = json.loads(samples[sample_key("chelsea.png")]["json"])
    assert (cat["width"], cat["height"], cat["mode"]) == (451, 300, "RGB") and "n_frames" not in cat
    camera = json.loads(samples[sample_key("grey/camera.png")]["json"])
    assert (camera["width"], camera["height"], camera["mode"], camera["label"]) == (512, 512, "L", "grey")
    assert json.loads(samples[sample_key("cat.gif")]["json"])["n_frames"] == 2
    assert json.loads(samples[sample_key("pair.jpg")]["json"])["n_frames"] == 2  # MPO: a JPEG carrying a second picture
    assert json.loads(samples[sample_key("float.tif")]["json"])["mode"] == "F"


def test_broken_files_are_skipped_with_their_reasons(built):
    manifest, _ = built
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"empty.png", "garbage.jpg", "netpbm.png", "truncated.jpg", "bomb.png", "zero.png", "nan.tif"}
    assert reasons["empty.png"] == "empty file"
    for name in ("garbage.jpg", "netpbm.png", "zero.png"):  # Pillow identifies no zero-width image
        assert reasons[name] == "not an image Pillow reads as bmp, gif, jpg, png, tif, webp", name
    assert reasons["truncated.jpg"].startswith("truncated or corrupt")
    assert reasons["bomb.png"].startswith("too large") and "10000000000 pixels" in reasons["bomb.png"]
    assert reasons["nan.tif"] == "2 pixel(s) are NaN or inf"


def test_max_pixels_refuses_a_real_photo_before_decoding(raw, tmp_path):
    options = image.Options(max_pixels=451 * 300 - 1)
    skip = image.prepare(raw / "chelsea.png", "chelsea.png", options)
    assert skip.reason == f"too large: 451 x 300 = {451 * 300} pixels, more than --max-pixels {451 * 300 - 1}"
    assert image.prepare(raw / "chelsea.png", "chelsea.png", image.Options(max_pixels=451 * 300)).meta["width"] == 451
    # a header that declares many pixels costs nothing: skipped before its (absent) pixels are read
    bomb = tmp_path / "small_bomb.png"
    bomb.write_bytes(png_header(20_000, 5_000))
    assert image.prepare(bomb, "small_bomb.png", image.Options(max_pixels=10**7)).reason.startswith("too large: 20000 x 5000")
