"""The image modality of the shard builder (MAE's data: folders of photographs).

Every file is identified by its content with Pillow, restricted to the formats stored here
(JPEG, PNG, WebP, TIFF, BMP, GIF; a camera's MPO is a JPEG), whatever its suffix, and decoded
in full once to prove it (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off, so a truncated file
fails). The original bytes are stored, under the entry name of their real format.

Skipped, with the reason in the manifest: empty files, files that are no image in those
formats (Pillow identifies none without width or height), unreadable or truncated ones, headers
declaring more than ``max_pixels`` pixels (refused before any pixel is decoded: a 100-byte PNG
can declare 10^10), and float images holding NaN or inf. A multi-frame file (GIF, TIFF, WebP)
stands for its first frame, the one the loader decodes.

With ``validate="header"`` (``--validate header``) only the header is read: the same format,
size, mode and frame count, the same limit on pixels, the same stored bytes; pixels that do not
decode (a truncated file) and NaN or inf in float images are then the loader's to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalmae.flags import arg, positive_int
from modalmae.formats.image import PIL_FORMATS, ImageTooLarge, UnidentifiedImageError, open_image
from modalmae.formats.schema import MAX_IMAGE_PIXELS
from modalmae.shards.build import ShardBuilder
from modalmae.shards.types import Sample, Skip, validate_option

NAME = "image"
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})


@dataclass(frozen=True)
class Options:
    """Every image is decoded in full once; the original bytes are stored."""

    max_pixels: int = arg(
        MAX_IMAGE_PIXELS,
        "skip images whose header declares more pixels (width x height), before decoding them; Pillow refuses more than "
        f"{MAX_IMAGE_PIXELS} by itself unless PIL.Image.MAX_IMAGE_PIXELS is raised",
        type=positive_int, metavar="N",
    )
    validate: str = validate_option()


class Unusable(ValueError):
    """The file holds no usable image; the message is the skip reason."""


def inspect_image(data: bytes, *, max_pixels: int, depth: str = "full") -> dict:
    """``data``'s {"format", "width", "height", "mode", "n_frames"}, decoded in full to check it
    when ``depth`` is "full", from its header alone when "header"; raises ``Unusable`` with the
    reason when it cannot be used."""
    try:
        image = open_image(data, max_pixels=max_pixels, load=depth == "full")
    except UnidentifiedImageError:
        raise Unusable(f"not an image Pillow reads as {', '.join(sorted(set(PIL_FORMATS.values())))}") from None
    except ImageTooLarge as e:
        raise Unusable(str(e).replace("max_pixels", "--max-pixels")) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is broken
        raise Unusable(f"truncated or corrupt ({type(e).__name__}: {e})") from None
    with image:
        if depth == "full" and image.mode == "F" and (bad := int((~np.isfinite(np.asarray(image))).sum())):  # float TIFFs
            raise Unusable(f"{bad} pixel(s) are NaN or inf")
        return {
            "format": PIL_FORMATS[image.format], "width": image.width, "height": image.height, "mode": image.mode,
            "n_frames": getattr(image, "n_frames", 1),  # GIF, TIFF and WebP walk their frame headers: no pixel decoded
        }


def prepare(path: Path, relpath: str, options: Options) -> Sample | Skip:
    data = path.read_bytes()
    if not data:
        return Skip(relpath, "empty file")
    try:
        info = inspect_image(data, max_pixels=options.max_pixels, depth=options.validate)
    except Unusable as e:
        return Skip(relpath, str(e))
    if info["n_frames"] == 1:
        del info["n_frames"]
    return Sample(files={info["format"]: data}, meta={"source": relpath, **info})


BUILDER = ShardBuilder(name=NAME, extensions=EXTENSIONS, options=Options, prepare=prepare)
