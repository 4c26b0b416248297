"""MRI subjects -> shard samples: one sample per subject, one entry per sequence (BM-MAE's input).

Subjects are found from the folder layout, or from a CSV (``subject,sequence,path``):

- ``<subject>/<subject>_<sequence>.nii.gz`` (BraTS: ``BraTS20_Training_001_t1.nii.gz``; ``-`` also
  separates, as in BraTS 2023's ``BraTS-GLI-00000-000-t1n``);
- ``<folder>/<name>_<sequence>.nii.gz``: subject ``<folder>/<name>``, the sequence after the last ``_``;
- ``<subject>/<sequence>.nii.gz`` (e.g. ``mni152/t1.nii.gz``, ``mni152/gm.nii.gz``);
- a file at the top level without ``_``: a subject of its own, sequence ``--default-sequence``.

Every volume is decoded in full, after its header's size is checked: a file declaring more than
``max_voxels`` voxels (all volumes of a 4-D series together) or inflating to more than
``max_nifti_bytes`` is refused before a voxel is read; so is a volume with a NaN or infinite
voxel once scaled and cast to float32, as the loader reads it. An unreadable or refused volume
is left out of its subject (which stays valid with that sequence missing; the manifest lists
it under ``warnings``). Sequences may differ in resolution (the loader resamples each to the
target spacing) but must cover the same box in the same directions once reoriented to RAS (to
a voxel); a subject whose sequences do not is skipped with the boxes in the reason: aligning
them needs a registration this tool does not guess. The bytes are stored as they are (``<sequence>.nii`` or
``<sequence>.nii.gz``; our writer does not re-compress), the json records each sequence's shape,
voxel spacing and orientation.

With ``validate="header"`` (``--validate header``) only each NIfTI header is read (a ``.nii.gz``
is inflated no further than its header and extensions): the same limits, the same json and
grid checks (all from the header), and a plain ``.nii`` shorter than its header declares is
still refused; what is not checked is the voxels themselves (NaN or inf, a gzip stream
corrupt or cut short past the header), which the loader then meets.

DICOM (``pip install 'modalmae[dicom]'``): a folder of ``.dcm`` slices is one series, laid out
``<subject>/<sequence>/*.dcm``. Its slices are ordered along the slice normal, scaled by
RescaleSlope / RescaleIntercept and stored as a gzipped NIfTI (``<sequence>.nii.gz``) with the
affine of its ImagePositionPatient / ImageOrientationPatient / PixelSpacing (LPS turned RAS).
Single-frame slices of one series on a regular spacing are read; anything else (several series
in one folder, uneven slice gaps, enhanced multi-frame files) is left out with the reason.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from modalmae.flags import arg, positive_int
from modalmae.formats.nifti import (
    GZIP_MAGIC, MAX_BYTES, MAX_VOXELS, VolumeTooLarge, check_nifti, load_nifti_header,
)
from modalmae.formats.schema import MEMBER_NAME
from modalmae.shards.build import ShardBuilder, suffix_of
from modalmae.shards.types import Sample, Skip, validate_option

NAME = "mri"
EXTENSIONS = frozenset({".nii", ".nii.gz"})  # for messages: find_jobs groups the files


@dataclass
class Options:
    """One sample per subject: <subject>/<subject>_<sequence>.nii.gz, <subject>/<sequence>.nii.gz,
    <subject>/<sequence>/*.dcm, or --subjects-csv."""

    subjects_csv: str | None = arg(None, "CSV with columns subject,sequence,path (path relative to --input) instead of the folder layout", metavar="CSV")
    default_sequence: str = arg("t1", "sequence name of a lone .nii file at the top of --input", metavar="NAME")
    grid_tolerance: float = arg(1e-3, "mm: largest affine difference between a subject's sequences", flag=False)
    max_voxels: int = arg(MAX_VOXELS, "leave out volumes whose header declares more voxels (a 4-D file: all its volumes), before reading them (2^27 = 512^3)", type=positive_int, metavar="N")
    max_nifti_bytes: int = arg(MAX_BYTES, "leave out NIfTI files whose header declares more bytes once decompressed (header, extensions, voxels), before inflating them", type=positive_int, metavar="BYTES")
    validate: str = validate_option()


@dataclass
class Subject:
    """What ``prepare`` gets for one subject: its sequences' files."""

    files: dict[str, Path] = field(default_factory=dict)  # sequence -> absolute path (a folder: a DICOM series)
    relpaths: dict[str, str] = field(default_factory=dict)  # sequence -> path relative to the input
    problems: list[str] = field(default_factory=list)  # files found but not used, with the reason


def nifti_stem(name: str) -> str | None:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def split_name(relpath: str, default_sequence: str) -> tuple[str, str]:
    """(subject relpath, sequence) of a NIfTI file from the layouts above."""
    path = PurePosixPath(relpath)
    stem, parent = nifti_stem(path.name), path.parent
    if parent.name and re.match(re.escape(parent.name) + r"[_-]", stem):
        return parent.as_posix(), stem[len(parent.name) + 1 :]
    if "_" in stem:
        subject, sequence = stem.rsplit("_", 1)
        return (parent / subject).as_posix(), sequence
    if parent.name:
        return parent.as_posix(), stem
    return stem, default_sequence


def read_subjects_csv(path: str | os.PathLike, root: Path) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip().lower() for c in row[:3]] == ["subject", "sequence", "path"]):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{i + 1}: expected 'subject,sequence,path', got {row!r}")
            subject, sequence, rel = (c.strip() for c in row[:3])
            entry = subjects.setdefault(subject, Subject())
            if sequence in entry.files:
                raise ValueError(f"{path}:{i + 1}: subject {subject!r} has sequence {sequence!r} twice")
            entry.files[sequence], entry.relpaths[sequence] = root / rel, PurePosixPath(rel).as_posix()
    return subjects


def check(options: Options, root: Path) -> None:
    """Read --subjects-csv once before any decoding, so a bad table fails at once."""
    if options.subjects_csv:
        read_subjects_csv(options.subjects_csv, root)


def find_jobs(root: Path, options: Options) -> tuple[list[tuple[Subject, str]], Counter]:
    """(subject, subject relpath) jobs in sorted order, and the other files counted by suffix."""
    if options.subjects_csv:
        subjects = read_subjects_csv(options.subjects_csv, root)
        return [(subjects[s], s) for s in sorted(subjects)], Counter()
    subjects, ignored = {}, Counter()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root).as_posix()
        if rel != "." and any(n.lower().endswith(".dcm") for n in names):  # a DICOM series: <subject>/<sequence>/
            series = PurePosixPath(rel)
            subject = series.parent.as_posix() if series.parent.name else series.name
            entry = subjects.setdefault(subject, Subject())
            entry.files[series.name], entry.relpaths[series.name] = Path(folder), rel
            ignored.update(suffix_of(n) for n in names if not n.lower().endswith(".dcm") and not n.startswith("."))
            continue
        for name in sorted(names):
            if name.startswith("."):
                continue
            if nifti_stem(name) is None:
                ignored[suffix_of(name)] += 1
                continue
            relpath = name if rel == "." else f"{rel}/{name}"
            subject, sequence = split_name(relpath, options.default_sequence)
            entry = subjects.setdefault(subject, Subject())
            if sequence in entry.files:  # two files claim one sequence: keep the first, say so
                entry.problems.append(f"{relpath}: {entry.relpaths[sequence]} already gives sequence {sequence!r}")
                continue
            entry.files[sequence], entry.relpaths[sequence] = root / relpath, relpath
    return [(subjects[s], s) for s in sorted(subjects)], ignored


def dicom_series_to_nifti(folder: Path, *, max_voxels: int = MAX_VOXELS) -> bytes:
    """A folder of single-frame DICOM slices of one series -> gzipped NIfTI bytes (RAS affine);
    refused above ``max_voxels`` from the slices' Rows and Columns, before any pixel is decoded."""
    try:
        import pydicom
    except ImportError as e:
        raise ImportError("DICOM series need pydicom: pip install 'modalmae[dicom]'") from e
    import nibabel as nib

    slices = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm")) + sorted(folder.glob("*.DCM"))]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise ValueError(f"{len(series)} series in one folder: give each its own folder")
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in slices):
        raise ValueError("multi-frame (enhanced) DICOM is not read: convert it with dcm2niix")
    voxels = sum(int(ds.Rows) * int(ds.Columns) for ds in slices)
    if voxels > max_voxels:
        raise VolumeTooLarge(f"too large: {len(slices)} slices of {voxels} voxels in all, more than --max-voxels {max_voxels}")
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]  # along a row (columns grow), down a column (rows grow)
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=np.float64))))
    positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=np.float64)
    gaps = np.diff(positions @ normal)
    if len(slices) > 1 and (gaps.min() <= 0 or gaps.max() - gaps.min() > 0.01 * gaps.mean() + 1e-3):
        raise ValueError(f"slice positions are not evenly spaced (gaps {gaps.min():.3f} to {gaps.max():.3f} mm)")
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    step = (positions[-1] - positions[0]) / (len(slices) - 1) if len(slices) > 1 else normal * float(getattr(slices[0], "SliceThickness", 1.0))
    volume = np.stack([
        ds.pixel_array.astype(np.float32).T * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        for ds in slices
    ], axis=-1)  # [columns, rows, slices]: i along the row direction, j down the columns
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row_dir * col_spacing, col_dir * row_spacing, step, positions[0]
    affine[:2] *= -1  # DICOM's patient axes are LPS, NIfTI's RAS
    return gzip.compress(nib.Nifti1Image(volume, affine).to_bytes(), mtime=0)


def ras_grid(img) -> tuple[np.ndarray, tuple[int, ...]]:
    """(affine, 3-D shape) of ``nib.as_closest_canonical(img)``, from the header alone (that
    function reorders the voxels to get them)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    orientation = io_orientation(img.affine)
    shape = apply_orientation(np.broadcast_to(np.uint8(0), img.shape[:3]), orientation).shape  # a view: no voxels
    return img.affine @ inv_ornt_aff(orientation, img.shape), tuple(int(n) for n in shape)


def describe(data: bytes, *, depth: str = "full", max_voxels: int = MAX_VOXELS, max_bytes: int = MAX_BYTES) -> tuple[dict, np.ndarray, tuple[int, ...]]:
    """(json record, RAS affine, RAS 3-D shape) of one volume, decoded in full to check it when
    ``depth`` is "full", from its header alone when "header": the same three either way."""
    import nibabel as nib

    try:
        load = check_nifti if depth == "full" else load_nifti_header  # full: every voxel read and checked
        img = load(data, max_voxels=max_voxels, max_bytes=max_bytes)
    except VolumeTooLarge as e:
        raise VolumeTooLarge(str(e).replace("max_voxels", "--max-voxels").replace("max_bytes", "--max-nifti-bytes")) from None
    if img.ndim not in (3, 4):
        raise ValueError(f"{img.ndim}-D image: expected a 3-D volume or a 4-D series of volumes")
    affine, shape = ras_grid(img)
    record = {
        "shape": [int(n) for n in img.shape],
        "spacing": [round(float(z), 6) for z in img.header.get_zooms()[:3]],
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "dtype": str(img.get_data_dtype()),
        "compressed": data[:2] == GZIP_MAGIC,
    }
    return record, affine, shape


def field_of_view(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(axis directions [3, 3], first corner, far corner) in mm of a RAS grid: the box its voxels cover."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / zooms
    near = affine[:3, 3] - directions @ (zooms / 2)
    far = affine[:3, 3] + directions @ ((np.asarray(shape) - 0.5) * zooms)
    return directions, near, far


def grid_mismatch(a: tuple, b: tuple, *, tolerance: float) -> str | None:
    """Why two (RAS shape, affine) grids cannot be resampled onto one another voxel for voxel,
    or None: they must share axis directions and cover the same box (to a voxel)."""
    (shape_a, affine_a), (shape_b, affine_b) = a, b
    if shape_a == shape_b and np.allclose(affine_a, affine_b, atol=tolerance):
        return None
    dir_a, near_a, far_a = field_of_view(shape_a, affine_a)
    dir_b, near_b, far_b = field_of_view(shape_b, affine_b)
    voxel = max(np.linalg.norm(affine_a[:3, :3], axis=0).max(), np.linalg.norm(affine_b[:3, :3], axis=0).max())
    if not np.allclose(dir_a, dir_b, atol=1e-3):
        return "their axes point in different directions (oblique or rotated acquisitions)"
    if np.abs(near_a - near_b).max() > voxel or np.abs(far_a - far_b).max() > voxel:
        box = lambda n, f: f"{np.round(n, 1).tolist()} to {np.round(f, 1).tolist()} mm"  # noqa: E731
        return f"they cover different boxes, {box(near_a, far_a)} vs {box(near_b, far_b)}"
    return None


def prepare(subject: Subject, relpath: str, options: Options) -> Sample | Skip:
    files, records, grids, problems = {}, {}, {}, list(subject.problems)
    for sequence in sorted(subject.files):
        if not MEMBER_NAME.fullmatch(f"k.{sequence}.nii") or "." in sequence:  # its entry must be a name readers take
            problems.append(f"{subject.relpaths[sequence]}: sequence name {sequence!r} is empty or has a '.', '/', '\\' or control character")
            continue
        try:
            path = subject.files[sequence]
            data = dicom_series_to_nifti(path, max_voxels=options.max_voxels) if path.is_dir() else path.read_bytes()
            depth = "full" if path.is_dir() else options.validate  # a DICOM series was just decoded to be converted
            record, affine, shape = describe(data, depth=depth, max_voxels=options.max_voxels, max_bytes=options.max_nifti_bytes)
            if path.is_dir():
                record["converted_from"] = "dicom"
        except Exception as e:  # noqa: BLE001 - one bad volume leaves its sequence out, not the subject
            problems.append(f"{subject.relpaths[sequence]}: {type(e).__name__}: {e}")
            continue
        files[f"{sequence}.nii.gz" if record["compressed"] else f"{sequence}.nii"] = data
        records[sequence] = {"source": subject.relpaths[sequence], **record}
        grids[sequence] = (shape, affine)
    if not records:
        return Skip(relpath, "no readable volume: " + "; ".join(problems))
    first = next(iter(grids))
    for sequence in grids:
        reason = grid_mismatch(grids[first], grids[sequence], tolerance=options.grid_tolerance)
        if reason:
            return Skip(relpath, f"{first} and {sequence} cannot be brought to one grid: {reason} (register them first)")
    meta = {"source": relpath, "subject": PurePosixPath(relpath).name, "sequences": records, "present": sorted(records)}
    return Sample(files=files, meta=meta, warning="; ".join(f"left out {p}" for p in problems) or None)


BUILDER = ShardBuilder(
    name=NAME, extensions=EXTENSIONS, options=Options, prepare=prepare, find_jobs=find_jobs, check=check,
    preload=("nibabel",),  # 0.2 s to import: once in the forkserver, not in every worker of every build
)
