"""Joint pretraining of one encoder on several modalities (``MultiModalMAE``): what
``recipes/av_mae.py`` (audio and video of the same clips) and ``recipes/multi_mae.py`` (a corpus
per modality) share.

A recipe builds a ``JointPretraining``: the model, its streams (a ``Stream`` is a ``Corpus`` and
the modalities each of its samples holds), each modality's masking, and what to save with the
model. ``run_joint_pretraining`` trains it with ``modalmae.train.loop.train``:

- **Every step holds every modality.** Each step takes a batch of every stream (``Feeds``), and
  each stream's batch is one ``Group`` of one forward. Under DDP every process must use the same
  parameters in each step; a step holding only some modalities leaves the others' tokenizers,
  blocks and heads without gradients, which DDP reports as an error, or, with
  ``find_unused_parameters``, turns into a hang as soon as two processes drew different
  modalities. With every modality in every step there is nothing to find.
- **Masks**: each modality by its own method and ratio, joined (``concat_masks``; CAV-MAE), or
  ``--masking dirichlet``: one budget of visible tokens split across the modalities of each
  sample (MultiMAE; a modality the sample lacks gets none).
- **Loss**: the model's (a weighted sum of the modalities' reconstruction losses), plus, for a
  stream that pairs two modalities, ``--contrastive-weight`` x InfoNCE between their pooled
  features (CAV-MAE), the negatives gathered from every process with their gradients.
- **metrics.jsonl**: ``loss`` and ``loss_<modality>`` (each modality's masked-token loss),
  ``contrastive``; with ``--eval-shards``, retrieval on held-out pairs (``a2v_r1`` ...
  ``v2a_r10``, ``retrieval_pairs``) every ``--eval-every`` steps and at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from modalmae.checkpoint import save_pretrained
from modalmae.data.stream import SampleDecoder, ShardStream, make_loader
from modalmae.masking import Masks, concat_masks, dirichlet_masking
from modalmae.modalities import MODALITIES, model_input
from modalmae.model.contrastive import audio_visual_retrieval, info_nce
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.train.config import MaskRatio, PretrainConfig, arg, parse_config
from modalmae.train.feed import Corpus
from modalmae.train.loop import TrainResult, print_outputs, train
from modalmae.train.precision import make_accelerator
from modalmae.train.recipe import open_shards, output_folder
from modalmae.viz import draw_joint

ModalityMasking = Callable[[Any, torch.Generator, dict], Masks]  # (one modality's input, generator, batch) -> its masks


@dataclass
class JointConfig(PretrainConfig):
    """Flags shared by the joint recipes."""

    specific_depth: int = arg(None, "encoder blocks each modality has of its own before the shared ones (CAV-MAE: 11 of 12); default: all but the last; 0: one fully shared encoder (AVSiam, MultiMAE)")
    masking_across: str = arg("per-modality", "per-modality: every modality masked by its own method and ratio (CAV-MAE); dirichlet: one budget of visible tokens per sample split across its modalities by a Dirichlet draw (MultiMAE; needs --specific-depth 0)", choices=("per-modality", "dirichlet"))
    num_visible: int = arg(None, "dirichlet: visible tokens per sample (default: (1 - --mask-ratio) x all the modalities' tokens)")
    dirichlet_alpha: float = arg(1.0, "dirichlet: concentration of the split (1: uniform over splits; small: few modalities get most)")
    loss_weights: list[str] = arg(None, "MODALITY=WEIGHT of each reconstruction loss in the total (default 1 each)")
    eval_shards: str = arg(None, "held-out pairs (shards of the same kind) for the retrieval evaluation, logged as a2v_r1 ... v2a_r10")
    eval_every: int = arg(0, "evaluate retrieval every N steps (0: only at the end); needs --eval-shards")


@dataclass
class Stream:
    """One data stream of a joint run and the modalities each of its samples holds (two or more:
    paired, one sequence per sample; one: a corpus of that modality)."""

    corpus: Corpus
    modalities: tuple[str, ...]
    shard_modality: str  # what build_shards.py --modality its shards were built as
    contrast: tuple[str, str] | None = None  # the two modalities of the contrastive term, if any


@dataclass
class JointPretraining:
    """What a joint recipe decides."""

    model: MultiModalMAE
    streams: list[Stream]
    masking: dict[str, ModalityMasking]  # per modality, used by --masking-across per-modality
    extra: dict = field(default_factory=dict)  # saved with the model (what each modality's sample decoder needs)
    eval_decoder: SampleDecoder | None = None  # paired samples for --eval-shards (centre clips, no augmentation)


def parse_weights(items: list[str] | None, *, flag: str) -> dict[str, float]:
    """["audio=1", "video=0.5"] -> {"audio": 1.0, "video": 0.5}; a malformed item ends the program."""
    weights = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"error: {flag} {item!r}: expected MODALITY=NUMBER")
    return weights


def presence(modalities: list[str], batch: dict, device) -> dict[str, torch.Tensor]:
    """{modality: bool [B]} from the batch's ``has_<modality>`` keys (absent keys: all present)."""
    return {m: batch[f"has_{m}"].to(device) for m in modalities if f"has_{m}" in batch}


def make_group(
    job: JointPretraining, cfg: JointConfig, modalities: tuple[str, ...], batch: dict, generator: torch.Generator, device, *, pooled: bool = False,
) -> Group:
    """The model's ``Group`` of a stream's batch, with its masks drawn."""
    model = job.model
    names = model.order(dict.fromkeys(modalities))
    inputs = {m: model_input(MODALITIES[m], batch, device) for m in names}
    present = presence(names, batch, device)
    if cfg.masking_across == "dirichlet":
        lengths, batch_size = model.lengths(names), len(batch["__key__"])
        have = torch.stack([present.get(m, torch.ones(batch_size, dtype=torch.bool, device=device)) for m in names], dim=1).cpu()
        budget = cfg.num_visible or max(1, round((1 - MaskRatio(cfg.mask_ratio).start) * sum(lengths)))
        masks = dirichlet_masking(have, lengths, budget, alpha=cfg.dirichlet_alpha, generator=generator)
    else:
        masks = concat_masks([job.masking[m](inputs[m], generator, batch) for m in names])
    return Group(inputs, masks.to(device), present=present, pooled=pooled)


@torch.no_grad()
def retrieval(model: MultiModalMAE, loader, pair: tuple[str, str], device) -> dict:
    """Recall@1/5/10 both ways over every held-out pair that has both modalities, from the
    pooled features of each modality encoded alone with every token visible."""
    was_training = model.training
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in pair}
    for batch in loader:
        pooled = model.pooled({m: model_input(MODALITIES[m], batch, device) for m in pair})
        both = torch.ones(len(batch["__key__"]), dtype=torch.bool, device=device)
        for flags in presence(list(pair), batch, device).values():
            both &= flags
        for m in pair:
            feats[m].append(pooled[m][both].float().cpu())
    model.train(was_training)
    a, b = (torch.cat(feats[m]) for m in pair)
    figures = audio_visual_retrieval(a, b) if len(a) else {}
    return {**figures, "retrieval_pairs": len(a)}


def run_joint_pretraining(config_cls: type, build: Callable[[Any], JointPretraining], argv: list[str] | None, *, doc: str) -> int:
    head, _, rest = doc.partition("\n\n")
    cfg = parse_config(config_cls, argv, description=head, epilog=rest)
    output_folder(cfg.output)
    if cfg.eval_every and not cfg.eval_shards:
        raise SystemExit("error: --eval-every needs --eval-shards")
    if cfg.teacher:
        raise SystemExit("error: --teacher: distillation is for single-modality recipes")
    if MaskRatio(cfg.mask_ratio).kind != "constant":
        raise SystemExit(f"error: --mask-ratio {cfg.mask_ratio}: a joint run's budget is one ratio (schedules and per-sample ratios are for single-modality recipes)")
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)  # the same initial weights on every run and every rank
    job = build(cfg)
    if cfg.masking_across == "dirichlet" and job.model.specific_depth:
        raise SystemExit("error: --masking-across dirichlet splits one budget across modalities; it needs --specific-depth 0")
    device = accelerator.device
    weight = getattr(cfg, "contrastive_weight", 0.0)

    def loss_fn(model: torch.nn.Module, batches: dict, generator: torch.Generator, **_):
        groups = [
            make_group(job, cfg, s.modalities, batches[s.corpus.name], generator, device, pooled=bool(weight and s.contrast))
            for s in job.streams
        ]
        out = model(*groups)
        loss, figures = out.loss, {f"loss_{m}": stats for m, stats in out.stats.items()}
        for stream, group, pooled in zip(job.streams, groups, out.pooled):
            if weight and stream.contrast:
                a, b = stream.contrast
                # A pair counts when both modalities are there and the encoder saw some of each
                # (a budget split may give a modality no visible token).
                counts = accelerator.unwrap_model(model).visible_counts(group)
                valid = (counts[a] > 0) & (counts[b] > 0)
                for m in (a, b):
                    valid &= group.present.get(m, valid)
                term = info_nce(pooled[a], pooled[b], valid=valid)
                loss = loss + weight * term
                figures["contrastive"] = torch.stack([term.detach(), term.new_ones(())])
        return loss, figures

    paired = next((s for s in job.streams if s.contrast), None)
    evaluate = None
    if cfg.eval_shards:
        if paired is None or job.eval_decoder is None:
            raise SystemExit("error: --eval-shards: retrieval needs a stream that pairs two modalities")
        (held_out,) = open_shards([cfg.eval_shards], paired.shard_modality, flag="--eval-shards")

        def evaluate(model: torch.nn.Module, step: int) -> dict:
            if not accelerator.is_main_process:
                return {}
            stream = ShardStream(held_out, job.eval_decoder, epochs=1, shuffle_buffer=1, shuffle_shards=False)
            loader = make_loader(stream, batch_size=cfg.batch_size, num_workers=min(cfg.workers, 1))
            return retrieval(accelerator.unwrap_model(model, keep_torch_compile=False), loader, paired.contrast, device)

    def save(unwrapped: torch.nn.Module, state: dict, output: Path) -> None:
        save_pretrained(unwrapped, output / "model", extra=job.extra, state=state)

    result = train(
        cfg, accelerator=accelerator, model=job.model, decode=None, loss_fn=loss_fn, save=save,
        corpora=[s.corpus for s in job.streams], evaluate=evaluate,
    )
    if accelerator.is_main_process:
        picture = draw_picture(job, cfg, result, device)
        print_outputs(result, shards=" ".join(cfg.shards), picture=picture)
    return 0


def draw_picture(job: JointPretraining, cfg: JointConfig, result: TrainResult, device) -> Path:
    """The first stream's first sample of the last batch, every modality of it."""
    stream = job.streams[0]
    batch = result.last_batch[stream.corpus.name]
    first = {k: v[:1] for k, v in batch.items() if k != "num_skipped"}
    group = make_group(dataclasses.replace(job, model=result.model), cfg, stream.modalities, first, torch.Generator().manual_seed(cfg.seed), device)
    group = dataclasses.replace(group, masks=dataclasses.replace(group.masks, ids_predict=None))  # draw every masked token
    pictures = {m: MODALITIES[m].picture for m in group.inputs}
    return draw_joint(result.model, group, result.output / "reconstruction.png", pictures=pictures, title=f"{first['__key__'][0]} at step {result.step}")
