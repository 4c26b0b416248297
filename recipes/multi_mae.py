"""Mixed corpora: one encoder pretrained on shards of several modalities at once (MultiMAE-style shared encoder, each modality its own tokenizer and head).

--shards names a corpus per modality, e.g. ``audio=shards/speech video=shards/clips
points=shards/scans image=shards/photos`` (any modality of build_shards.py; repeat one to mix
several sets of it). Each modality is prepared, tokenized and masked exactly as its own recipe
does (``recipes/<modality>_mae.py``, whose flags --recipe-flags passes on, e.g.
``video="--num-frames 8 --input-size 112"``), and one encoder with a learned modality embedding
per modality learns from all of them: --specific-depth blocks per modality, the rest shared
(default 0: fully shared), one decoder with a head per modality.

Every step holds a batch of every corpus (--weights sets each corpus's share of --batch-size,
at least one sample each): under DDP every process then uses every parameter in every step,
so there is no unused-parameter error and no hang, and no ``find_unused_parameters`` needed.
Each corpus has its own loader (``--workers`` worker processes each), exact epochs and resume
position.
The loss is the samples' mean of each modality's reconstruction loss (MSE on masked patches;
Chamfer for points), each logged as loss_<modality> in metrics.jsonl.

    python recipes/multi_mae.py --shards audio=shards/speech image=shards/photos --model tiny --max-steps 30 \\
        --recipe-flags audio="--num-frames 512" image="--image-size 64"
    accelerate launch recipes/multi_mae.py --shards audio=shards/as2m video=shards/k400 image=shards/in1k --model base

Writes to --output: config.json, metrics.jsonl, checkpoints/step_*/ (resumable), model/ (the
joint model; ``load_encoder(path, modality=...)`` takes one modality's encoder),
ranks/rank*.json, reconstruction.png (one sample of the first corpus).
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from modalmae.modalities import MODALITIES
from modalmae.model import PRESETS
from modalmae.model.multimodal import MultiModalMAE
from modalmae.train.config import MaskRatio, arg, parse_config
from modalmae.train.feed import Corpus
from modalmae.train.joint import JointConfig, JointPretraining, Stream, parse_weights, run_joint_pretraining
from modalmae.train.recipe import open_shards


@dataclass
class MultiMAEConfig(JointConfig):
    shards: list[str] = arg(None, "MODALITY=SHARDS for each corpus (a folder from build_shards.py, its manifest.json, or a brace pattern)", required=True)
    weights: list[str] = arg(None, "MODALITY=WEIGHT: each corpus's share of every batch (default: equal shares; every corpus gets at least one sample)")
    recipe_flags: list[str] = arg(None, "MODALITY=FLAGS: settings for that modality's own recipe (see recipes/<modality>_mae.py --help), e.g. video='--num-frames 8'")
    specific_depth: int = arg(0, "encoder blocks each modality has of its own before the shared ones (0: one fully shared encoder)")
    output: str = arg("runs/multi_mae", "run folder: config.json, metrics.jsonl, checkpoints/, model/, reconstruction.png")


def split_batch(batch_size: int, weights: dict[str, float]) -> dict[str, int]:
    """``batch_size`` shared out in proportion to ``weights`` (largest remainders), at least 1 each."""
    if batch_size < len(weights):
        raise SystemExit(f"error: --batch-size {batch_size} cannot hold a sample of each of {len(weights)} corpora")
    ideal = {m: batch_size * w / sum(weights.values()) for m, w in weights.items()}
    counts = {m: max(1, int(x)) for m, x in ideal.items()}
    while sum(counts.values()) > batch_size:  # the minimum of 1 overdrew: take from the most over-served
        counts[max((m for m in counts if counts[m] > 1), key=lambda m: counts[m] - ideal[m])] -= 1
    while sum(counts.values()) < batch_size:
        counts[max(counts, key=lambda m: ideal[m] - counts[m])] += 1
    return counts


def recipe_part(modality: str, shards: list[str], model: str, flags: str):
    """(config, Pretraining) of ``modality``'s own recipe, run with ``flags``: its tokenizer,
    sample decoder, masking and saved settings."""
    path = Path(__file__).with_name(MODALITIES[modality].recipe)
    spec = importlib.util.spec_from_file_location(f"_recipe_{modality}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    config_cls = typing.get_type_hints(module.build)["cfg"]
    try:
        cfg = parse_config(config_cls, ["--shards", *shards, "--model", model, *shlex.split(flags)])
    except SystemExit:
        raise SystemExit(f"error: --recipe-flags {modality}={flags!r}: not flags of {path.name} (see its --help)") from None
    return cfg, module.build(cfg)


def build(cfg: MultiMAEConfig) -> JointPretraining:
    corpora: dict[str, list[str]] = {}
    for item in cfg.shards:
        modality, sep, location = item.partition("=")
        if not sep or modality not in MODALITIES:
            raise SystemExit(f"error: --shards {item!r}: expected MODALITY=SHARDS with MODALITY one of {', '.join(MODALITIES)}")
        corpora.setdefault(modality, []).append(location)
    flags = dict(item.partition("=")[::2] for item in cfg.recipe_flags or [])
    unknown = sorted(set(flags) - set(corpora))
    if unknown:
        raise SystemExit(f"error: --recipe-flags for {', '.join(unknown)}: no --shards of that modality")
    weights = {m: 1.0 for m in corpora} | parse_weights(cfg.weights, flag="--weights")
    if set(weights) - set(corpora):
        raise SystemExit(f"error: --weights for {', '.join(sorted(set(weights) - set(corpora)))}: no --shards of that modality")
    sizes = split_batch(cfg.batch_size, weights)

    tokenizers, masking, norm_pix, extra, streams = {}, {}, {}, {}, []
    model_cfg = PRESETS[cfg.model](norm_pix_loss=cfg.norm_pix_loss)
    for modality, locations in corpora.items():
        part_cfg, part = recipe_part(modality, locations, cfg.model, flags.get(modality, ""))
        spec, tokenizer = MODALITIES[modality], part.model.tokenizer
        tokenizers[modality], norm_pix[modality] = tokenizer, part.model.config.norm_pix_loss
        ratio = MaskRatio(part_cfg.mask_ratio)
        if ratio.kind != "constant":
            raise SystemExit(f"error: --recipe-flags {modality}: --mask-ratio {ratio}: a joint run masks each modality at one ratio")
        own = part.masking or (lambda x, generator, r, batch, spec=spec, tok=tokenizer: spec.masking(tok, x, r, generator))
        masking[modality] = lambda x, generator, batch, own=own, r=ratio.start: own(x, generator, r, batch)
        extra.update(part.extra)
        corpus = Corpus(
            name=modality, sources=open_shards(locations, spec.shard_kinds), decode=part.decode, batch_size=sizes[modality],
            items_per_sample=part.items_per_sample,
        )
        streams.append(Stream(corpus, (modality,), shard_modality=modality))
    model = MultiModalMAE(
        tokenizers, model_cfg, specific_depth=cfg.specific_depth, loss_weights=parse_weights(cfg.loss_weights, flag="--loss-weights"), norm_pix=norm_pix,
    )
    return JointPretraining(model=model, streams=streams, masking=masking, extra=extra)


def main(argv: list[str] | None = None) -> int:
    return run_joint_pretraining(MultiMAEConfig, build, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
