"""The point-cloud modality of the shard builder: read scans and meshes, validate, store float32.

Readers, all light: numpy for ``.npy`` / ``.npz`` and whitespace text (``.xyz``, ``.pts``,
``.txt``), plyfile for ``.ply`` (binary or ASCII, any extra per-vertex properties), a small
reader here for ``.pcd`` (ASCII and binary), trimesh for meshes (``.off``, ``.obj``, ``.stl``).
A ``.ply`` with faces is a mesh too. Meshes become ``mesh_points`` points by area-weighted
surface sampling, seeded from the file's relative path so rebuilds are identical.

Each sample stores ``<key>.npy``: float32 [N, 3 + C], xyz first, then the extra columns the
json names (normals, colours scaled to [0, 1], intensities, ...). Skipped, with the reason:
clouds with no points, all points equal or fewer than ``min_points`` (one Point-MAE group); a
NaN or inf in any stored column, checked after the float32 cast (so a coordinate that overflows
float32 counts); more than ``max_points`` points or ``MAX_COLUMNS`` columns, refused from the
header, before the data is read, where the format declares them (.npy / .npz array headers,
PLY element counts, PCD ``POINTS``): a small file may declare billions of points, and an .npz
member or an ASCII PLY is allocated at its declared size.

``validate`` (``--validate``, shared with the other modalities) changes nothing here: what is
stored is a float32 array made from every value of the file (and its bounds), so every file is
read in full whatever it says; the checks on the values (NaN or inf, all points equal) cost
under 1% of that reading on the real scans in tests/data.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalmae.flags import arg, positive_int
from modalmae.formats.arrays import Refused, check_cloud_size, check_point_header
from modalmae.formats.schema import MAX_POINTS
from modalmae.shards.build import ShardBuilder
from modalmae.shards.types import Sample, Skip, validate_option

NAME = "points"
POINT_EXTENSIONS = frozenset({".npy", ".npz", ".xyz", ".pts", ".txt", ".pcd", ".ply"})
MESH_EXTENSIONS = frozenset({".off", ".obj", ".stl"})
EXTENSIONS = POINT_EXTENSIONS | MESH_EXTENSIONS
NPZ_NAMES = ("points", "xyz", "pos", "pc", "data")
COLOURS = ("red", "green", "blue", "alpha")


@dataclass(frozen=True)
class Options:
    """Scans are stored as float32 arrays, meshes sampled on their surface."""

    mesh_points: int = arg(8192, "meshes (.off .obj .stl, .ply with faces) become N points sampled on their surface, by area", type=positive_int, metavar="N")
    min_points: int = arg(32, "skip clouds with fewer points (32: one Point-MAE group)", type=positive_int, metavar="N")
    max_points: int = arg(MAX_POINTS, "skip clouds with more points and meshes with more vertices or faces; refused from the header, before reading, where the format declares a count (.npy .npz .ply .pcd)", type=positive_int, metavar="N")
    validate: str = validate_option()  # no effect: the stored array is converted from every value (module docstring)


class Unusable(ValueError):
    """The file holds no usable cloud; the message is the skip reason."""


def _generic(width: int) -> list[str]:
    return ["x", "y", "z"] + [f"f{i}" for i in range(3, width)]


def read_array(array: np.ndarray) -> tuple[np.ndarray, list[str]]:
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise Unusable(f"not a numeric array (dtype {array.dtype})")
    if array.ndim != 2 or array.shape[1] < 3:
        raise Unusable(f"expected an [N, 3+] array, got shape {list(array.shape)}")
    return array, _generic(array.shape[1])


def read_npy(data: bytes, max_points: int) -> tuple[np.ndarray, list[str]]:
    check_point_header(io.BytesIO(data), max_points=max_points, available=len(data), flag="--max-points")
    return read_array(np.lib.format.read_array(io.BytesIO(data), allow_pickle=False))


def read_npz(data: bytes, max_points: int) -> tuple[np.ndarray, list[str]]:
    """The cloud of an .npz; its member is deflated, so its header is checked before inflating it."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        names = list(members)
        pick = next((n for n in NPZ_NAMES if n in names), names[0] if len(names) == 1 else None)
        if pick is None:
            raise Unusable(f"no array named {'/'.join(NPZ_NAMES)} among {names}")
        with archive.open(members[pick]) as member:
            check_point_header(member, max_points=max_points, flag="--max-points")
        with archive.open(members[pick]) as member:
            return read_array(np.lib.format.read_array(member, allow_pickle=False))


def read_text(data: bytes, suffix: str) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.loadtxt(io.BytesIO(data), ndmin=2, comments="#", dtype=np.float64)
    except ValueError as e:
        raise Unusable(f"not whitespace-separated numbers ({e})") from e
    array, columns = read_array(array)
    if suffix == ".xyz" and array.shape[1] == 6:  # the x y z nx ny nz convention of .xyz scans
        columns = ["x", "y", "z", "nx", "ny", "nz"]
    return array, columns


PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
             ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def read_pcd(data: bytes, max_points: int) -> tuple[np.ndarray, list[str]]:
    """Point Cloud Library's format: a text header, then ASCII or binary rows."""
    header, pos = {}, 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise Unusable("PCD header has no DATA line")
        line = data[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if line and not line.startswith("#"):
            key, *values = line.split()
            header[key.upper()] = values
            if key.upper() == "DATA":
                break
    try:
        fields, sizes, types = header["FIELDS"], [int(s) for s in header["SIZE"]], header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        points = int(header["POINTS"][0])
        dtype = np.dtype([(f, PCD_TYPES[(t, s)], (c,)) if c > 1 else (f, PCD_TYPES[(t, s)]) for f, s, t, c in zip(fields, sizes, types, counts)])
    except (KeyError, ValueError) as e:
        raise Unusable(f"bad PCD header ({e})") from e
    check_cloud_size(points, len(fields), max_points=max_points, flag="--max-points")
    mode = header["DATA"][0].lower()
    if mode == "ascii":
        rows = np.loadtxt(io.BytesIO(data[pos:]), ndmin=2)
        table = {f: rows[:, i] for i, f in enumerate(fields)} if all(c == 1 for c in counts) else None
        if table is None:
            raise Unusable("ASCII PCD with multi-count fields is not supported")
    elif mode == "binary":
        table = np.frombuffer(data, dtype=dtype, count=points, offset=pos)
    else:
        raise Unusable(f"PCD data '{mode}' is not supported (ascii or binary)")
    if not {"x", "y", "z"} <= set(fields):
        raise Unusable(f"PCD has no x y z fields (has {fields})")
    extra = [f for f, c in zip(fields, counts) if f not in ("x", "y", "z") and c == 1]
    array = np.stack([np.asarray(table[f], dtype=np.float64) for f in ("x", "y", "z", *extra)], axis=1)
    return array, ["x", "y", "z", *extra]


def check_ply_header(data: bytes, max_points: int) -> None:
    """Check the element counts and properties a PLY header declares, from its text alone:
    plyfile allocates an ASCII file's elements at their declared count before reading them."""
    end = data.find(b"end_header")
    if end < 0:
        raise Unusable("PLY header has no end_header line")
    elements: list[list] = []  # [name, count, properties]
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if words[:1] == ["element"] and len(words) == 3:
            elements.append([words[1], int(words[2]), 0])
        elif words[:1] == ["property"] and elements:
            elements[-1][2] += 1
    for name, count, properties in elements:
        check_cloud_size(count, properties, max_points=max_points, flag="--max-points", what=f"{name} elements in the PLY header")


def vertex_columns(vertex) -> tuple[np.ndarray, list[str]]:
    """A PLY vertex element -> [N, 3 + C] with colours scaled to [0, 1]."""
    names = [n for n in vertex.data.dtype.names if vertex.data[n].ndim == 1]
    if not {"x", "y", "z"} <= set(names):
        raise Unusable(f"PLY vertices have no x y z (properties: {names})")
    ordered = ["x", "y", "z"] + [n for n in names if n not in ("x", "y", "z")]
    cols = []
    for n in ordered:
        col = np.asarray(vertex.data[n], dtype=np.float64)
        if n in COLOURS and np.issubdtype(vertex.data[n].dtype, np.integer):
            col = col / np.iinfo(vertex.data[n].dtype).max
        cols.append(col)
    return np.stack(cols, axis=1), ordered


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` points uniformly on a triangle mesh: faces drawn by area, then a uniform
    point in each (the square-root barycentric trick)."""
    tri = vertices[faces]  # [F, 3, 3]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise Unusable("mesh has no surface area")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=areas / total)
    r1, r2 = np.sqrt(rng.random(count))[:, None], rng.random(count)[:, None]
    a, b, c = tri[chosen, 0], tri[chosen, 1], tri[chosen, 2]
    return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c


def read_file(data: bytes, suffix: str, relpath: str, options: Options) -> tuple[np.ndarray, list[str], int | None]:
    """(array [N, 3 + C], column names, mesh face count or None)."""
    seed = int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "little")
    if suffix == ".npy":
        return (*read_npy(data, options.max_points), None)
    if suffix == ".npz":
        return (*read_npz(data, options.max_points), None)
    if suffix in (".xyz", ".pts", ".txt"):
        return (*read_text(data, suffix), None)
    if suffix == ".pcd":
        return (*read_pcd(data, options.max_points), None)
    if suffix == ".ply":
        import plyfile

        check_ply_header(data, options.max_points)
        ply = plyfile.PlyData.read(io.BytesIO(data))
        if "vertex" not in ply:
            raise Unusable("PLY has no vertex element")
        if "face" in ply and ply["face"].count > 0:
            faces = np.stack([np.asarray(f, dtype=np.int64)[:3] for f in ply["face"].data[ply["face"].data.dtype.names[0]]])
            xyz = np.stack([np.asarray(ply["vertex"].data[c], dtype=np.float64) for c in "xyz"], axis=1)
            return sample_surface(xyz, faces, options.mesh_points, seed), ["x", "y", "z"], len(faces)
        return (*vertex_columns(ply["vertex"]), None)
    import trimesh

    mesh = trimesh.load(io.BytesIO(data), file_type=suffix.lstrip("."), force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise Unusable("mesh has no faces")
    check_cloud_size(len(mesh.vertices), 3, max_points=options.max_points, flag="--max-points", what="mesh vertices")  # trimesh read them from text: bounded by the file
    check_cloud_size(len(mesh.faces), 3, max_points=options.max_points, flag="--max-points", what="mesh faces")
    return sample_surface(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces), options.mesh_points, seed), ["x", "y", "z"], len(mesh.faces)


def prepare(path: Path, relpath: str, options: Options) -> Sample | Skip:
    data = path.read_bytes()
    if not data:
        return Skip(relpath, "empty file")
    try:
        array, columns, faces = read_file(data, path.suffix.lower(), relpath, options)
    except (Unusable, Refused) as e:
        return Skip(relpath, str(e))
    except Exception as e:  # noqa: BLE001 - any reader failure is a reason to skip, not to stop
        return Skip(relpath, f"not a readable point cloud ({type(e).__name__}: {e})")
    if len(array) == 0:
        return Skip(relpath, "no points")
    try:
        check_cloud_size(*array.shape, max_points=options.max_points, flag="--max-points")
    except (Unusable, Refused) as e:
        return Skip(relpath, str(e))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is what the check below finds
        stored = np.ascontiguousarray(array, dtype=np.float32)  # [N, 3 + C]: what the loader reads
    finite = np.isfinite(stored)
    if not finite.all():
        bad = [c for c, ok in zip(columns, finite.all(axis=0)) if not ok]
        return Skip(relpath, f"{int((~finite).any(axis=1).sum())} point(s) with NaN or inf (as float32) in {' '.join(bad)}")
    xyz = stored[:, :3]
    if (xyz == xyz[0]).all():
        return Skip(relpath, "degenerate: all points are equal")
    if len(array) < options.min_points:
        return Skip(relpath, f"only {len(array)} points, fewer than --min-points {options.min_points}")
    buf = io.BytesIO()
    np.save(buf, stored, allow_pickle=False)
    meta = {
        "source": relpath, "format": path.suffix.lower().lstrip("."), "num_points": len(array), "columns": columns,
        "bounds": {"min": xyz.min(axis=0).astype(float).round(6).tolist(), "max": xyz.max(axis=0).astype(float).round(6).tolist()},
        "from_mesh": faces is not None,
    }
    if faces is not None:
        meta["mesh_faces"] = faces
    return Sample(files={"npy": buf.getvalue()}, meta=meta)


BUILDER = ShardBuilder(name=NAME, extensions=EXTENSIONS, options=Options, prepare=prepare)
