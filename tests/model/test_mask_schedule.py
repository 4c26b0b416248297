"""Ratios that change over steps or from sample to sample: the schedule's values, exact counts
per sample, and padded batches that compute exactly what each sample would alone."""

import math

import pytest
import torch

from modalmae.masking import masks_from_order, random_masking, running_cell_predict, tube_masking
from modalmae.masking.schedule import MaskRatio
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.tokenizers.spectrogram import SpectrogramPatches


def test_ratio_flag_values():
    assert MaskRatio("0.75").at(1, 100) == 0.75 == MaskRatio("0.75").at(100, 100) and not MaskRatio("0.75").per_sample
    linear = MaskRatio("linear:0.5:0.9")
    assert (linear.at(1, 101), linear.at(51, 101), linear.at(101, 101), linear.at(500, 101)) == pytest.approx((0.5, 0.7, 0.9, 0.9))
    assert linear.at(26, 101) == pytest.approx(0.6) and linear.at(2, 2) == pytest.approx(0.9)  # a two-step run ends at the end
    cosine = MaskRatio("cosine:0.5:0.9")
    assert cosine.at(1, 101) == pytest.approx(0.5) and cosine.at(51, 101) == pytest.approx(0.7) and cosine.at(101, 101) == pytest.approx(0.9)
    assert cosine.at(26, 101) == pytest.approx(0.5 + 0.4 * 0.5 * (1 - math.cos(math.pi / 4)))  # 0.559: slower than linear's 0.6 early on
    assert linear.draw(4, 26, 101, generator=torch.Generator()) == pytest.approx(0.6)  # one ratio for the batch, at its step
    uniform = MaskRatio("uniform:0.4:0.8")
    draws = uniform.draw(4000, 1, 10, generator=torch.Generator().manual_seed(0))
    assert uniform.per_sample and draws.min() >= 0.4 and draws.max() < 0.8 and abs(draws.mean().item() - 0.6) < 0.01
    assert torch.equal(draws, uniform.draw(4000, 1, 10, generator=torch.Generator().manual_seed(0)))  # from the generator alone
    assert uniform.start == pytest.approx(0.6) and uniform.at(7, 10) == pytest.approx(0.6) and str(linear) == "linear:0.5:0.9"
    for bad in ("1.0", "linear:0.5", "steps:0.1:0.2", "uniform:0.8:0.4", "x"):
        with pytest.raises(ValueError, match="--mask-ratio"):
            MaskRatio(bad)


def test_per_sample_counts_are_exact_and_padding_is_flagged():
    gen = torch.Generator().manual_seed(0)
    ratios = torch.tensor([0.1, 0.5, 0.9, 0.5])
    masks = random_masking(4, 20, ratios, generator=gen)
    assert masks.mask.sum(1).tolist() == [2.0, 10.0, 18.0, 10.0]
    assert masks.ids_keep.shape == (4, 18) and masks.ids_masked.shape == (4, 18)
    assert masks.keep_valid.sum(1).tolist() == [18, 10, 2, 10] and masks.masked_valid.sum(1).tolist() == [2, 10, 18, 10]
    keep_mask = masks.mask.gather(1, masks.ids_keep)
    assert (keep_mask[masks.keep_valid] == 0).all() and (keep_mask[~masks.keep_valid] == 1).all()  # padding repeats masked tokens
    masked_mask = masks.mask.gather(1, masks.ids_masked)
    assert (masked_mask[masks.masked_valid] == 1).all() and (masked_mask[~masks.masked_valid] == 0).all()
    tubes = tube_masking(3, (4, 3, 3), torch.tensor([0.2, 0.6, 0.9]), generator=gen)
    per_slice = tubes.mask.view(3, 4, 9)
    assert per_slice.sum(-1).tolist() == [[2.0] * 4, [5.0] * 4, [8.0] * 4]
    assert (per_slice == per_slice[:, :1]).all()  # tubes: the same positions in every slice
    with pytest.raises(ValueError, match="one mask ratio, not one per sample"):
        running_cell_predict(tubes, (4, 3, 3), 0.5, generator=gen)


@pytest.mark.parametrize("window", [None, (2, 2)])
def test_a_padded_batch_computes_what_each_sample_computes_alone(window):
    """Per-sample ratios: every sample's predictions and loss terms equal a dense run of that
    sample alone with its own masks (padding slots change nothing), with and without local
    decoder attention."""
    torch.manual_seed(0)
    tok = SpectrogramPatches(embed_dim=192, num_frames=64, num_mel_bins=32)  # 4 x 2 = 8 tokens
    model = MaskedAutoencoder(tok, mae_tiny(decoder_window=window)).eval()
    x = torch.randn(3, 64, 32)
    gen = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(8, generator=gen) for _ in range(3)])
    counts = torch.tensor([2, 5, 7])
    padded = model(x, masks_from_order(order, counts))
    total, terms = 0.0, 0
    for b in range(3):
        alone = model(x[b : b + 1], masks_from_order(order[b : b + 1], int(counts[b])))
        hidden = alone.mask[0].bool()
        assert torch.allclose(padded.pred[b][hidden], alone.pred[0][hidden], atol=1e-5)
        total += alone.loss.item() * int(counts[b])
        terms += int(counts[b])
    assert padded.loss.item() == pytest.approx(total / terms, rel=1e-5)  # the mean over every masked token
