"""MRI preprocessing on real volumes: RAS reorientation, resampling, foreground-centred crop,
z-scoring over the brain, shared flips, 4-D handling."""

import random

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import DATA
from modalmae.data.mri import MRIDecoder, crop_or_pad, decode_sequences, resample, zscore_nonzero

MRI = DATA / "mri"


def sample_of(**volumes) -> dict:
    """A raw shard sample {"<seq>.nii": bytes} from nibabel images."""
    return {"__key__": "s", **{f"{name}.nii": img.to_bytes() for name, img in volumes.items()}}


def test_reorientation_to_ras_undoes_a_stored_flip():
    img = nib.load(MRI / "anatomical.nii")  # stored LAS
    data = np.asanyarray(img.dataobj)
    # the same head stored the other way along x (RAS): flipped array, matching affine
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    ras = nib.Nifti1Image(data[::-1].copy(), img.affine @ flip, img.header)
    assert "".join(nib.aff2axcodes(ras.affine)) == "RAS"
    a, b = decode_sequences(sample_of(t1=img))["t1"], decode_sequences(sample_of(t1=ras))["t1"]
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] == (2.0, 2.0, 2.0)
    # and a PLS file comes back with x from its L axis reversed, y from its P axis reversed, z as is
    dwi = decode_sequences(sample_of(dwi=nib.load(MRI / "small_64D.nii")))["dwi"][0]
    raw = np.asanyarray(nib.load(MRI / "small_64D.nii").dataobj)
    assert np.array_equal(dwi, np.flip(raw.transpose(1, 0, 2, 3), axis=(0, 1)).astype(np.float32))


def test_resample_crop_and_zscore():
    vol = torch.zeros(1, 20, 20, 20)
    vol[0, 2:8, 10:16, 4:10] = torch.arange(216, dtype=torch.float32).view(6, 6, 6) + 1
    up = resample(vol, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))
    assert up.shape == (1, 40, 40, 40)
    crop = crop_or_pad(vol, (8, 8, 8))
    assert (crop != 0).sum() == (vol != 0).sum()  # the whole foreground fits, centred
    padded = crop_or_pad(vol, (30, 30, 30))
    nz = padded[0].nonzero().float()
    assert torch.allclose((nz.min(0).values + nz.max(0).values) / 2, torch.tensor([14.5, 14.5, 14.5]))
    z = zscore_nonzero(vol)
    inside = vol != 0
    assert abs(z[inside].mean().item()) < 1e-5 and abs(z[inside].std().item() - 1) < 1e-4 and (z[~inside] == 0).all()


def test_subject_with_missing_sequence_and_shared_flips():
    t1, wm = (nib.load(MRI / "icbm152" / f"{n}.nii.gz") for n in ("t1", "wm"))
    decode = MRIDecoder(sequences=["t1", "gm", "wm"], spacing=3.0, crop=32)
    (item,) = decode(sample_of(t1=t1, wm=wm), random.Random(3))
    assert item["volume"].shape == (3, 32, 32, 32) and item["present"].tolist() == [True, False, True]
    assert (item["volume"][1] == 0).all()
    (plain,) = MRIDecoder(sequences=["t1", "gm", "wm"], spacing=3.0, crop=32, flip=False)(sample_of(t1=t1, wm=wm), None)
    flips = [axes for axes in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]) if torch.equal(plain["volume"].flip(axes) if axes else plain["volume"], item["volume"])]
    assert len(flips) == 1  # t1 and wm flipped alike


def test_4d_split_and_channels():
    fmri = nib.load(MRI / "functional.nii")  # [17, 21, 3, 20] at 4 x 4 x 8 mm
    split = MRIDecoder(sequences=["bold"], spacing=4.0, crop=16, four_d="split")
    assert len(split(sample_of(bold=fmri), random.Random(0))) == 1  # training: one volume per visit
    everything = split(sample_of(bold=fmri), None)
    assert len(everything) == 20 and not torch.equal(everything[0]["volume"], everything[5]["volume"])
    channels = MRIDecoder(sequences=["bold_0", "bold_1", "bold_19", "bold_20"], spacing=4.0, crop=16, four_d="channels", flip=False)
    (item,) = channels(sample_of(bold=fmri), None)
    assert item["present"].tolist() == [True, True, True, False]
    assert torch.equal(item["volume"][0], everything[0]["volume"][0])


def test_no_configured_sequence_is_an_error():
    with pytest.raises(ValueError, match="none of the sequences"):
        MRIDecoder(sequences=["flair"], crop=16)(sample_of(t1=nib.load(MRI / "anatomical.nii")), None)


def coarser(img, factor: int):
    """The same head at ``factor`` x the voxel size, covering the same box (every factor-th voxel)."""
    data = np.asanyarray(img.dataobj)[::factor, ::factor, ::factor]
    affine = img.affine.copy()
    affine[:3, :3] *= factor
    affine[:3, 3] += img.affine[:3, :3] @ np.full(3, (factor - 1) / 2)  # voxel centres move by half the growth
    return nib.Nifti1Image(np.ascontiguousarray(data), affine)


def test_sequences_at_different_resolutions_share_one_grid(tmp_path):
    from modalmae.shards import build_shards, mri

    t1, wm = (nib.load(MRI / "icbm152" / f"{n}.nii.gz") for n in ("t1", "wm"))
    raw = tmp_path / "raw" / "head"
    raw.mkdir(parents=True)
    nib.save(t1, raw / "t1.nii.gz")
    nib.save(coarser(wm, 2), raw / "wm.nii.gz")  # 6 mm, 33 x 39 x 32
    manifest = build_shards(builder=mri.BUILDER, input_dir=raw.parent, output_dir=tmp_path / "out", workers=1, progress=False)
    assert manifest["num_samples"] == 1 and not manifest["skipped"]
    (item,) = MRIDecoder(sequences=["t1", "wm"], spacing=3.0, crop=64, flip=False)(sample_of(t1=t1, wm=coarser(wm, 2)), None)
    assert item["volume"].shape == (2, 64, 64, 64) and item["present"].all()
    # resampling a grid that covers the same box lands voxel on voxel (align_corners=False)
    coarse, zooms = decode_sequences(sample_of(wm=coarser(wm, 2)))["wm"]
    up = resample(torch.from_numpy(coarse)[None], zooms, (3.0, 3.0, 3.0))[0]
    fine = torch.from_numpy(decode_sequences(sample_of(wm=wm))["wm"][0])
    assert zooms == (6.0, 6.0, 6.0) and up.shape == (66, 78, 64)
    a, b = up[:, :, :63].flatten(), fine.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert torch.corrcoef(torch.stack([up[1:, :, :63].flatten(), fine[:-1].flatten()]))[0, 1] < torch.corrcoef(torch.stack([a, b]))[0, 1]
    moved = wm.affine.copy()
    moved[0, 3] += 30  # 10 voxels along x: another box
    assert mri.grid_mismatch((t1.shape, t1.affine), (wm.shape, moved), tolerance=1e-3).startswith("they cover different boxes")
