"""Point arrays (``.npy``, also inside ``.npz``) judged by their header before any data is read:
what the point builder checks and the point loader decodes.

A 100-byte ``.npy`` can declare an array of any size or dtype; only the header is read here, so
the shape, the dtype and the bytes that follow are checked before anything is allocated.
"""

from __future__ import annotations

import math

import numpy as np

class Refused(ValueError):
    """The array cannot be used; the message is the reason."""


# x y z and the per-point values a scan carries (normals, colours, intensity, ring, time, ...):
# a format bound, with ``max_points``, on what a header may make a reader allocate.
MAX_COLUMNS = 32


def check_point_header(stream, *, max_points: int, available: int | None = None, flag: str = "max_points") -> tuple[int, ...]:
    """The [N, 3 + C] shape an .npy stream's header declares, read without the data; ``Refused``
    with the reason for another version, a non-numeric dtype, another shape, more
    than ``max_points`` points (``flag`` names the setting that raises it), more than
    ``MAX_COLUMNS`` columns, or more data than the ``available`` bytes hold (when known)."""
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise Refused(f".npy format version {version[0]}.{version[1]} is not read")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    if dtype.kind not in "iuf":  # also keeps a wide string or record dtype from sizing the allocation
        raise Refused(f"not a numeric array (dtype {dtype})")
    if len(shape) != 2 or shape[1] < 3 or shape[0] == 0:
        raise Refused(f"expected an [N, 3+] point array, got shape {list(shape)}")
    check_cloud_size(*shape, max_points=max_points, flag=flag)
    if available is not None and (declared := math.prod(shape) * dtype.itemsize) > available - stream.tell():
        raise Refused(f"truncated: the .npy header declares {declared} bytes of data, only {available - stream.tell()} follow it")
    return shape


def check_cloud_size(points: int, columns: int, *, max_points: int, flag: str = "max_points", what: str = "points") -> None:
    """Refuse a cloud, or what a header declares of one, above the limits."""
    if points > max_points:
        raise Refused(f"too large: {points} {what}, more than {flag} {max_points}")
    if columns > MAX_COLUMNS:
        raise Refused(f"{columns} columns per point, more than a point cloud's {MAX_COLUMNS} (x y z and per-point values)")
