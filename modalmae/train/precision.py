"""Which precision a run trains in, and the optimizer it steps with.

``--mixed-precision auto`` (the default) trains with bf16 autocast where the hardware computes
bf16 matrix products faster than fp32 ones, and in fp32 elsewhere:

- a CUDA GPU of compute capability 8.0 or newer (A100, H100, RTX 30xx and later): bf16;
- an x86 CPU with AMX-BF16 (Intel Sapphire Rapids and later): bf16;
- an Arm CPU with the BF16 extension (Graviton 3, Neoverse V1 / N2): bf16 (its BFMMLA
  instruction does twice the multiply-adds of an fp32 one; not measured here);
- an x86 CPU with AVX512-BF16 but no AMX (Cooper Lake, Zen 4, this project's test machine):
  fp32. Its bf16 dot-product instruction does not outrun two fp32 FMA units: measured on 2 cores
  of such a Xeon (torch 2.13, oneDNN 3.12), a 3136 x 768 x 3072 bf16 matmul ran at 0.65x the
  fp32 one and a ViT-B VideoMAE step under bf16 autocast at 0.6x fp32's;
- anything else (older GPUs, Apple MPS, CPUs without bf16): fp32.

An accelerate config (or ``accelerate launch --mixed_precision``) that asks for bf16 / fp16 is
followed; its ``no`` is accelerate's default and cannot be told apart from an unset value, so
fp32 is asked for with ``--mixed-precision no``. Weights, optimizer state and the loss stay fp32
in every mode (autocast only).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env

CHOICES = ("auto", "no", "bf16", "fp16")

# /proc/cpuinfo flags of bf16 arithmetic (x86: "flags", Arm: "Features"); the first two make
# bf16 matrix products faster than fp32 ones, the last does not (see the module docstring).
FAST_BF16_FLAGS = ("amx_bf16", "bf16")
SLOW_BF16_FLAGS = ("avx512_bf16",)


@dataclass(frozen=True)
class Precision:
    name: str  # what Accelerator(mixed_precision=...) takes: "no", "bf16" or "fp16"
    reason: str  # one line: why, for the start of a run

    @property
    def label(self) -> str:
        return "fp32" if self.name == "no" else f"{self.name} autocast"


@cache
def cpu_bf16_flag(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's best bf16 flag: ``amx_bf16`` or Arm's ``bf16`` (fast), ``avx512_bf16`` (not
    faster than fp32), or None (also where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return next((f for f in FAST_BF16_FLAGS + SLOW_BF16_FLAGS if f in flags), None)
    return None


def resolve_precision(requested: str, device: torch.device | str, *, env: dict | None = None) -> Precision:
    """``requested`` (one of CHOICES) on ``device`` -> the precision to train in, with the reason."""
    if requested not in CHOICES:
        raise ValueError(f"--mixed-precision {requested!r}: one of {', '.join(CHOICES)}")
    if requested != "auto":
        return Precision(requested, "asked for with --mixed-precision")
    env = os.environ if env is None else env
    launcher = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher in ("bf16", "fp16"):
        return Precision(launcher, f"auto: the accelerate config / launcher asks for {launcher}")
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major >= 8:
            return Precision("bf16", f"auto: {name} (compute capability {major}.{minor}) has fast bf16")
        return Precision("no", f"auto: {name} (compute capability {major}.{minor}) has no fast bf16; fp32")
    if device.type == "cpu":
        flag = cpu_bf16_flag()
        if flag in FAST_BF16_FLAGS:
            return Precision("bf16", f"auto: this CPU computes bf16 matrix products fast ({flag})")
        if flag in SLOW_BF16_FLAGS:
            return Precision("no", f"auto: this CPU has {flag} but no AMX, where bf16 matrix products are slower than fp32 ones; fp32")
        return Precision("no", f"auto: this {platform.machine() or 'CPU'} CPU has no bf16 instructions; fp32")
    return Precision("no", f"auto: bf16 autocast is not used on {device.type}; fp32")


def adamw(groups, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where every parameter allows it (plain fp32 / bf16 / fp16
    tensors on a CPU or CUDA device: one kernel for all parameters instead of a loop over them;
    the same update up to rounding), the per-tensor loop otherwise (DTensors under FSDP2,
    other devices)."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fusable = bool(params) and all(
        type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=True if fusable else None)


def make_accelerator(cfg, **kwargs) -> Accelerator:
    """The run's Accelerator: ``cfg.mixed_precision`` resolved on the device this process
    trains on (said on the main process), ``cfg.grad_accum``, and ``torch.compile`` (inductor)
    of the prepared model when ``cfg.compile`` is set."""
    # The device (and the process group) before the Accelerator, on the CPU when the launcher
    # says so, as Accelerator itself would (else a multi-process CPU launch sets up one process).
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    precision = resolve_precision(cfg.mixed_precision, device)
    if getattr(cfg, "compile", False):
        kwargs.setdefault("dynamo_backend", "inductor")
    # Accelerate keeps one precision per process; a recipe's main() run again in the same
    # process (tests, notebooks) may ask for another. The process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision.name, **kwargs)
    accelerator.print(f"precision: {precision.label} ({precision.reason})")
    return accelerator
