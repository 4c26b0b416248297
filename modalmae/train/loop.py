"""The training loop every recipe shares, on Hugging Face Accelerate.

``train`` runs any objective given as ``loss_fn(model, batch, generator, step=, total=) -> loss``: masked
reconstruction (``pretrain``, with the modality's loss from its spec) or classification
(``recipes/finetune.py``). It reads as its phases: set-up and resume (``_Run.__init__``),
data (``Feed``), the step (``_Run.step``), metrics (``train.metrics.Metrics``), checkpoints
(``_Run.save_checkpoint``) and the finish (``_Run.finish``).

One process or many, CPU or GPU: Accelerate wraps the model (DDP, FSDP, ...) and the optimizer.
The data loader is deliberately *not* passed to ``accelerator.prepare``: our ``ShardStream``
already gives each rank its own samples (see ``modalmae.data.shards``), and Accelerate would
otherwise dispatch batches from rank 0 or make every rank read everything.

Epochs are exact by default: every sample once per epoch, each rank's part padded to the same
number of batches (``modalmae.data.stream``), so ``--epochs`` and the ``epoch`` column are exact
too. ``--resampled`` draws shards with replacement instead; several ``--shards`` are mixed.

``metrics.jsonl`` (main process, one line every ``--log-every`` steps): ``step``, ``loss`` (mean
over the steps since the previous line and over ranks), ``lr`` (used at that step),
``samples_per_s`` (all ranks), ``epoch`` (passes over the data; null when resampled or mixed),
``skipped`` (corrupt samples skipped so far, all ranks) and, with several shard sets,
``sources`` (items drawn from each so far, all ranks).

Resuming restores model, optimizer and RNG states (Accelerate ``save_state``), the step count
(the learning rate is a pure function of the step) and the data position: each rank saves
``data_rank<r>.json`` (a ``StreamPosition``) in the checkpoint, and its stream continues after
the last sample it consumed, exactly, without decoding the ones before. With another number of
processes or workers (or batch size, shuffle buffer), the same seed and shards with a manifest,
the resume is elastic: every rank reads all old ranks' positions, the samples of the
interrupted epoch no old rank consumed are cut afresh into equal parts of the new layout (the
same number of steps on every process), and later epochs use the new layout; ``--epochs`` and
the ``epoch`` column then count the new layout's epochs from the end of that remainder. Another
seed or other shards (or ``--resampled``, or no manifest) warn and start the interrupted epoch
afresh (``modalmae.train.feed``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, is_compiled_module, set_seed
from tqdm.auto import tqdm

from modalmae.checkpoint import load_pretrained, save_pretrained, state_digest
from modalmae.data.alloc import tune_malloc
from modalmae.data.shards import ShardSet, resolve_shards
from modalmae.data.stream import CastFloats, SampleDecoder
from modalmae.masking import Masks
from modalmae.masking.schedule import MaskRatio
from modalmae.modalities import ModalitySpec, model_input
from modalmae.model import MaskedAutoencoder
from modalmae.model.distill import DistilledMAE
from modalmae.train.feed import Corpus, Feed, Feeds
from modalmae.train.metrics import Metrics
from modalmae.train.precision import adamw

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"

# (model, batch, generator, *, step, total) -> loss, or (loss, {name: tensor([sum, count])})
LossFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, dict]"]


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped, on the training device (a MaskedAutoencoder for pretraining)
    last_batch: dict  # the last batch seen, for pictures
    step: int
    output: Path


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier of optimizer step ``step`` (0-based): linear warm-up reaching 1 at step
    ``warmup - 1``, then half a cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAE's split: no weight decay on biases, norms, and learned tokens (1-D / size-1 tensors)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def find_resume(cfg, output: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint ``cfg.resume`` names (``latest``: the newest complete one under
    ``<output>/checkpoints``, or None when there is none), and why newer ones were passed over."""
    if not cfg.resume:
        return None, []
    if cfg.resume != "latest":
        path = Path(cfg.resume)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(f"--resume {path}: not a complete checkpoint folder (no {STATE_NAME})")
        return path, []
    passed_over = []
    for folder in sorted((output / CHECKPOINTS).glob("step_*"), reverse=True):
        if folder.name.endswith(".tmp"):
            passed_over.append(f"{folder.name}: a save that did not finish (removed)")
        elif not (folder / STATE_NAME).is_file():
            passed_over.append(f"{folder.name}: incomplete (no {STATE_NAME})")
        else:
            return folder, passed_over
    return None, passed_over


def keep_until(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines log written after ``step`` (by a run that was stopped
    after its last checkpoint and is now resumed from it); rewritten atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


# ----------------------------------------------------------------------------- metrics


# ----------------------------------------------------------------------------- the run


class _Run:
    """One training run's state, phase by phase."""

    def __init__(
        self, cfg, accelerator: Accelerator, model: torch.nn.Module, decode: SampleDecoder | None, *, sources: list[ShardSet],
        items_per_sample: int, groups: list[dict] | None, betas: tuple[float, float], corpora: list[Corpus] | None = None,
    ) -> None:
        """Set-up and resume: data, schedule, resolved config, optimizer, restored state."""
        self.cfg, self.accelerator, self.output = cfg, accelerator, Path(cfg.output)
        if self.output.exists() and not self.output.is_dir():
            raise NotADirectoryError(f"--output {self.output}: exists and is not a folder")
        resume, passed_over = find_resume(cfg, self.output)
        if accelerator.is_main_process:
            for note in passed_over:
                accelerator.print(f"--resume latest passed over {note}")
            for stale in (self.output / CHECKPOINTS).glob("step_*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()  # no rank writes a checkpoint while stale ones are removed
        self.start_step = json.loads((resume / STATE_NAME).read_text())["step"] if resume else 0
        if resume is not None:  # logs written after that checkpoint describe steps that run again
            if accelerator.is_main_process:
                keep_until(self.output / "metrics.jsonl", self.start_step)
            rank = accelerator.process_index
            for log in [self.output / "keys" / f"rank{rank}.jsonl", *(self.output / "keys").glob(f"rank{rank}_*.jsonl")]:
                keep_until(log, self.start_step)
        if corpora:
            self.feed: Feed | Feeds = Feeds(cfg, accelerator, corpora, resume, start_step=self.start_step)
            sources, per_step = self.feed.sources, sum(c.batch_size for c in corpora)
        else:
            self.feed = Feed(cfg, accelerator, sources, decode, items_per_sample, resume, weights=cfg.weights, start_step=self.start_step)
            per_step = cfg.batch_size
        world = accelerator.num_processes
        epoch_samples = self.feed.rank_epoch_items * world if self.feed.rank_epoch_items else None
        self.effective_batch = per_step * cfg.grad_accum * world
        self.lr = cfg.lr if cfg.lr is not None else cfg.blr * self.effective_batch / 256
        self.max_steps = cfg.max_steps
        # Epochs are counted from the first whole epoch of this layout: after an elastic resume,
        # the interrupted epoch's remainder before it takes its own number of micro-batches.
        anchor_batches, anchor_epoch = self.feed.epoch_anchor or (0, 0)
        if cfg.epochs is not None:
            if not epoch_samples:
                raise ValueError("--epochs needs exact epochs over one shard set with a manifest.json (not --resampled or mixed)")
            epoch_batches = self.feed.rank_epoch_items // per_step
            batches = anchor_batches + (cfg.epochs - anchor_epoch) * epoch_batches
            self.max_steps = math.ceil(batches / cfg.grad_accum)
        self.warmup = min(cfg.warmup_steps, self.max_steps // 2)
        if accelerator.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            resolved = {
                **dataclasses.asdict(cfg), "resolved_lr": self.lr, "resolved_max_steps": self.max_steps,
                "effective_batch": self.effective_batch, "world_size": world, "loader_workers": self.feed.num_workers,
                "epoch_samples": epoch_samples, "resolved_precision": accelerator.mixed_precision,
            }
            (self.output / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")

        optimizer = adamw(groups or param_groups(model, cfg.weight_decay), lr=self.lr, betas=betas)
        self.min_ratio = cfg.min_lr / self.lr if self.lr else 0.0
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if resume is not None:
            accelerator.load_state(str(resume))
            accelerator.print(f"resumed from {resume} at step {self.start_step}")
        # Every random choice after this point follows from (seed, step): Accelerate's saved RNG
        # state is overwritten here, so a resumed run does not depend on it being readable.
        set_seed(cfg.seed + self.start_step, device_specific=True)
        self.generator = torch.Generator()
        self.metrics = Metrics(
            accelerator, self.output / "metrics.jsonl", effective_batch=self.effective_batch, epoch_samples=epoch_samples, sources=sources,
            epoch_start=(anchor_batches / cfg.grad_accum, anchor_epoch),
        )
        self.bar = tqdm(
            total=self.max_steps, initial=self.start_step, disable=not (cfg.progress and accelerator.is_main_process), desc="train",
        )
        self.batch: dict = {}
        self.lr_used = self.lr
        self.skip, self.nonfinite_total, self.nonfinite_in_row = False, 0, 0

    def step(self, step: int, loss_fn: LossFn) -> None:
        """One optimizer step over ``grad_accum`` micro-batches."""
        cfg, accelerator = self.cfg, self.accelerator
        # Masks come from a CPU generator reseeded per step: reproducible on any device and
        # after a resume, different on every rank.
        self.generator.manual_seed((cfg.seed * 1_000_003 + step) * 1009 + accelerator.process_index)
        # The schedule is a function of the step alone, so a resumed run (even one given a new
        # --max-steps) continues it without any saved scheduler state.
        self.lr_used = self.lr * warmup_cosine(step - 1, warmup=self.warmup, total=self.max_steps, min_ratio=self.min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_used * group.get("lr_scale", 1.0)
        step_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        step_extra: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), device=accelerator.device)  # micro-batches of this rank with a NaN / inf loss
        for _ in range(cfg.grad_accum):
            self.batch = self.feed.next(step)
            with accelerator.accumulate(self.model):
                loss = loss_fn(self.model, self.batch, self.generator, step=step, total=self.max_steps)
                loss, extra = loss if isinstance(loss, tuple) else (loss, {})
                nonfinite += (~torch.isfinite(loss.detach())).float()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(self.model.parameters(), cfg.clip_grad) if cfg.clip_grad > 0 else None
                    self.skip = self._nonfinite(nonfinite, norm)
                    if not self.skip:
                        self.optimizer.step()
                self.optimizer.zero_grad()
            step_loss += loss.detach() / cfg.grad_accum
            for name, value in extra.items():
                step_extra[name] = step_extra.get(name, 0) + value.detach()
        self.metrics.steps += 1
        if self.skip:
            self.nonfinite_total, self.nonfinite_in_row = self.nonfinite_total + 1, self.nonfinite_in_row + 1
            if self.nonfinite_in_row >= cfg.max_nonfinite_steps:
                raise RuntimeError(
                    f"{self.nonfinite_in_row} optimizer steps in a row (the last: step {step}) gave a NaN or infinite loss or "
                    f"gradient and were skipped; stopping with the weights of step {step - self.nonfinite_in_row} (the last "
                    f"checkpoint holds no NaN). Look for bad samples (--log-keys lists each step's keys) or lower the learning rate."
                )
        else:
            self.nonfinite_in_row = 0
            self.metrics.add(step_loss, step_extra)
        self.bar.update(1)

    def _nonfinite(self, nonfinite: torch.Tensor, norm: torch.Tensor | None) -> bool:
        """Whether any process saw a non-finite loss in this step, or the clipped gradient's norm
        is (the same answer on every process, so all skip the update together)."""
        if norm is not None:
            nonfinite = nonfinite + (~torch.isfinite(torch.as_tensor(norm))).float().to(nonfinite.device)
        return self.accelerator.reduce(nonfinite, reduction="sum").item() > 0

    def report_compile(self, seconds: list[float]) -> None:
        """Say what ``--compile`` cost: the first step (tracing and compiling the forward and
        backward) against the next (compiled code, unless its shapes differ)."""
        if self.accelerator.is_main_process:
            then = f", the next {seconds[1]:.2f} s" if len(seconds) > 1 else ""
            self.bar.write(f"torch.compile: the first step took {seconds[0]:.1f} s (compiling included){then}")

    def log_metrics(self, step: int) -> None:
        record = self.metrics.line(
            step, self.lr_used, skipped=self.feed.skipped, nonfinite=self.nonfinite_total, source_counts=self.feed.source_counts,
        )
        self.bar.set_postfix(loss="nan" if record["loss"] is None else f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")

    def log_evaluation(self, step: int, figures: dict) -> None:
        self.metrics.write({"step": step, **figures})
        if self.accelerator.is_main_process:
            self.bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))

    def save_checkpoint(self, step: int) -> None:
        """A resumable checkpoint, written as ``step_N.tmp`` (Accelerate's state, each rank's
        data position, then the step) and renamed to ``step_N`` once complete: a save killed
        half-way leaves only a .tmp folder, which ``--resume latest`` passes over."""
        accelerator = self.accelerator
        folder = self.output / CHECKPOINTS / f"step_{step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        self.feed.save_position(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps({"step": step}) + "\n")
            shutil.rmtree(folder, ignore_errors=True)  # a checkpoint of the same step from an earlier run
            os.replace(tmp, folder)
            complete = sorted(p for p in (self.output / CHECKPOINTS).glob("step_*") if not p.name.endswith(".tmp"))
            for old in complete[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def finish(self, save: Callable[[torch.nn.Module, dict, Path], None]) -> TrainResult:
        """The last checkpoint, the final model (``save``), this rank's record."""
        accelerator = self.accelerator
        self.bar.close()
        self.feed.close()
        if not self.batch:  # resumed at the end already: still hand back a batch for pictures
            self.batch = self.feed.next(self.start_step)
        final_step = max(self.start_step, self.max_steps)
        self.save_checkpoint(final_step)
        # Gathers FSDP / DeepSpeed shards (a collective), named as in the uncompiled model.
        full_state = accelerator.get_state_dict(self.model._orig_mod if is_compiled_module(self.model) else self.model)
        unwrapped = accelerator.unwrap_model(self.model, keep_torch_compile=False)  # pictures run eagerly: no recompiling for no_grad
        if accelerator.is_main_process:
            save(unwrapped, full_state, self.output)
        self.metrics.close()
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) and isinstance(unwrapped, MaskedAutoencoder):
            # Each rank holds a shard of the weights: what the recipe draws with (main process
            # only, no collectives) is a whole copy rebuilt from the saved model.
            accelerator.wait_for_everyone()
            unwrapped = load_pretrained(self.output / "model")[0].to(accelerator.device)
        feed = self.feed
        record = {
            "rank": accelerator.process_index, "steps": final_step - self.start_step,
            "shards_read": {e: sorted(u) for e, u in sorted(feed.shards_read.items())},
            "samples_seen": feed.samples_seen, "skipped": feed.skipped, "items_per_epoch": feed.rank_epoch_items,
            "weights_digest": state_digest(unwrapped),
        }
        (self.output / "ranks").mkdir(parents=True, exist_ok=True)
        (self.output / "ranks" / f"rank{accelerator.process_index}.json").write_text(json.dumps(record, indent=2) + "\n")
        accelerator.wait_for_everyone()
        return TrainResult(model=unwrapped, last_batch=self.batch, step=final_step, output=self.output)


def train(
    cfg,
    *,
    accelerator: Accelerator,
    model: torch.nn.Module,
    decode: SampleDecoder | None,
    loss_fn: LossFn,
    save: Callable[[torch.nn.Module, dict, Path], None],
    items_per_sample: int = 1,
    groups: list[dict] | None = None,
    betas: tuple[float, float] = (0.9, 0.95),
    evaluate: Callable[[torch.nn.Module, int], dict] | None = None,
    shards: ShardSet | list[ShardSet] | None = None,
    modality: str | None = None,
    corpora: list[Corpus] | None = None,
) -> TrainResult:
    """Train ``model`` on ``shards`` (default: ``cfg.shards`` resolved, and checked to hold
    ``modality`` shards when given) for ``cfg.max_steps`` optimizer steps (or ``cfg.epochs``
    passes over the data, each sample giving ``items_per_sample`` items after ``decode``),
    minimizing ``loss_fn(model, batch, generator, step=step, total=max_steps)`` (the optimizer
    step, 1-based, and the run's last). ``loss_fn`` may also return ``(loss,
    {name: tensor([sum, count])})``: figures logged in metrics.jsonl as sum / count over the
    steps since the last line and over processes (null when the count is 0), such as the
    per-sequence losses of multi-sequence MRI.

    ``groups``: AdamW parameter groups (default: MAE's weight-decay split); a group's
    ``lr_scale`` multiplies its learning rate (layer-wise decay); ``betas``: AdamW's (MAE
    pretraining: 0.9, 0.95; fine-tuning: torch's default 0.9, 0.999). ``evaluate(model, step)``, run
    on every process every ``cfg.eval_every`` steps and at the end, returns figures for
    metrics.jsonl. ``save(unwrapped, full_state_dict, output)`` writes the final model (main
    process).

    ``corpora``: several data streams read side by side instead of ``shards`` and ``decode``;
    each step's batch is then ``{corpus name: batch}`` (``modalmae.train.feed.Feeds``)."""
    # A step allocates and frees activations of tens of MB: kept in the heap instead of mapped
    # afresh each time (modalmae.data.alloc), a ViT-B VideoMAE step ran 1.02-1.03x faster.
    tune_malloc()
    sources = []
    if corpora is None:
        if shards is None:
            shards = [resolve_shards(spec, modality=modality) for spec in cfg.shards]
        sources = [shards] if isinstance(shards, ShardSet) else list(shards)
    run = _Run(
        cfg, accelerator, model, decode, sources=sources, items_per_sample=items_per_sample, groups=groups, betas=betas, corpora=corpora,
    )
    eval_every = getattr(cfg, "eval_every", 0)
    timing = [] if is_compiled_module(run.model) else None  # seconds of the first steps, compiling included
    for step in range(run.start_step + 1, run.max_steps + 1):
        start = time.perf_counter()
        run.step(step, loss_fn)
        if timing is not None and len(timing) < 2:
            timing.append(time.perf_counter() - start)
            if len(timing) == 2 or step == run.max_steps:
                run.report_compile(timing)
        if step % cfg.log_every == 0 or step == run.max_steps:
            run.log_metrics(step)
        if evaluate is not None and ((eval_every and step % eval_every == 0) or step == run.max_steps):
            run.log_evaluation(step, evaluate(run.model, step))  # every process: it may gather across them
        if step % cfg.save_every == 0 and step != run.max_steps:
            run.save_checkpoint(step)
    return run.finish(save)


def pretrain(
    cfg,
    *,
    accelerator: Accelerator,
    spec: ModalitySpec,
    model: MaskedAutoencoder | DistilledMAE,
    decode: SampleDecoder,
    masking: Callable[[torch.Tensor | dict, torch.Generator, "float | torch.Tensor", dict], Masks],
    items_per_sample: int = 1,
    save_extra: dict | None = None,
    shards: ShardSet | list[ShardSet] | None = None,
) -> TrainResult:
    """Masked-autoencoder pretraining of a ``spec`` modality with ``train``: the model's input
    is made of the spec's batch keys, ``masking(x, generator, ratio, batch)`` draws the masks of
    a batch ``x`` at the ratio ``cfg.mask_ratio`` (a ``MaskRatio``) gives for the step (a float,
    or [B] per sample; ``batch``: the whole batch, for masks guided by more than the input), the loss is the spec's (default: the model's mean over masked tokens),
    and the ratio is logged as ``mask_ratio``; the model is saved to ``<output>/model`` with
    ``save_extra`` (what ``spec.decoder`` needs to rebuild the data pipeline from the
    checkpoint)."""
    schedule = MaskRatio(cfg.mask_ratio)

    def loss_fn(model: torch.nn.Module, batch: dict, generator: torch.Generator, *, step: int, total: int):
        x = model_input(spec, batch, accelerator.device)
        ratio = schedule.draw(len(batch["__key__"]), step, total, generator=generator)
        out = model(x, masking(x, generator, ratio, batch).to(accelerator.device))
        out, feature_loss = out if isinstance(out, tuple) else (out, None)  # a DistilledMAE adds the feature loss
        loss, figures = (out.loss, {}) if spec.loss is None else spec.loss(out, accelerator.unwrap_model(model).tokenizer)
        if feature_loss is not None:
            figures["pixel_loss"] = torch.stack([loss.detach(), loss.new_ones(())])
            figures["feature_loss"] = torch.stack([feature_loss.detach(), feature_loss.new_ones(())])
            loss = loss + accelerator.unwrap_model(model).weight * feature_loss
        ratios = torch.as_tensor(ratio, dtype=torch.float64).reshape(-1)
        figures["mask_ratio"] = torch.stack([ratios.sum(), ratios.new_tensor(len(ratios))]).to(loss.device)
        return loss, figures

    def save(unwrapped: torch.nn.Module, state: dict, output: Path) -> None:
        if isinstance(unwrapped, DistilledMAE):  # the student alone: the teacher and projection stay behind
            unwrapped, state = unwrapped.student, {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        save_pretrained(unwrapped, output / "model", extra=save_extra, state=state)

    if accelerator.mixed_precision == "bf16":  # inputs leave the loader workers in bf16: half the bytes
        decode = CastFloats(decode, spec.input_keys, torch.bfloat16)
    result = train(
        cfg, accelerator=accelerator, model=model, decode=decode, loss_fn=loss_fn, items_per_sample=items_per_sample,
        save=save, shards=shards, modality=spec.name,
    )
    if isinstance(result.model, DistilledMAE):
        result = dataclasses.replace(result, model=result.model.student)
    return result


def print_outputs(result: TrainResult, *, shards: str, picture: Path | None = None) -> None:
    """Where a finished run put everything (main process)."""
    out = result.output
    print(f"\nshards:      {shards}")
    print(f"metrics:     {out / 'metrics.jsonl'}")
    if picture is not None:
        print(f"picture:     {picture}")
    print(f"checkpoints: {out / CHECKPOINTS} (resume with --resume latest)")
    print(f"model:       {out / 'model'} (modalmae.checkpoint.load_encoder)")
