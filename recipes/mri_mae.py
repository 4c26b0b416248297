"""BM-MAE pretraining on WebDataset shards of multi-sequence MRI (MultiMAE-style masking).

Streams the shards written by ``pipelines/build_shards.py --modality mri`` (one sample per
subject): the --sequences a subject has are reoriented to RAS, resampled to --spacing mm,
cropped to --crop voxels around the foreground, z-scored and flipped, then cut into
--patch-size^3 patches per sequence (BM-MAE: 4 sequences x 512 tokens at 128^3, 16^3). A fixed
budget of visible tokens (--num-visible; default (1 - mask ratio) x the tokens of one sequence)
is split among the sequences each subject has by a Dirichlet draw (--dirichlet-alpha); missing
sequences give no token and no loss. The loss is the mean over sequences of each one's MSE on
its masked patches, logged per sequence in metrics.jsonl (``loss_<sequence>``).

    python recipes/mri_mae.py --shards shards/brats --model tiny --crop 64 --patch-size 16 --max-steps 30
    accelerate launch recipes/mri_mae.py --shards shards/brats --model base

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (encoder +
decoder with the tokenizer config), ranks/rank*.json, reconstruction.png (axial, coronal and
sagittal slices of input, masked input and reconstruction of every sequence; a sequence the
subject lacks is reconstructed from the others).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from modalmae.data.mri import MRIDecoder
from modalmae.formats.nifti import MAX_BYTES, MAX_VOXELS
from modalmae.masking import Masks, dirichlet_masking
from modalmae.model import PRESETS, MaskedAutoencoder
from modalmae.tokenizers.volume import VolumePatches
from modalmae.train.config import MaskRatio, PretrainConfig, arg
from modalmae.train.recipe import Pretraining, run_pretraining


@dataclass
class MRIMAEConfig(PretrainConfig):
    output: str = arg("runs/mri_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    sequences: list[str] = arg(["t1", "t1ce", "t2", "flair"], "the sequences, in order (names as in the shards; a subject may lack any of them)")
    spacing: float = arg(1.0, "voxel spacing in mm the volumes are resampled to (trilinear)")
    crop: int = arg(128, "volumes are cropped / zero-padded to crop^3 voxels centred on the foreground")
    patch_size: int = arg(16, "edge of the cubic patches (tokens) in voxels")
    mask_ratio: MaskRatio = arg(MaskRatio("0.75"), "sets --num-visible unless given: (1 - ratio) x the tokens of one sequence; R, or a schedule over the steps: linear:R0:R1 or cosine:R0:R1")
    num_visible: int = arg(None, "visible tokens per subject, split among its sequences (default: from --mask-ratio)")
    dirichlet_alpha: float = arg(1.0, "concentration of the Dirichlet split of the visible tokens among sequences (MultiMAE: 1)")
    four_d: str = arg("split", "4-D files (fMRI, diffusion): each volume an image of its own, or volume t of sequence s as sequence s_t", choices=("split", "channels"))
    flip: bool = arg(True, "random flips along each axis (the same for every sequence)")
    max_voxels: int = arg(MAX_VOXELS, "skip volumes whose header declares more voxels, before reading them (2^27 = 512^3; as build_shards.py's flag)")
    max_nifti_bytes: int = arg(MAX_BYTES, "skip NIfTI files whose header declares more bytes once decompressed, before inflating them")
    norm_pix_loss: bool = arg(False, "normalize each target patch by its own mean and std (BM-MAE: off; intensities are z-scored per sequence)")


def build(cfg: MRIMAEConfig) -> Pretraining:
    decode = MRIDecoder(
        sequences=cfg.sequences, spacing=cfg.spacing, crop=cfg.crop, flip=cfg.flip, four_d=cfg.four_d,
        max_voxels=cfg.max_voxels, max_bytes=cfg.max_nifti_bytes,
    )
    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss)
    tokenizer = VolumePatches(embed_dim=model_cfg.encoder_dim, sequences=cfg.sequences, volume_size=cfg.crop, patch_size=cfg.patch_size)
    per_sequence = tokenizer.tokens_per_sequence
    if cfg.mask_ratio.per_sample:
        raise SystemExit("error: --mask-ratio uniform:LOW:HIGH: the Dirichlet split needs one visible budget for every subject")

    def visible(ratio: float) -> int:
        num_visible = cfg.num_visible or max(1, round((1 - ratio) * per_sequence))
        if not 0 < num_visible < per_sequence:
            raise SystemExit(f"error: --num-visible must be in 1..{per_sequence - 1} (a subject may have a single sequence of {per_sequence} tokens)")
        return num_visible

    visible(cfg.mask_ratio.start)  # refuse a bad budget before training starts

    def masking(x: dict, generator: torch.Generator, ratio: float, batch: dict) -> Masks:
        return dirichlet_masking(x["present"].cpu(), per_sequence, visible(ratio), alpha=cfg.dirichlet_alpha, generator=generator)

    return Pretraining(
        model=MaskedAutoencoder(tokenizer, model_cfg), decode=decode, masking=masking,
        extra={"mri": {"sequences": cfg.sequences, "spacing": cfg.spacing, "crop": cfg.crop, "four_d": cfg.four_d}},
    )


def main(argv: list[str] | None = None) -> int:
    return run_pretraining("mri", MRIMAEConfig, build, argv, doc=__doc__)

if __name__ == "__main__":
    sys.exit(main())
