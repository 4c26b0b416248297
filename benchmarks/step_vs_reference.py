"""Our VideoMAE training step against transformers' VideoMAEForPreTraining at the same config, in
the same process. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/step_vs_reference.py                        # ViT-B, batch 2, 5 rounds, GPU if there is one
    .venv/bin/python benchmarks/step_vs_reference.py --size tiny --rounds 2 # seconds on a CPU
    .venv/bin/python benchmarks/step_vs_reference.py [--batch N] [--threads N] [--device cpu|cuda] [--steps K]

The config is VideoMAE ViT-B pretraining: 16 x 224 x 224 clips cut into 2 x 16 x 16 tubes (1568
tokens), tube masking 0.9, norm-pix loss on both sides; ours is ``mae_base(**VIDEOMAE_DECODERS
['base'])`` (``--size tiny``: ``mae_tiny``), transformers' a ``VideoMAEConfig`` of the same sizes,
checked field by field before anything runs. A step is forward + loss + backward + optimizer step
+ zero_grad on the same clip tensor, with new masks every step (drawn on the CPU from a seeded
generator and moved to the device, as our trainer does).

Variants, alternating in the same rounds (each runs ``--steps`` steps per round, by default as many
as the fastest variant takes about a second for; the order is reversed every other round):

- transformers fp32: its defaults (its attention implementation, ``torch.optim.AdamW(params)``);
  the baseline;
- transformers bf16: the same under ``torch.autocast(device, torch.bfloat16)`` around forward + loss
  (what Accelerate does for ``mixed_precision="bf16"``);
- ours fp32 / bf16 autocast, each without and with VideoMAE V2 decoder masking 0.5
  (``running_cell_predict``), all stepping the trainer's optimizer
  (``modalmae.train.precision.adamw``: fused AdamW, MAE's weight-decay groups);
- ours default: the precision ``resolve_precision('auto', device)`` picks here, without decoder
  masking (labelled on the fp32 or bf16 line when it is one of them).

Printed: a header (torch / transformers versions, device, threads, what ``resolve_precision``
chose and why, the config and both parameter counts); the FLOPs of one step (forward + backward,
counted once per model with ``torch.utils.flop_counter.FlopCounterMode``); clips/s per variant
(median of the rounds) with the achieved FLOP/s and, on a GPU whose peak is known, the MFU
against the vendor datasheet's dense bf16 / fp32 peak; then each of ours against transformers
fp32 and against transformers at equal precision, as the median (min-max) of the per-round
ratios, next to the targets of issue 17: our default step >= 2x transformers' default fp32;
>= 1.15x at equal precision without decoder masking; >= 1.5x with it. A machine's speed drifts,
so only ratios measured side by side in the same rounds are compared.

Without transformers installed, ours is timed alone (and says so).

Measured on 2026-11-30, 2 CPU cores (a Xeon with AVX512-BF16 but no AMX), torch 2.13 CPU,
transformers 5.24, ViT-B, batch 2, 5 rounds; clips/s, then the ratio to transformers at the same
precision (median, range):
    transformers fp32 0.88, bf16 0.57
    ours fp32 (the default here) 0.97: 1.09x (1.00-1.24); + decoder masking 1.56: 1.76x (1.58-2.05)
    ours bf16 0.61: 1.07x (1.06-1.11); + decoder masking 0.91: 1.58x (1.57-1.68)
bf16 autocast runs at ~0.65x the speed of fp32 on this CPU for both models (its bf16 matmuls and
attention are slower than fp32 ones), so ``auto`` keeps fp32 here. At equal precision both
models run the same kernels at the same rate (~200 GFLOP/s): ours does 3 % fewer FLOPs
(visible-only tube embedding, targets only where predicted) and its fused AdamW takes ~60 ms
where transformers' loop takes ~200 ms, out of a ~2 s step.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rounds import alternate, ratio
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from modalmae.masking import running_cell_predict, tube_masking
from modalmae.model import VIDEOMAE_DECODERS, MaskedAutoencoder, mae_base, mae_tiny
from modalmae.tokenizers.video import VideoTubes
from modalmae.train.loop import param_groups
from modalmae.train.precision import adamw, resolve_precision

MASK_RATIO = 0.9
DECODER_MASK = 0.5
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_DEFAULT, TARGET_EQUAL, TARGET_DECODER_MASKING = 2.0, 1.15, 1.5

# Peak dense throughput per GPU in TFLOP/s, from the vendors' datasheets, without sparsity:
# (name pattern, bf16 tensor cores, tf32 tensor cores, fp32 without tensor cores); None: the GPU
# has no such units. The first pattern found in torch.cuda.get_device_name() wins.
PEAKS: list[tuple[str, float | None, float | None, float]] = [
    (r"GH200", 989.5, 494.5, 67.0),
    (r"H200 NVL", 835.5, 417.5, 60.0),
    (r"H200", 989.5, 494.5, 67.0),  # SXM
    (r"H100 NVL", 835.5, 417.5, 60.0),
    (r"H100 PCIe", 756.5, 378.0, 51.0),
    (r"H100", 989.5, 494.5, 67.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"A100", 312.0, 156.0, 19.5),
    (r"L40S", 362.0, 183.0, 91.6),
    (r"L40\b", 181.0, 90.5, 90.5),
    (r"L4\b", 121.0, 60.0, 30.3),
    (r"A10\b", 125.0, 62.5, 31.2),
    (r"V100-SXM", None, None, 15.7),
    (r"V100", None, None, 14.0),  # PCIe
    (r"T4\b", None, None, 8.1),
]

# FlopCounterMode knows the GPU attention kernels, not the CPU flash kernel SDPA takes on a CPU.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(grad, q, k, v),
}


@dataclass
class Variant:
    name: str
    side: str  # "transformers" or "ours"
    precision: str  # "no" (fp32), "bf16", "fp16"
    decoder_mask: float = 0.0

    @property
    def label(self) -> str:
        return "fp32" if self.precision == "no" else self.precision


def our_config(size: str):
    return {"tiny": mae_tiny, "base": mae_base}[size](**VIDEOMAE_DECODERS.get(size, {}))


def reference_config(cfg, tubes: VideoTubes):
    """transformers' VideoMAEConfig of our sizes. ``use_mean_pooling=False``: the pretraining
    encoder ends in a LayerNorm over every token, as ours does (VideoMAE's pretraining models;
    its default True is the fine-tuning layout, whose norm sits after the pooling)."""
    import transformers

    return transformers.VideoMAEConfig(
        image_size=tubes.image_size[0], patch_size=tubes.patch_size, num_frames=tubes.num_frames, tubelet_size=tubes.tubelet_size,
        num_channels=tubes.in_channels, hidden_size=cfg.encoder_dim, num_hidden_layers=cfg.encoder_depth,
        num_attention_heads=cfg.encoder_heads, intermediate_size=int(cfg.encoder_dim * cfg.mlp_ratio),
        decoder_hidden_size=cfg.decoder_dim, decoder_num_hidden_layers=cfg.decoder_depth, decoder_num_attention_heads=cfg.decoder_heads,
        decoder_intermediate_size=int(cfg.decoder_dim * cfg.mlp_ratio), use_mean_pooling=False,
    )


def check_same_config(cfg, tubes: VideoTubes, ref, size: str) -> list[str]:
    """Every size that sets the cost, ours against transformers' (raises on a mismatch); returns
    the differences that do not change it."""
    import transformers

    ours = {
        "clip frames": tubes.num_frames, "image size": tubes.image_size[0], "tube frames": tubes.tubelet_size, "patch": tubes.patch_size,
        "encoder width": cfg.encoder_dim, "encoder depth": cfg.encoder_depth, "encoder heads": cfg.encoder_heads,
        "encoder MLP": int(cfg.encoder_dim * cfg.mlp_ratio), "encoder final norm": cfg.encoder_norm,
        "decoder width": cfg.decoder_dim, "decoder depth": cfg.decoder_depth, "decoder heads": cfg.decoder_heads,
        "decoder MLP": int(cfg.decoder_dim * cfg.mlp_ratio), "norm-pix loss": cfg.norm_pix_loss, "q/v bias": True,
    }
    theirs = {
        "clip frames": ref.num_frames, "image size": ref.image_size, "tube frames": ref.tubelet_size, "patch": ref.patch_size,
        "encoder width": ref.hidden_size, "encoder depth": ref.num_hidden_layers, "encoder heads": ref.num_attention_heads,
        "encoder MLP": ref.intermediate_size, "encoder final norm": not ref.use_mean_pooling,
        "decoder width": ref.decoder_hidden_size, "decoder depth": ref.decoder_num_hidden_layers,
        "decoder heads": ref.decoder_num_attention_heads, "decoder MLP": ref.decoder_intermediate_size,
        "norm-pix loss": ref.norm_pix_loss, "q/v bias": ref.qv_bias,
    }
    wrong = [f"{k}: ours {ours[k]}, transformers {theirs[k]}" for k in ours if ours[k] != theirs[k]]
    if wrong:
        raise SystemExit("configs differ: " + "; ".join(wrong))
    if not transformers.VideoMAEConfig().norm_pix_loss:
        raise SystemExit("transformers' VideoMAEConfig no longer defaults to norm_pix_loss=True")
    if size == "base":  # ViT-B is transformers' default VideoMAE (MCG-NJU/videomae-base) but for the pooling
        default = transformers.VideoMAEConfig().to_dict()
        built = ref.to_dict()
        off = sorted(k for k in default if k not in ("use_mean_pooling", "transformers_version") and default[k] != built.get(k))
        if off:
            raise SystemExit(f"ViT-B differs from transformers' default VideoMAEConfig in {off}")
    return [
        "transformers' attention has no key bias (VideoMAE's qv_bias: a key bias does not change attention)",
        "its encoder_to_decoder has no bias; its LayerNorm eps is 1e-12 (ours 1e-6)",
    ]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_peaks(name: str) -> tuple[float | None, float | None, float] | None:
    for pattern, bf16, tf32, fp32 in PEAKS:
        if re.search(pattern, name):
            return bf16, tf32, fp32
    return None


def step_fn(variant: Variant, model, opt, x: torch.Tensor, grid, batch: int, device: torch.device) -> Callable[[], torch.Tensor]:
    """One training step of ``variant`` -> the (detached) loss. The masks are drawn on the CPU and
    moved to the device, as the trainer does."""
    g = torch.Generator().manual_seed(0)
    dtype = AUTOCAST[variant.precision]

    def forward() -> torch.Tensor:
        masks = tube_masking(batch, grid, MASK_RATIO, generator=g)
        if variant.side == "transformers":
            return model(x, bool_masked_pos=masks.mask.bool().to(device)).loss
        if variant.decoder_mask:
            masks = masks.with_decoder_masking(running_cell_predict(masks, grid, variant.decoder_mask, generator=g))
        return model(x, masks.to(device)).loss

    def step() -> torch.Tensor:
        if dtype is None:
            loss = forward()
        else:
            with torch.autocast(device.type, dtype=dtype):
                loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step


def count_flops(step_forward_backward: Callable[[], None], device: torch.device) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS if device.type == "cpu" else None) as counter:
        step_forward_backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "base"), default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant per round (default: enough for ~1 s, at most 50)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=cores, help="torch threads (default: all cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    try:
        import transformers
    except ImportError:
        transformers = None

    cfg = our_config(args.size)
    tubes = VideoTubes(embed_dim=cfg.encoder_dim)
    grid, tokens = tubes.grid, tubes.num_tokens
    chosen = resolve_precision("auto", device)

    print(f"step_vs_reference: {args.size} VideoMAE pretraining step, ours vs transformers' VideoMAEForPreTraining")
    print(f"  torch {torch.__version__}, transformers {transformers.__version__ if transformers else 'NOT INSTALLED: timing ours only'}")
    if device.type == "cuda":
        index = torch.cuda.current_device()
        gpu = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        print(f"  device: cuda:{index} {gpu} (compute capability {major}.{minor}); fp32 matmul precision {torch.get_float32_matmul_precision()!r}; {args.threads} CPU threads")
    else:
        gpu = None
        print(f"  device: cpu ({cpu_name()}), {args.threads} threads")
    print(f"  resolve_precision('auto'): {chosen.label} ({chosen.reason})")
    visible = tokens - grid[0] * round(MASK_RATIO * grid[1] * grid[2])
    print(f"  clips {tubes.num_frames} x {tubes.image_size[0]} x {tubes.image_size[1]}, tubes {tubes.tubelet_size}x{tubes.patch_size}x{tubes.patch_size}"
          f" -> {tokens} tokens, tube masking {MASK_RATIO} ({visible} visible), norm-pix loss; batch {args.batch}")
    print(f"  encoder {cfg.encoder_dim} wide, {cfg.encoder_depth} blocks, {cfg.encoder_heads} heads, MLP {int(cfg.encoder_dim * cfg.mlp_ratio)};"
          f" decoder {cfg.decoder_dim} wide, {cfg.decoder_depth} blocks, {cfg.decoder_heads} heads, MLP {int(cfg.decoder_dim * cfg.mlp_ratio)}")

    # Variants; ours default is the one whose precision resolve_precision picks.
    variants = []
    if transformers is not None:
        variants += [Variant("transformers fp32", "transformers", "no"), Variant("transformers bf16", "transformers", "bf16")]
    variants += [
        Variant("ours fp32", "ours", "no"), Variant(f"ours fp32 + decoder masking {DECODER_MASK}", "ours", "no", DECODER_MASK),
        Variant("ours bf16", "ours", "bf16"), Variant(f"ours bf16 + decoder masking {DECODER_MASK}", "ours", "bf16", DECODER_MASK),
    ]
    default = next((v for v in variants if v.side == "ours" and v.precision == chosen.name and not v.decoder_mask), None)
    if default is None:  # fp16, asked for by an accelerate config (no GradScaler here: timing only)
        default = Variant(f"ours {chosen.name}", "ours", chosen.name)
        variants.append(default)
    default.name += " (= ours default)"

    # Models: one per side, shared by that side's variants (each variant steps the same weights).
    torch.manual_seed(0)
    ours = MaskedAutoencoder(tubes, cfg).to(device)
    ours_opt = adamw(param_groups(ours, 0.05), lr=1.5e-4, betas=(0.9, 0.95))
    x = torch.randn(args.batch, tubes.in_channels, tubes.num_frames, *tubes.image_size, device=device)  # [B, C, T, H, W]
    models = {"ours": (ours, ours_opt, x)}
    n_ours = sum(p.numel() for p in ours.parameters())
    if transformers is not None:
        ref_cfg = reference_config(cfg, tubes)
        notes = check_same_config(cfg, tubes, ref_cfg, args.size)
        reference = transformers.VideoMAEForPreTraining(ref_cfg).to(device)
        reference.train()
        models["transformers"] = (reference, torch.optim.AdamW(reference.parameters()), x.transpose(1, 2).contiguous())  # [B, T, C, H, W]
        n_ref = sum(p.numel() for p in reference.parameters())
        print(f"  the sizes above are checked equal on both sides; ours {n_ours / 1e6:.2f} M parameters, transformers {n_ref / 1e6:.2f} M:")
        for note in notes:
            print(f"    {note}")
        print(f"  transformers' attention implementation: {reference.config._attn_implementation}")
    else:
        print(f"  ours {n_ours / 1e6:.2f} M parameters")
    print("  optimizers: transformers torch.optim.AdamW(model.parameters()) (its defaults); ours modalmae.train.precision.adamw"
          f" (fused: {ours_opt.defaults.get('fused')}) on MAE's weight-decay groups")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # FLOPs per step, forward + backward (fp32; autocast does not change the count).
    flops: dict[tuple[str, float], int] = {}
    for v in variants:
        key = (v.side, v.decoder_mask)
        if key in flops:
            continue
        model, opt, inp = models[v.side]
        fwd = step_fn(Variant(v.name, v.side, "no", v.decoder_mask), model, opt, inp, grid, args.batch, device)
        flops[key] = count_flops(fwd, device)
        sync()
    print("  FLOPs per step (forward + backward, counted once with FlopCounterMode): "
          + "; ".join(f"{side}{f' + decoder masking {dm}' if dm else ''} {f / 1e9:.1f} G" for (side, dm), f in flops.items()))

    # Steps, warmed up once (twice on a GPU); the losses printed next to the figures.
    steps_of = {v.name: step_fn(v, *models[v.side], grid, args.batch, device) for v in variants}
    warm_loss, warm_time, peak_mem = {}, {}, {}
    for v in variants:
        for _ in range(2 if device.type == "cuda" else 1):
            if device.type == "cuda":
                sync()
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            warm_loss[v.name] = steps_of[v.name]().item()  # .item() waits for the step
            warm_time[v.name] = time.perf_counter() - start
            if device.type == "cuda":
                peak_mem[v.name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    steps = args.steps or max(1, min(50, math.ceil(1.0 / min(warm_time.values()))))

    def run(step: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def timed_steps() -> None:
            for _ in range(steps):
                step()
            sync()

        return timed_steps

    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    times = alternate({name: run(step) for name, step in steps_of.items()}, args.rounds)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    print()
    print(f"{args.rounds} alternating rounds of {steps} step{'s' if steps > 1 else ''} per variant"
          " (clips/s: median of the rounds; FLOP/s from the counted FLOPs; loss: a warm-up step's)")
    peaks = gpu_peaks(gpu) if gpu else None
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    header = f"  {'variant':46s} {'clips/s':>8s} {unit:>8s}"
    if device.type == "cuda":
        header += f" {'MFU':>7s} {'step GiB':>8s}"
    print(header + f" {'loss':>7s}")
    tf32 = torch.get_float32_matmul_precision() != "highest"
    for v in variants:
        med = statistics.median(times[v.name])
        rate = flops[(v.side, v.decoder_mask)] * steps / med / scale
        line = f"  {v.name:46s} {args.batch * steps / med:8.2f} {rate:8.2f}"
        if device.type == "cuda":
            peak = None
            if peaks:
                peak = peaks[0] if v.precision in ("bf16", "fp16") else (peaks[1] if tf32 and peaks[1] else peaks[2])
            line += f" {f'{100 * rate / peak:6.1f}%' if peak else '      -'} {peak_mem[v.name]:8.2f}"
        print(line + f" {warm_loss[v.name]:7.4f}")
    if device.type == "cpu":
        print(f"  this process ran {cpu / wall:.2f} cores' worth over the rounds, with {args.threads} threads"
              " (fewer: other load on the cores, or steps that leave threads idle; every variant alike, rounds alternating)")
    if device.type == "cuda":
        if peaks:
            bf16, tf32_peak, fp32 = peaks
            fp32_peak = tf32_peak if tf32 and tf32_peak else fp32
            print(f"  MFU against {gpu}'s peak dense throughput from the vendor datasheet (without sparsity): bf16 {bf16 or '-'} TFLOP/s,"
                  f" fp32 {fp32_peak} TFLOP/s ({'TF32 tensor cores: fp32 matmul precision is not highest' if tf32 else 'no TF32: torch keeps fp32 matmuls in fp32 by default'})")
        else:
            print(f"  MFU: unknown peak for {gpu} (not in the datasheet table)")
        print("  step GiB: memory a step allocates on top of the weights and optimizer state (peak during a warm-up step)")

    if transformers is None:
        print("\ntransformers is not installed: no reference to compare with.")
    else:
        print()
        print("ours against transformers (how many times faster; median (min-max) of per-round ratios)")
        print(f"  {'':46s} {'vs transformers fp32':>22s}   {'vs transformers, same precision':>31s}   target")
        for v in variants:
            if v.side != "ours":
                continue
            base = times["transformers fp32"]
            same = times.get(f"transformers {v.label}")
            vs_base, vs_same = ratio(base, times[v.name]), ratio(same, times[v.name]) if same else "-"
            targets = []
            if v is default:
                met = statistics.median(a / b for a, b in zip(base, times[v.name])) >= TARGET_DEFAULT
                targets.append(f">= {TARGET_DEFAULT}x vs fp32: {'met' if met else 'NOT met'}")
            if same:
                goal = TARGET_DECODER_MASKING if v.decoder_mask else TARGET_EQUAL
                met = statistics.median(a / b for a, b in zip(same, times[v.name])) >= goal
                targets.append(f">= {goal}x same precision: {'met' if met else 'NOT met'}")
            print(f"  {v.name:46s} {vs_base:>22s}   {vs_same:>31s}   {'; '.join(targets)}")
        print(f"  targets (issue 17): our default step >= {TARGET_DEFAULT}x transformers' default fp32; at equal precision"
              f" >= {TARGET_EQUAL}x without decoder masking, >= {TARGET_DECODER_MASKING}x with it (met / NOT met: by the median)")

    # Release the models before leaving (the process may go on, e.g. under a profiler).
    del steps_of, models, ours, ours_opt, x
    if transformers is not None:
        del reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
