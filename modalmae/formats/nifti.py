"""NIfTI volumes from bytes, bounded: for the MRI builder (checks) and the MRI loader (decoding).

NIfTI-1 and NIfTI-2 files, either byte order, plain or gzipped. The header is read first and
its declared size checked before any voxel is: a 1 MB ``.nii.gz`` can inflate to gigabytes, so
gzip is inflated incrementally and never past what the header declares (extra bytes after the
voxels are left compressed, as nibabel would ignore them).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator

import numpy as np

NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
# Voxels in one file, a 4-D series counting all of its volumes: 2^27 = 512^3 (a 512 MiB float32
# array once decoded); a clinical or research volume is a few million.
MAX_VOXELS = 2**27
# Bytes a file may inflate to (header, extensions and voxels): 2 GiB, a float64 volume of
# MAX_VOXELS with room to spare. Bounds what a crafted vox_offset or dtype could ask for.
MAX_BYTES = 2**31
GZIP_MAGIC = b"\x1f\x8b"
INPUT_SLICE = 1 << 16  # compressed bytes handed to zlib at a time
OUTPUT_SLICE = 1 << 16  # inflated bytes at a time when they are only checked, not kept (stays in cache)


class VolumeTooLarge(ValueError):
    """The header declares more voxels or bytes than allowed; refused before reading them."""


def inflate(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes of gzip ``data`` (one or more members), or all of them when it
    holds fewer. Nothing past ``size`` is inflated and the input is fed in slices, so memory
    stays within ``size`` plus a slice, whatever the file would grow to."""
    return b"".join(_inflated(data, size))


def inflated_size(data: bytes, size: int) -> int:
    """How many bytes ``inflate(data, size)`` gives, inflated ``OUTPUT_SLICE`` at a time and
    never held: the same decoding and the same errors, without a ``size``-byte result."""
    return sum(len(chunk) for chunk in _inflated(data, size, OUTPUT_SLICE))


def _inflated(data: bytes, size: int, out_slice: int | None = None) -> Iterator[bytes]:
    """``inflate``'s bytes in pieces of at most ``out_slice`` (None: as zlib gives them)."""
    view, pos, got = memoryview(data), 0, 0
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    while got < size and pos < len(view):
        piece = view[pos : pos + INPUT_SLICE]
        todo = piece
        while got < size:
            want = size - got if out_slice is None else min(out_slice, size - got)
            try:
                chunk = inflater.decompress(todo, want)  # max_length: never more than wanted
            except zlib.error as e:
                raise ValueError(f"corrupt gzip stream ({e})") from None
            got += len(chunk)
            yield chunk
            if inflater.eof:
                break
            todo = inflater.unconsumed_tail
            if not todo and len(chunk) < want:  # the slice is used up and zlib holds nothing back
                break
        if inflater.eof:  # a member ends: another may follow, from what zlib left unused
            pos += len(piece) - len(inflater.unused_data)
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        else:
            pos += len(piece) - len(inflater.unconsumed_tail)


def _image_class(head: bytes):
    """nibabel's NIfTI-1 or NIfTI-2 image class, told by sizeof_hdr (348 or 540, either byte order)."""
    import nibabel as nib

    classes = {NIFTI1_HEADER_BYTES: nib.Nifti1Image, NIFTI2_HEADER_BYTES: nib.Nifti2Image}
    sizes = {struct.unpack(order + "i", head[:4])[0] for order in "<>"}
    found = sizes & classes.keys()
    if not found:
        raise ValueError(f"not a NIfTI file: sizeof_hdr is {struct.unpack('<i', head[:4])[0]} (NIfTI-1: 348, NIfTI-2: 540)")
    return classes[found.pop()]


def _checked_header(data: bytes, *, max_voxels: int, max_bytes: int):
    """(image class, vox_offset, bytes to read) of a .nii or .nii.gz, its header checked (bad
    header, declared voxels and bytes) before any voxel is inflated or decoded."""
    from nibabel.spatialimages import HeaderDataError

    head = inflate(data, NIFTI2_HEADER_BYTES) if data[:2] == GZIP_MAGIC else data[:NIFTI2_HEADER_BYTES]
    if len(head) < NIFTI1_HEADER_BYTES:
        raise ValueError(f"{len(head)} bytes: too short for a NIfTI header")
    klass = _image_class(head)
    if len(head) < klass.header_class.sizeof_hdr:
        raise ValueError(f"{len(head)} bytes: too short for a NIfTI-2 header")
    try:
        header = klass.header_class(binaryblock=head[: klass.header_class.sizeof_hdr], check=False)
        shape, itemsize, offset = header.get_data_shape(), header.get_data_dtype().itemsize, header.get_data_offset()
    except (HeaderDataError, KeyError, ValueError) as e:  # KeyError: an unknown datatype code
        raise ValueError(f"bad NIfTI header ({type(e).__name__}: {e})") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"bad NIfTI header: negative dimensions {list(shape)}")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise VolumeTooLarge(f"too large: {' x '.join(map(str, shape))} = {voxels} voxels, more than max_voxels {max_voxels}")
    size = offset + voxels * itemsize  # all that nibabel reads
    if size > max_bytes:
        raise VolumeTooLarge(f"too large: the header declares {size} bytes (header, extensions, voxels), more than max_bytes {max_bytes}")
    return klass, offset, size


def load_nifti(data: bytes, *, max_voxels: int = MAX_VOXELS, max_bytes: int = MAX_BYTES):
    """A nibabel image from the bytes of a .nii or .nii.gz (told apart by the gzip magic).

    ``VolumeTooLarge`` when the header declares more than ``max_voxels`` voxels or more than
    ``max_bytes`` bytes to read, before any voxel is inflated or decoded; ``ValueError`` for a
    file too short for what its header declares.
    """
    klass, _, size = _checked_header(data, max_voxels=max_voxels, max_bytes=max_bytes)
    if data[:2] == GZIP_MAGIC:
        data = inflate(data, size)
    if len(data) < size:
        raise _truncated(size, len(data))
    return klass.from_bytes(data)


def _truncated(size: int, held: int) -> ValueError:
    return ValueError(f"truncated: the header declares {size} bytes, the file holds {held}")


def load_nifti_header(data: bytes, *, max_voxels: int = MAX_VOXELS, max_bytes: int = MAX_BYTES):
    """A nibabel image of the bytes of a .nii or .nii.gz whose voxels are never read: the checks
    ``load_nifti`` makes before it reads any (a bad header, the declared voxels and bytes, a plain
    file shorter than it declares), without inflating a gzipped file past its header and
    extensions. Its header, shape and affine are what ``load_nifti`` gives; its data is not there."""
    if data[:2] != GZIP_MAGIC:
        return load_nifti(data, max_voxels=max_voxels, max_bytes=max_bytes)  # nibabel reads plain voxels lazily
    klass, offset, _ = _checked_header(data, max_voxels=max_voxels, max_bytes=max_bytes)
    return _header_image(data, klass, offset)


def _header_image(data: bytes, klass, offset: int):
    """The image of a gzipped file's header and extensions (at least the 4 bytes saying whether
    any follow, as nibabel reads them even when vox_offset is unset); the voxels' proxy is never read."""
    return klass.from_bytes(inflate(data, max(offset, klass.header_class.sizeof_hdr + 4)))


def check_nifti(data: bytes, *, max_voxels: int = MAX_VOXELS, max_bytes: int = MAX_BYTES):
    """What ``load_nifti`` then ``check_float32_voxels`` check, every voxel read: the same
    errors, and an image with the same header, shape and affine (its voxels may not be there).

    Where the header proves every voxel finite (``finite_by_type``), a gzipped file's voxels are
    inflated only to be counted, a slice at a time: they are never assembled into one array,
    so memory does not grow with the volume and the check takes two thirds of the time (less
    memory traffic, which is also what lets parallel builds scale).
    """
    if data[:2] == GZIP_MAGIC:
        klass, offset, size = _checked_header(data, max_voxels=max_voxels, max_bytes=max_bytes)
        img = _header_image(data, klass, offset)
        if finite_by_type(img):
            if (got := inflated_size(data, size)) < size:
                raise _truncated(size, got)
            return img
    img = load_nifti(data, max_voxels=max_voxels, max_bytes=max_bytes)
    check_float32_voxels(img)
    return img


def finite_by_type(img) -> bool:
    """Whether the header alone proves every voxel finite as float32: an integer volume whose
    type's whole range, scaled by scl_slope / scl_inter, stays within float32."""
    dtype = img.get_data_dtype()
    if dtype.kind not in "iub":
        return False
    slope, inter = (float(getattr(img.dataobj, name, default)) for name, default in (("slope", 1.0), ("inter", 0.0)))
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.iinfo(np.uint8)
    largest = max(abs(info.min), abs(info.max)) * abs(slope) + abs(inter)  # in float64: exact enough to bound
    return math.isfinite(slope) and math.isfinite(inter) and largest < 0.5 * float(np.finfo(np.float32).max)


def check_float32_voxels(img) -> None:
    """``float32_voxels``' check without keeping (or, where ``finite_by_type`` proves it, making)
    the array. ValueError as ``float32_voxels`` gives."""
    if not finite_by_type(img):
        float32_voxels(img)


def float32_voxels(img) -> np.ndarray:
    """The voxels as the loader trains on them: scaled by scl_slope / scl_inter and cast to
    float32, where an integer volume with a huge slope, or a float64 one, can overflow to inf;
    ValueError when any voxel is NaN or inf."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is what the check below finds
        values = np.asarray(img.dataobj, dtype=np.float32)
    if bad := values.size - np.count_nonzero(np.isfinite(values)):
        raise ValueError(f"{bad} voxel(s) are NaN or inf (as float32)")
    return values
