"""Masking ratios that change: over training (a schedule) or from sample to sample (a range).

``MaskRatio`` is what ``--mask-ratio`` takes, a string kept as given in config.json:

- ``0.75``: one ratio for every sample and step (MAE and most of its descendants);
- ``linear:0.5:0.9`` / ``cosine:0.5:0.9``: from the first ratio at step 1 to the second at the
  last step, linearly or along half a cosine (the ratio curriculum of time-variant masking,
  Learning Better Masking; diffusion-MAViL's masking-ratio curriculum). The ratio is a function
  of the step alone, so a resumed run continues the schedule where it stopped;
- ``uniform:0.5:0.9``: every sample draws its own ratio, uniformly in the range (MaskViT's
  variable masking; AVSiam trains on several ratios in one batch).

Per-sample ratios make samples keep different numbers of tokens. The batch stays one dense
tensor by padding (``masks_from_order`` with per-sample counts): every sample's visible list is
as long as the longest and its masked list as long as the longest, the slots past a sample's
own count flagged in ``Masks.keep_valid`` / ``Masks.masked_valid``; padding slots take no part
in attention and carry no loss. The price: the encoder runs on the batch's largest visible
count (at ``uniform:0.5:0.9`` and batch 16, about 0.5 L instead of the mean 0.3 L), the decoder
on L plus the spread of the counts, and attention needs a key mask (a slower kernel on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("linear", "cosine", "uniform")


class MaskRatio(str):
    """A ``--mask-ratio`` value: ``R``, ``linear:R0:R1``, ``cosine:R0:R1`` or ``uniform:LOW:HIGH``
    (ratios in [0, 1)). Raises ValueError (argparse reports it) for anything else."""

    def __new__(cls, text: str | float) -> MaskRatio:
        self = super().__new__(cls, str(text).strip())
        kind, *values = self.split(":") if ":" in self else ("constant", self)
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            numbers = []
        if (kind == "constant" and len(numbers) != 1) or (kind != "constant" and (kind not in KINDS or len(numbers) != 2)):
            raise ValueError(f"--mask-ratio {text!r}: expected R, linear:R0:R1, cosine:R0:R1 or uniform:LOW:HIGH")
        if not all(0.0 <= r < 1.0 for r in numbers):
            raise ValueError(f"--mask-ratio {text!r}: ratios must be in [0, 1)")
        if kind == "uniform" and numbers[0] > numbers[1]:
            raise ValueError(f"--mask-ratio {text!r}: LOW above HIGH")
        self.kind, self.values = kind, numbers
        return self

    @property
    def start(self) -> float:
        """The ratio at the first step (the range's middle for ``uniform``)."""
        return sum(self.values) / 2 if self.kind == "uniform" else self.values[0]

    @property
    def per_sample(self) -> bool:
        return self.kind == "uniform"

    def at(self, step: int, total: int) -> float:
        """The ratio in force at optimizer step ``step`` (1-based) of ``total`` (for ``uniform``:
        the middle of the range, the mean of the draws)."""
        if self.kind in ("constant", "uniform"):
            return self.start
        first, last = self.values
        progress = min(1.0, max(0.0, (step - 1) / max(1, total - 1)))
        if self.kind == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return first + (last - first) * progress

    def draw(self, batch: int, step: int, total: int, *, generator: torch.Generator) -> float | Tensor:
        """The ratio of each sample at ``step``: one float for all, or [batch] for ``uniform``."""
        if not self.per_sample:
            return self.at(step, total)
        low, high = self.values
        return low + (high - low) * torch.rand(batch, generator=generator, device=generator.device).cpu()
