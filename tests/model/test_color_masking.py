"""ColorMAE masks: exact counts, determinism, and each colour's spectrum measured against white."""

import math

import pytest
import torch
import torch.nn.functional as F

from modalmae.masking.color import (
    BLUE_SIGMA,
    COLORS,
    GREEN_SIGMAS,
    RED_SIGMA,
    ColorOptions,
    NoiseBank,
    _gaussian,
    _reach,
    _response,
    _standardise,
    color_masking,
    colored_noise,
)

# Radial frequency bands (cycles / token) on a 14 x 14 grid: its bins reach 0.5 on the axes.
LOW, MID, HIGH = (0.0, 0.12), (0.18, 0.32), (0.38, 1.0)


def band_powers(mask: torch.Tensor) -> dict[str, float]:
    """Mean power of the +-1 masks [N, H, W] in the low / mid / high radial bands (DC left out)."""
    signed = 1.0 - 2.0 * mask
    power = torch.fft.fft2(signed - signed.mean(dim=(1, 2), keepdim=True)).abs().pow(2).mean(0)  # [H, W]
    h, w = power.shape
    radius = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).sqrt()
    return {name: float(power[(radius > lo) & (radius <= hi)].mean()) for name, (lo, hi) in zip(("low", "mid", "high"), (LOW, MID, HIGH))}


def masked_neighbours(mask: torch.Tensor) -> float:
    """Over masked tokens: the mean fraction of their in-grid 4-neighbours that are masked too."""
    padded, ones = F.pad(mask, (1, 1, 1, 1)), F.pad(torch.ones(mask.shape[1:]), (1, 1, 1, 1))

    def around(x):
        return x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:]

    return float((around(padded) / around(ones) * mask).sum() / mask.sum())


def grid_masks(color, n=600, grid=(14, 14), ratio=0.75, seed=0) -> torch.Tensor:
    return color_masking(n, grid, ratio, color=color, generator=torch.Generator().manual_seed(seed)).mask.view(n, *grid)


def check_order(masks, batch, length, num_masked):
    assert masks.ids_keep.shape == (batch, length - num_masked)
    assert masks.ids_masked.shape == (batch, num_masked)
    assert (masks.mask.sum(1) == num_masked).all()
    order = torch.cat([masks.ids_keep, masks.ids_masked], 1)
    assert torch.equal(order.sort(1).values, torch.arange(length).expand(batch, -1))  # every token once
    assert (masks.mask.gather(1, masks.ids_masked) == 1).all() and (masks.mask.gather(1, masks.ids_keep) == 0).all()


@pytest.mark.parametrize("color", COLORS)
@pytest.mark.parametrize("grid,ratio,batch", [((14, 14), 0.75, 3), ((64, 8), 0.8, 2), ((7, 5), 0.5, 1), ((14, 14), 0.9, 4), ((6, 6), 0.0, 2)])
def test_exact_counts_on_2d_grids(color, grid, ratio, batch):
    masks = color_masking(batch, grid, ratio, color=color, generator=torch.Generator().manual_seed(1))
    check_order(masks, batch, grid[0] * grid[1], round(ratio * grid[0] * grid[1]))


@pytest.mark.parametrize("source", ["green", NoiseBank("green", size=32, count=2, seed=0)], ids=["fresh", "bank"])
def test_video_tubes_and_per_frame_slices_are_exact(source):
    t, h, w = 8, 14, 14
    per_slice = round(0.9 * h * w)
    tubes = color_masking(3, (t, h, w), 0.9, color=source, generator=torch.Generator().manual_seed(0))
    check_order(tubes, 3, t * h * w, t * per_slice)
    slices = tubes.mask.view(3, t, h * w)
    assert (slices == slices[:, :1]).all()  # one spatial mask for every time slice
    assert (slices.sum(2) == per_slice).all()

    frames = color_masking(3, (t, h, w), 0.9, color=source, generator=torch.Generator().manual_seed(0), per_frame=True)
    check_order(frames, 3, t * h * w, t * per_slice)
    slices = frames.mask.view(3, t, h * w)
    assert (slices.sum(2) == per_slice).all()  # every slice exact on its own
    assert not (slices == slices[:, :1]).all()  # independent fields per slice


def test_the_generator_alone_decides_the_masks():
    def draw(seed, color="green"):
        return color_masking(4, (14, 14), 0.75, color=color, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5).ids_keep, draw(5).ids_keep)
    assert not torch.equal(draw(5).mask, draw(6).mask)
    assert not torch.equal(draw(5).mask[0], draw(5).mask[1])  # samples differ within a batch
    bank_a, bank_b = NoiseBank("red", size=64, count=3, seed=2), NoiseBank("red", size=64, count=3, seed=2)
    assert torch.equal(bank_a.fields, bank_b.fields)
    assert torch.equal(draw(7, bank_a).ids_masked, draw(7, bank_b).ids_masked)
    noise = colored_noise(2, (16, 16), "blue", generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, colored_noise(2, (16, 16), "blue", generator=torch.Generator().manual_seed(0)))


def test_colored_noise_shapes_and_standardisation():
    g = torch.Generator().manual_seed(0)
    for shape in [(14, 14), (64, 8), (4, 10, 12)]:
        noise = colored_noise(3, shape, "purple", generator=g)
        assert noise.shape == (3, *shape)
        assert torch.allclose(noise.flatten(1).mean(1), torch.zeros(3), atol=1e-5)
        assert torch.allclose(noise.flatten(1).std(1), torch.ones(3), atol=1e-5)
    # a 3-D volume of red noise: adjacent values strongly correlated, of white: not
    red, white = (colored_noise(8, (8, 16, 16), c, generator=g) for c in ("red", "white"))
    assert (red[:, 1:] * red[:, :-1]).mean() > 0.7
    assert abs(float((white[:, 1:] * white[:, :-1]).mean())) < 0.1


@pytest.mark.parametrize("bank", [False, True], ids=["fresh", "bank"])
def test_each_colour_has_its_spectrum(bank):
    """Band powers of 600 masks of 14 x 14 at ratio 0.75, divided by white masks' (measured,
    seed 0, fresh noise: red low 11.2 / high 0.20; blue low 0.51 / high 1.22; green low 0.69 /
    mid 1.48 / high 0.74; purple low 1.10 / mid 0.79 / high 1.13. Over seeds 0-5, fresh and
    bank: red low >= 11.1, blue low <= 0.54 and high >= 1.19, green mid >= 1.48 and low <= 0.78,
    purple mid <= 0.81 and low >= 1.08)."""
    sources = {c: NoiseBank(c, size=128, count=4, seed=0) if bank else c for c in COLORS}
    powers = {c: band_powers(grid_masks(sources[c])) for c in COLORS}
    rel = {c: {band: powers[c][band] / powers["white"][band] for band in ("low", "mid", "high")} for c in COLORS}
    for c in COLORS:
        print(c, {band: round(v, 2) for band, v in rel[c].items()})
    white = powers["white"]
    assert max(white.values()) / min(white.values()) < 1.1  # white masks: flat
    assert rel["red"]["low"] > 5 and rel["red"]["high"] < 0.4
    assert rel["blue"]["low"] < 0.75 and rel["blue"]["high"] > 1.1
    assert rel["green"]["mid"] > 1.3 and rel["green"]["low"] < 0.9 and rel["green"]["high"] < 0.9
    assert rel["purple"]["mid"] < 0.9 and rel["purple"]["low"] > 1.0 and rel["purple"]["high"] > 1.0
    assert rel["purple"]["mid"] < 0.85 * min(rel["purple"]["low"], rel["purple"]["high"])  # a dip in the middle


def test_red_clumps_and_blue_spreads():
    """Fraction of a masked token's 4-neighbours also masked, ratio 0.75 (measured, seed 0:
    red 0.930, green 0.784, white 0.751, purple 0.732, blue 0.716; seeds 0-5 within 0.002)."""
    share = {c: masked_neighbours(grid_masks(c)) for c in COLORS}
    print({c: round(v, 3) for c, v in share.items()})
    assert share["red"] > share["white"] + 0.1
    assert share["blue"] < share["white"] - 0.015
    assert share["green"] > share["white"] > share["blue"]


def test_bad_arguments_are_refused():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="colour"):
        color_masking(2, (14, 14), 0.75, color="pink", generator=g)
    with pytest.raises(ValueError, match="grid"):
        color_masking(2, (196,), 0.75, color="red", generator=g)
    with pytest.raises(ValueError, match="mask ratio"):
        color_masking(2, (14, 14), 1.0, color="red", generator=g)
    with pytest.raises(ValueError, match="window"):
        color_masking(2, (40, 40), 0.75, color=NoiseBank("red", size=32, count=1), generator=g)


@pytest.mark.parametrize("per_frame", [None, False, True], ids=["default", "tubes", "per-frame"])
def test_the_recipes_masking_draws_colour_masks_of_the_chosen_noise(per_frame):
    """ColorOptions.color_masks (what `--masking color --noise-color C` builds): masks over the
    recipe's grid for the batch's size (a batch of 2 clips of 3 channels) at the step's ratio,
    the same as color_masking with the chosen colour, tubes unless the frame-by-frame variant
    is asked for."""
    grid = (4, 8, 8)
    options = ColorOptions(noise_color="red")
    masking = options.color_masks(grid) if per_frame is None else options.color_masks(grid, per_frame=per_frame)
    per_frame = bool(per_frame)
    got = masking(torch.zeros(2, 3, 8, 32, 32), torch.Generator().manual_seed(5), 0.75, None)
    want = color_masking(2, grid, 0.75, color="red", generator=torch.Generator().manual_seed(5), per_frame=per_frame)
    assert got.mask.shape == (2, 256) and torch.equal(got.mask, want.mask) and torch.equal(got.ids_keep, want.ids_keep)
    other = color_masking(2, grid, 0.75, color="blue", generator=torch.Generator().manual_seed(5), per_frame=per_frame)
    assert not torch.equal(got.mask, other.mask)  # the colour given is the one used


def test_bank_windows_are_uniform_over_field_offset_and_flips():
    """NoiseBank.sample: each window is a field's wrapped h x w window, flipped or not along each
    axis, and every (field, top, left, flips) of the bank is drawn (2 x 4 x 4 x 4 = 128 of them,
    ~31 times each in 4,000 draws). A window taller or wider than the fields is refused."""
    bank = NoiseBank("blue", size=4, count=2, seed=0)
    h, w = 3, 2
    rows, cols = torch.arange(h), torch.arange(w)
    candidates = torch.stack([
        bank.fields[f][((top + (h - 1 - rows if v else rows)) % 4)[:, None], ((left + (w - 1 - cols if hz else cols)) % 4)[None, :]]
        for f in range(2) for top in range(4) for left in range(4) for v in (False, True) for hz in (False, True)
    ])  # [128, h, w]
    windows = bank.sample(4000, (h, w), generator=torch.Generator().manual_seed(0))
    assert windows.shape == (4000, h, w)
    matches = (windows[:, None] == candidates[None]).all(dim=-1).all(dim=-1)  # [4000, 128]
    assert (matches.sum(dim=1) == 1).all()  # each window is exactly one of them
    counts = matches.sum(dim=0)
    assert (counts > 0).all(), f"never drawn: {(counts == 0).nonzero().flatten().tolist()}"
    for shape in ((5, 2), (2, 5)):
        with pytest.raises(ValueError, match="does not fit the bank's 4 x 4 fields"):
            bank.sample(1, shape, generator=torch.Generator())


def test_the_default_bank_is_colormaes():
    """ColorMAE's bank: 16 fields of 256 x 256 (4 MiB), made from seed 0, and it says its colour."""
    bank = NoiseBank("green")
    assert bank.color == "green" and bank.fields.shape == (16, 256, 256) and bank.fields.dtype == torch.float32
    assert torch.equal(bank.fields, NoiseBank("green", size=256, count=16, seed=0).fields)
    assert not torch.equal(bank.fields[:1], NoiseBank("green", count=1, seed=1).fields)


@pytest.mark.parametrize("sigma", [1.2, 2.0, 3.0])
def test_the_gaussian_response_is_the_spectrum_of_a_unit_gain_gaussian_blur(sigma):
    """The transfer function of a blur by a unit-sum Gaussian kernel of std ``sigma`` tokens:
    the DFT of the sampled kernel on a periodic grid of 64 (sigma >= 1.2: the sampling's
    aliasing stays below 2e-3)."""
    n = 64
    d = torch.minimum(torch.arange(n), n - torch.arange(n)).double()  # periodic distance to 0
    kernel = torch.exp(-(d**2) / (2 * sigma**2))
    dft = torch.fft.fft(kernel / kernel.sum()).real
    assert torch.allclose(_gaussian(torch.fft.fftfreq(n).double() ** 2, sigma), dft, atol=2e-3)


@pytest.mark.parametrize("color,at_dc,at_high", [("white", 1, 1), ("red", 1, 0), ("blue", 0, 1), ("green", 0, 0), ("purple", 1, 1)])
def test_each_colours_filter_passes_or_stops_the_mean_and_the_fine_detail(color, at_dc, at_high):
    """Gain at frequency 0 and far above every band (f^2 = 10 (cycles / token)^2): white passes
    both, red (low-pass, a unit-gain blur) the mean only, blue (white less a blur) the detail
    only, green (a difference of two unit-gain blurs) neither, purple (white less green) both."""
    gain = _response(color, torch.tensor([0.0, 10.0]))
    assert torch.allclose(gain, torch.tensor([at_dc, at_high], dtype=gain.dtype), atol=1e-6)


def test_the_noise_is_padded_by_three_sigma_of_the_widest_filter():
    """``_reach``: 3 sigma of the colour's widest Gaussian, rounded up; white needs none."""
    widest = {"white": 0.0, "red": RED_SIGMA, "blue": BLUE_SIGMA, "green": GREEN_SIGMAS[1], "purple": GREEN_SIGMAS[1]}
    assert {c: _reach(c) for c in COLORS} == {c: math.ceil(3 * s) for c, s in widest.items()} == {"white": 0, "red": 6, "blue": 3, "green": 4, "purple": 4}


def test_white_noise_is_the_generators_draws_over_the_grid_itself():
    """White is unfiltered and has no reach: the generator's standard normal draws for exactly
    the grid's tokens, standardised per sample."""
    noise = colored_noise(3, (5, 7), "white", generator=torch.Generator().manual_seed(4))
    draws = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(noise, _standardise(draws), atol=1e-5)
