"""Point-MAE pretraining on WebDataset shards of point clouds (Pang et al. 2022).

Streams the shards written by ``pipelines/build_shards.py --modality points``: each cloud is
reduced to 1024 points (random subset, or --sampling fps), normalized into the unit sphere,
scaled and shifted, and grouped in the loader (64 farthest-point centres x 32 nearest points);
60 % of the groups are masked (random or block) and the decoder predicts their points, trained
with the Chamfer distance (L2 as Point-MAE, or L1).

    python recipes/point_mae.py --shards shards/scans --model tiny --max-steps 30
    accelerate launch recipes/point_mae.py --shards shards/shapenet --model small

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (the
trained encoder + decoder with its tokenizer config; ``modalmae.checkpoint.load_encoder``),
ranks/rank*.json, reconstruction.png.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from modalmae.data.points import PointDecoder
from modalmae.formats.schema import MAX_POINTS
from modalmae.masking import Masks, block_masking, random_masking
from modalmae.model import POINTMAE_DECODERS, PRESETS, MaskedAutoencoder
from modalmae.tokenizers.points import PointGroups
from modalmae.train.config import MASK_RATIO_HELP, MaskRatio, PretrainConfig, arg
from modalmae.train.recipe import Pretraining, run_pretraining


@dataclass
class PointMAEConfig(PretrainConfig):
    output: str = arg("runs/point_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")
    model: str = arg("small", "model size preset (Point-MAE: small, 384 wide, with a 4-block 384-wide decoder)", choices=("tiny", "small", "base", "large"))
    mask_ratio: MaskRatio = arg(MaskRatio("0.6"), MASK_RATIO_HELP.format(published="Point-MAE: 0.6"))
    masking: str = arg("random", "random groups, or block: a random group and its nearest neighbours", choices=("random", "block"))
    norm_pix_loss: bool = arg(False, "must stay off: point groups are compared as sets (Chamfer)")
    blr: float = arg(1e-3 * 256 / 128, "base learning rate for an effective batch of 256 (Point-MAE: 1e-3 at batch 128)")
    num_points: int = arg(1024, "points per cloud fed to the grouping")
    num_groups: int = arg(64, "groups (tokens) per cloud, their centres picked by farthest point sampling")
    group_size: int = arg(32, "nearest points per group")
    sampling: str = arg("random", "how --num-points are taken from a bigger cloud", choices=("random", "fps"))
    loss: str = arg("chamfer_l2", "Chamfer distance on the masked groups: squared (L2, Point-MAE) or not (L1)", choices=("chamfer_l2", "chamfer_l1"))
    augment: bool = arg(True, "Point-MAE's random per-axis scale (2/3 to 3/2) and shift (+-0.2)")
    max_points: int = arg(MAX_POINTS, "skip clouds of more points, refused from the .npy header before reading (as build_shards.py's flag)")
    fast_grouping: bool = arg(True, "group with the numba-compiled kernels in the loader when installed (the [fast] extra; same groups as the torch code)")


def build(cfg: PointMAEConfig) -> Pretraining:
    if cfg.norm_pix_loss:
        raise SystemExit("error: --norm-pix-loss does not apply to point groups (the loss is a Chamfer distance)")
    decode = PointDecoder(
        num_points=cfg.num_points, num_groups=cfg.num_groups, group_size=cfg.group_size, sampling=cfg.sampling,
        augment=cfg.augment, fast=None if cfg.fast_grouping else False, max_points=cfg.max_points,
    )
    model_cfg = PRESETS[cfg.model](norm_pix_loss=False, **POINTMAE_DECODERS.get(cfg.model, {}))
    tokenizer = PointGroups(embed_dim=model_cfg.encoder_dim, num_groups=cfg.num_groups, group_size=cfg.group_size, loss=cfg.loss)

    def masking(x: torch.Tensor, generator: torch.Generator, ratio: float | torch.Tensor, batch: dict) -> Masks:
        if cfg.masking == "block":
            return block_masking(x[:, :, 0], ratio, generator=generator)  # x: packed groups, centre first
        return random_masking(x.shape[0], cfg.num_groups, ratio, generator=generator)

    return Pretraining(
        model=MaskedAutoencoder(tokenizer, model_cfg), decode=decode, masking=masking,
        extra={"points": {"num_points": cfg.num_points, "sampling": cfg.sampling}},
    )


def main(argv: list[str] | None = None) -> int:
    return run_pretraining("points", PointMAEConfig, build, argv, doc=__doc__)

if __name__ == "__main__":
    sys.exit(main())
