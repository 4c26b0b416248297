"""ColorMAE's data-independent masks: filtered random noise, thresholded at the mask ratio.

Hinojosa, Liu, Ghanem, "ColorMAE: Exploring data-independent masking strategies in Masked
AutoEncoders", ECCV 2024 (arXiv 2407.13036; code github.com/carlosh93/ColorMAE). A white noise
field ``W`` over the token grid is filtered with Gaussian kernels ``G_s`` (transfer function
``exp(-2 pi^2 s^2 f^2)``, ``f`` in cycles per token) into one of four colours:

- red (low-pass, large blobs): ``G_r * W``;
- blue (high-pass, evenly spread, no clumps): ``W - G_b * W``;
- green (band-pass, mid-size blobs; the paper's best, ColorMAE-G): ``G_g1 * W - G_g2 * W``, a
  difference of Gaussians with ``g1 < g2``;
- purple (band-stop, low + high): ``W - (G_g1 * W - G_g2 * W)``, white less the green band;

plus white (unfiltered: MAE's random masking). The field is standardised, and per sample the
``round(ratio * L)`` tokens with the *lowest* values are masked: the official
``ColorMasking.color_noise_mask`` argsorts descending and keeps the first ``L - L_masked``
("keep stronger values"). Filtered zero-mean Gaussian noise is symmetric, so masking the highest
values instead would give the same distribution of masks. Counts are exact in every sample.

What was read where. github.com/carlosh93/ColorMAE (commit f0ad557): ``models/utils/
masking_generator.py`` loads a precomputed bank (``noise_colors/<colour>/<colour>_noise_data_
3072.npz``, a [N, M, M] tensor downloaded from OSF; the script that made it is not published),
and per batch takes one random 14 x 14 window (``transforms.RandomCrop(W)``, W = 224 / 16, the
same window for every bank slice of the call), random horizontal and vertical flips, divides each
slice by its maximum and argsorts; ``configs/*.py`` use green at ratio 0.75. The filters above are
the paper's Sec. 3 / project page (carloshinojosa.me/project/colormae: red = Gaussian blur of
W; the README: green "mid-frequency", blue "high-frequency", purple "only high and
low-frequency content", red "low-frequency"). The kernel widths are not in the code (they are
baked into the downloaded banks) and were not readable here, so the sigmas below are this
module's, in token units, chosen on a 14 x 14 grid (tests/model/test_color_masking.py measures
the spectra): red 2.0 (blobs several tokens across), blue 0.7 (passes f > ~0.2), green
(0.6, 1.2) (band around f ~ 0.25, a period of ~4 tokens).

Two ways to get the noise:

- ``colored_noise`` (the default): fresh white noise per sample, filtered by FFT over the grid
  padded by 3 sigma, the centre cropped: a window of an unbounded stationary field, no
  periodic wrap-around blobs. One small FFT per sample: ~3 ms for 256 fields of 14 x 14 on
  one CPU core (green; the whole ``color_masking`` call ~4 ms, ``random_masking`` ~2 ms);
- ``NoiseBank``: the paper's precomputed fields, made once from a seed, each sample a random
  window (wrapping: the fields are periodic) with random flips. Only a gather per call (~0.6 ms
  for 256 windows of 14 x 14, the masking call ~2.7 ms; building the 16 x 256 x 256 bank
  ~0.25 s), but the masks are windows of a finite set of fields. Both are negligible next to
  a training step, so fresh noise is the default.

Grids: 2-D (images (H', W'), spectrograms (T', F')), or 3-D video tubes (T', H', W'). The paper
is image-only. For video the default is one 2-D field shared by every time slice (tubes, as
VideoMAE's tube masking): with masks that move from frame to frame, a masked patch can be
copied from the neighbouring frames, which VideoMAE found makes the task too easy. ``per_frame``
draws an independent 2-D field per time slice instead (each slice exactly
``round(ratio * H' * W')`` masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from modalmae.flags import arg
from modalmae.masking import Masks, per_sample_counts, masks_from_order, num_masked_tokens, slices_order

COLORS = ("white", "red", "blue", "green", "purple")
RED_SIGMA = 2.0  # low-pass
BLUE_SIGMA = 0.7  # high-pass
GREEN_SIGMAS = (0.6, 1.2)  # band-pass (difference of Gaussians); purple is white less this band


def _gaussian(freq2: Tensor, sigma: float) -> Tensor:
    """A unit-gain Gaussian blur's transfer function at squared frequencies (cycles / token)^2."""
    return torch.exp(-2.0 * math.pi**2 * sigma**2 * freq2)


def _response(color: str, freq2: Tensor) -> Tensor:
    if color == "white":
        return torch.ones_like(freq2)
    if color == "red":
        return _gaussian(freq2, RED_SIGMA)
    if color == "blue":
        return 1.0 - _gaussian(freq2, BLUE_SIGMA)
    band = _gaussian(freq2, GREEN_SIGMAS[0]) - _gaussian(freq2, GREEN_SIGMAS[1])
    if color == "green":
        return band
    if color == "purple":
        return 1.0 - band
    raise ValueError(f"unknown noise colour {color!r}; choose from {COLORS}")


def _reach(color: str) -> int:
    """How far (tokens) the colour's filter mixes values: 3 sigma of its widest Gaussian."""
    widest = {"white": 0.0, "red": RED_SIGMA, "blue": BLUE_SIGMA}.get(color, GREEN_SIGMAS[1])
    return math.ceil(3 * widest)


def _filtered(white: Tensor, color: str) -> Tensor:
    """Circular (periodic) filtering of ``white`` [N, *shape] over its trailing dims."""
    shape = white.shape[1:]
    dims = tuple(range(1, white.dim()))
    axes = [torch.fft.fftfreq(n, device=white.device) for n in shape[:-1]]
    axes.append(torch.fft.rfftfreq(shape[-1], device=white.device))
    freq2 = sum(g**2 for g in torch.meshgrid(*axes, indexing="ij"))  # [*rfft shape]
    spectrum = torch.fft.rfftn(white, dim=dims) * _response(color, freq2)
    return torch.fft.irfftn(spectrum, s=shape, dim=dims)


def _standardise(field: Tensor) -> Tensor:
    flat = field.flatten(1)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-12)
    return ((flat - mean[:, None]) / std[:, None]).view_as(field)


def colored_noise(batch: int, shape: tuple[int, ...], color: str, *, generator: torch.Generator) -> Tensor:
    """``batch`` independent coloured noise fields [batch, *shape] (any number of dims: 2-D
    grids, 3-D volumes), zero mean and unit variance each, on the generator's device.

    White noise over ``shape`` padded by the filter's reach is filtered (FFT, periodic) and
    the centre cropped, so the result is a window of a stationary, non-periodic field."""
    _response(color, torch.zeros(1))  # reject unknown colours before drawing
    pad = _reach(color)
    white = torch.randn(batch, *(n + 2 * pad for n in shape), generator=generator, device=generator.device)
    field = _filtered(white, color)
    window = (slice(None),) + tuple(slice(pad, pad + n) for n in shape)
    return _standardise(field[window])


class NoiseBank:
    """ColorMAE's precomputed noise: ``count`` periodic ``size`` x ``size`` fields of one colour,
    made once from ``seed``; ``sample`` cuts each sample a random window (wrapping around the
    periodic field) with random horizontal / vertical flips, as the official ``ColorMasking``
    does (``RandomCrop`` + ``RandomHorizontalFlip`` + ``RandomVerticalFlip``). One difference:
    here each sample draws its own field, window and flips; the official code cuts one window
    (and flip) per call from every bank slice, sample i of a batch taking slice i. Memory:
    ``count * size^2`` floats (4 MiB at the defaults)."""

    def __init__(self, color: str, *, size: int = 256, count: int = 16, seed: int = 0, device: torch.device | str | None = None):
        generator = torch.Generator().manual_seed(seed)
        white = torch.randn(count, size, size, generator=generator)
        self.color = color
        self.fields = _standardise(_filtered(white, color)).to(device or "cpu")  # [count, size, size]

    def sample(self, batch: int, shape: tuple[int, int], *, generator: torch.Generator) -> Tensor:
        """[batch, h, w] windows of the bank, on the bank's device."""
        h, w = shape
        count, size, _ = self.fields.shape
        if h > size or w > size:
            raise ValueError(f"a {h} x {w} window does not fit the bank's {size} x {size} fields")
        draws = torch.randint(0, count * size * size * 4, (batch,), generator=generator, device=generator.device).cpu()
        which, rest = draws // (size * size * 4), draws % (size * size * 4)
        top, left, flips = rest // (size * 4), (rest // 4) % size, rest % 4
        rows = torch.arange(h)[None, :].expand(batch, -1)
        cols = torch.arange(w)[None, :].expand(batch, -1)
        rows = torch.where((flips % 2 == 1)[:, None], h - 1 - rows, rows)  # vertical flip
        cols = torch.where((flips >= 2)[:, None], w - 1 - cols, cols)  # horizontal flip
        rows, cols = (rows + top[:, None]) % size, (cols + left[:, None]) % size
        dev = self.fields.device
        return self.fields[which[:, None, None].to(dev), rows[:, :, None].to(dev), cols[:, None, :].to(dev)]


def color_masking(
    batch_size: int,
    grid: tuple[int, ...],
    ratio: float | Tensor,
    *,
    color: str | NoiseBank,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    per_frame: bool = False,
) -> Masks:
    """ColorMAE masking over a 2-D token grid (H', W') or video tubes (T', H', W').

    ``color``: a colour name (``COLORS``: fresh noise per call) or a ``NoiseBank`` (windows of
    precomputed fields). Per sample (and per time slice), the ``round(ratio * H' * W')``
    positions with the lowest noise are masked (``ratio``: one for all, or [B], one per
    sample). Video: one 2-D field for all T' slices (tubes), or with ``per_frame`` one per
    slice. Tokens are in grid order (row-major).
    """
    if len(grid) == 2:
        t, (h, w) = 1, grid
    elif len(grid) == 3:
        t, h, w = grid
    else:
        raise ValueError(f"colour masking needs a 2-D (H', W') or 3-D (T', H', W') grid, got {grid}")
    fields = t if per_frame else 1
    if isinstance(color, NoiseBank):
        noise = color.sample(batch_size * fields, (h, w), generator=generator)
    else:
        noise = colored_noise(batch_size * fields, (h, w), color, generator=generator)
    spatial = torch.argsort(noise.reshape(batch_size, fields, h * w), dim=2, descending=True)  # kept first
    spatial = spatial.expand(-1, t, -1)  # [B, T', HW]: tubes repeat the one field's order
    if isinstance(ratio, Tensor):
        per_sample = per_sample_counts(ratio, h * w)
        return masks_from_order(slices_order(spatial, per_sample).to(device or generator.device), t * per_sample)
    per_slice = num_masked_tokens(h * w, ratio)
    offsets = torch.arange(t, device=spatial.device)[None, :, None] * (h * w)  # slice s starts at s * HW
    keep = (spatial[:, :, : h * w - per_slice] + offsets).flatten(1)
    masked = (spatial[:, :, h * w - per_slice :] + offsets).flatten(1)
    order = torch.cat([keep, masked], dim=1)  # [B, L]
    return masks_from_order(order.to(device or generator.device), t * per_slice)


@dataclass
class ColorOptions:
    """The flags of ColorMAE masking in the recipes that offer it (``--masking color``)."""

    noise_color: str = arg("green", "with --masking color: the noise colour: red (large blobs), blue (evenly spread), green (mid-size blobs; ColorMAE's choice), purple (blobs and spread)", choices=COLORS[1:])

    def color_masks(self, grid: tuple[int, ...], *, per_frame: bool = False):
        """(x, generator, ratio, batch) -> ColorMAE masks over ``grid`` for a batch ``x``."""

        def masking(x: Tensor, generator: torch.Generator, ratio: float | Tensor, batch: dict | None = None) -> Masks:
            return color_masking(x.shape[0], grid, ratio, color=self.noise_color, generator=generator, per_frame=per_frame)

        return masking
