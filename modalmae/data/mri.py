"""MRI subjects from shards -> fixed-size multi-sequence volumes (BM-MAE's preprocessing).

For each subject: every configured sequence the sample has is decoded, reoriented to RAS
(nibabel's closest canonical orientation: axes permuted and flipped, never resampled), resampled
to ``spacing`` mm (trilinear), cropped or zero-padded to ``crop`` voxels centred on the
foreground (the bounding box of voxels non-zero in any sequence), z-scored per sequence over its
non-zero voxels (the background stays 0), and in training flipped along each axis with
probability 1/2 (the same flips for every sequence). Sequences the subject lacks are zeros and
``present`` is False for them.

4-D files (fMRI, diffusion): ``four_d="split"`` treats each volume as an image of its own (in
training one volume drawn per visit, so an epoch stays one item per subject; in evaluation,
``rng=None``, one item per volume; 3-D sequences of the subject are repeated),
``four_d="channels"`` turns volume t of sequence ``s`` into sequence ``s_t`` (list those names
in ``sequences``).

Output items: ``{"volume": float32 [S, X, Y, Z], "present": bool [S], "label": str | None}``.

Shards may come from anywhere, so every entry is held to the builder's bounds again: a header
declaring more than ``max_voxels`` voxels or ``max_bytes`` bytes is refused before a voxel is
read, and a NaN or infinite voxel (as float32) makes the sample a skip, not a poisoned batch.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch
import torch.nn.functional as F

from modalmae.formats.nifti import MAX_BYTES, MAX_VOXELS, float32_voxels, load_nifti


def _triple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


def decode_sequences(
    sample: dict, *, max_voxels: int = MAX_VOXELS, max_bytes: int = MAX_BYTES,
) -> dict[str, tuple[np.ndarray, tuple[float, float, float]]]:
    """{sequence: (RAS array [X, Y, Z] or [X, Y, Z, T] float32, voxel spacing)} of a raw sample;
    ValueError for an entry over the limits (``formats.nifti.load_nifti``) or not finite."""
    import nibabel as nib

    out = {}
    for ext, data in sample.items():
        if ext.startswith("__") or not (ext.endswith(".nii") or ext.endswith(".nii.gz")):
            continue
        try:
            img = nib.as_closest_canonical(load_nifti(data, max_voxels=max_voxels, max_bytes=max_bytes))
            volume = float32_voxels(img)
        except ValueError as e:
            raise ValueError(f"{ext}: {e}") from None
        out[ext.split(".", 1)[0]] = (volume, tuple(float(z) for z in img.header.get_zooms()[:3]))
    return out


def resample(volumes: torch.Tensor, zooms: tuple[float, ...], spacing: tuple[float, ...]) -> torch.Tensor:
    """[C, X, Y, Z] at ``zooms`` mm -> [C, X', Y', Z'] at ``spacing`` mm, trilinear."""
    size = [max(1, round(n * z / s)) for n, z, s in zip(volumes.shape[1:], zooms, spacing)]
    if list(volumes.shape[1:]) == size:
        return volumes
    return F.interpolate(volumes[None], size=size, mode="trilinear", align_corners=False)[0]


def crop_or_pad(volumes: torch.Tensor, crop: tuple[int, int, int]) -> torch.Tensor:
    """[C, X, Y, Z] -> [C, *crop]: a window centred on the foreground, zero-padded where the
    volume is smaller."""
    foreground = np.any(volumes.numpy() != 0, axis=0)  # numpy: several times faster than torch's bool ops here
    out = volumes.new_zeros((volumes.shape[0], *crop))
    src, dst = [], []
    for axis, (n, size) in enumerate(zip(volumes.shape[1:], crop)):
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        centre = (hits[0] + hits[-1] + 1) / 2 if len(hits) else n / 2
        start = round(centre - size / 2)
        start = min(max(start, 0), n - size) if n >= size else start  # big volumes: stay inside
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = volumes[(slice(None), *src)]
    return out


def zscore_nonzero(volumes: torch.Tensor) -> torch.Tensor:
    """Per channel: (v - mean) / std over its non-zero voxels; zero voxels stay zero."""
    a = volumes.numpy()
    flat, inside = a.reshape(len(a), -1), a != 0
    count = np.maximum(inside.reshape(len(a), -1).sum(1), 2)  # [C]
    mean = flat.sum(1) / count  # zeros add nothing to the sum
    shape = (-1,) + (1,) * (a.ndim - 1)
    centred = np.where(inside, a - mean.reshape(shape).astype(a.dtype), 0).astype(a.dtype)
    std = np.sqrt((centred.reshape(len(a), -1) ** 2).sum(1) / (count - 1))
    return torch.from_numpy(centred / np.maximum(std, 1e-6).reshape(shape).astype(a.dtype))


class MRIDecoder:
    """A ``ShardStream`` decoder for shards of ``build_shards.py --modality mri``."""

    def __init__(
        self,
        *,
        sequences: list[str],
        spacing: float | tuple[float, float, float] = 1.0,
        crop: int | tuple[int, int, int] = 128,
        flip: bool = True,
        four_d: str = "split",
        max_voxels: int = MAX_VOXELS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if four_d not in ("split", "channels"):
            raise ValueError(f"four_d must be 'split' or 'channels', got {four_d!r}")
        self.sequences, self.spacing, self.crop = list(sequences), tuple(float(v) for v in _triple(spacing)), _triple(crop)
        self.flip, self.four_d = flip, four_d
        self.max_voxels, self.max_bytes = max_voxels, max_bytes

    @classmethod
    def from_checkpoint(cls, config: dict, *, train: bool) -> MRIDecoder:
        """The decoder a model folder's config.json implies: the tokenizer's sequences and
        volume size, the spacing and 4-D handling it was trained with (``extra.mri``; 1 mm and
        split if unrecorded), random flips in training only."""
        tok, mri = config["tokenizer"]["config"], config.get("extra", {}).get("mri", {})
        return cls(
            sequences=tok["sequences"], spacing=mri.get("spacing", 1.0), crop=tuple(tok["volume_size"]), flip=train,
            four_d=mri.get("four_d", "split"),
        )

    def _channels(self, decoded: dict, rng: random.Random | None) -> list[dict[str, np.ndarray]]:
        """One {sequence: 3-D array} per item, from 3-D and 4-D entries."""
        plain = {s: a for s, (a, _) in decoded.items() if a.ndim == 3}
        series = {s: a for s, (a, _) in decoded.items() if a.ndim == 4}
        if self.four_d == "channels":
            for s, a in series.items():
                plain.update({f"{s}_{t}": a[..., t] for t in range(a.shape[3])})
            return [plain]
        if not series:
            return [plain]
        length = min(a.shape[3] for a in series.values())
        # Training takes one volume per visit (epochs stay one item per subject); evaluation all.
        picks = [rng.randrange(length)] if rng is not None else range(length)
        return [{**plain, **{s: a[..., t] for s, a in series.items()}} for t in picks]

    def preprocess(self, arrays: dict[str, np.ndarray], zooms: dict[str, tuple[float, ...]], rng: random.Random | None) -> dict:
        """Sequences on grids covering the same box (``build_shards`` checks it), each at its own
        spacing -> one [S, *crop] volume. Resampled sizes may differ by a voxel of rounding:
        the common part is kept."""
        names = [s for s in self.sequences if s in arrays]
        groups: dict[tuple, list[str]] = {}
        for name in names:  # sequences at the same spacing are resampled together
            groups.setdefault(zooms[name], []).append(name)
        stacks = {spacing: resample(torch.from_numpy(np.stack([arrays[s] for s in members])), spacing, self.spacing) for spacing, members in groups.items()}
        if len(stacks) == 1:  # the usual case: one spacing, nothing to align
            (stack,) = stacks.values()  # [P, X, Y, Z], in ``names`` order
        else:
            resampled = {name: volume for spacing, members in groups.items() for name, volume in zip(members, stacks[spacing])}
            common = [min(resampled[n].shape[axis] for n in names) for axis in range(3)]
            stack = torch.stack([resampled[n][: common[0], : common[1], : common[2]] for n in names])
        stack = crop_or_pad(stack, self.crop)
        stack = zscore_nonzero(stack)
        if self.flip and rng is not None:
            axes = [1 + a for a in range(3) if rng.random() < 0.5]
            stack = stack.flip(axes) if axes else stack
        volume = torch.zeros((len(self.sequences), *self.crop))
        present = torch.zeros(len(self.sequences), dtype=torch.bool)
        for row, name in zip(stack, names):
            volume[self.sequences.index(name)], present[self.sequences.index(name)] = row, True
        return {"volume": volume, "present": present}

    def __call__(self, sample: dict, rng: random.Random | None) -> list[dict]:
        decoded = decode_sequences(sample, max_voxels=self.max_voxels, max_bytes=self.max_bytes)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if not decoded:
            raise ValueError("no NIfTI entry in this sample")
        items = []
        for arrays in self._channels(decoded, rng):
            if not any(s in arrays for s in self.sequences):
                raise ValueError(f"none of the sequences {self.sequences} in this subject (it has {sorted(arrays)})")
            items.append({**self.preprocess(arrays, self._spacings(decoded, arrays), rng), "label": meta.get("label")})
        return items

    @staticmethod
    def _spacings(decoded: dict, arrays: dict) -> dict[str, tuple[float, float, float]]:
        """Voxel spacing of every array (channels of a 4-D sequence share its spacing)."""
        return {name: decoded[name if name in decoded else name.rsplit("_", 1)[0]][1] for name in arrays}
