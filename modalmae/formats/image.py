"""Images from bytes, bounded: what the image builder checks and the image loader decodes.

Only the formats shards may hold are tried (Pillow's JPEG, PNG, WebP, TIFF, BMP and GIF
openers: a crafted file cannot reach Pillow's other parsers), and a header declaring more than
``max_pixels`` is refused before any pixel is decoded (a 100-byte PNG can declare 10^10).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# Pillow's format -> the entry name the bytes are stored under (schema.IMAGE_FORMATS); a
# camera's MPO (a JPEG with further pictures after the first) is a jpg.
PIL_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}
OPENERS = [name for name in PIL_FORMATS if name != "MPO"]  # JPEG's opener returns MPO files too


class ImageTooLarge(ValueError):
    """The header declares more pixels than allowed."""


def open_image(data: bytes, *, max_pixels: int, load: bool = True) -> Image.Image:
    """The image in ``data``, decoded (``load``ed) in full. ``UnidentifiedImageError`` when it is
    none of the formats above, ``ImageTooLarge`` (before decoding) above ``max_pixels``, and
    Pillow's own errors (``OSError`` and others) when the pixels do not decode. ``load=False``:
    only the header is read (format, size, mode), with the same openers and limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides, not Pillow's warning
        try:
            image = Image.open(io.BytesIO(data), formats=OPENERS)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"too large: {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"too large: {width} x {height} = {width * height} pixels, more than max_pixels {max_pixels}")
    if load:
        image.load()
    return image


__all__ = ["ImageTooLarge", "OPENERS", "PIL_FORMATS", "UnidentifiedImageError", "open_image"]
