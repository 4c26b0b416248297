"""The visible-token budget of MultiMAE / BM-MAE masking: how it is split across sequences, the
errors that refuse an impossible budget, the default concentration, and the seeding."""

import numpy as np
import pytest
import torch

from modalmae.masking import (
    _split_budget,
    dirichlet_masking,
    per_sample_counts,
    random_masking,
)


@pytest.mark.parametrize(
    "ratios,total,capacity,expected",
    [
        # 1.2, 1.8 -> floors 1, 1; the one left goes to the larger remainder (0.8, the second)
        ([0.4, 0.6], 3, 10, [1, 2]),
        # 1.1, 0.9 -> 1, 0; remainders 0.1, 0.9: the smaller share gets it
        ([0.55, 0.45], 2, 10, [1, 1]),
        # 2.8, 1.2 -> 2, 1; remainders 0.8, 0.2: the larger count gets it
        ([0.7, 0.3], 4, 10, [3, 1]),
        # 4.5, 0.5 -> 2 (capacity), 0; the overflow goes to the sequence with room
        ([0.9, 0.1], 5, np.array([2, 10]), [2, 3]),
    ],
)
def test_split_budget_is_largest_remainders_within_capacity(ratios, total, capacity, expected):
    """Hamilton's largest-remainder rounding of ``ratios * total``: counts sum exactly to the
    budget, none above its capacity, what a full sequence cannot take goes to those with room."""
    counts = _split_budget(np.array(ratios), total, capacity)
    assert counts.tolist() == expected
    assert counts.sum() == total and (counts <= capacity).all()


def test_dirichlet_default_alpha_is_one():
    """MultiMAE's default concentration, alpha = 1 (uniform over the splits)."""
    present = torch.ones(8, 3, dtype=torch.bool)
    default = dirichlet_masking(present, 8, 6, generator=torch.Generator().manual_seed(0))
    one = dirichlet_masking(present, 8, 6, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default.ids_keep, one.ids_keep) and torch.equal(default.ids_masked, one.ids_masked)


def test_dirichlet_refuses_a_sample_without_sequences():
    """One sample with nothing present is refused by name, even when the others are fine."""
    present = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"^a sample has no sequence present$"):
        dirichlet_masking(present, 8, 4, generator=torch.Generator().manual_seed(0))


def test_dirichlet_refusal_names_the_smallest_sample():
    """A budget leaving nothing to reconstruct names the budget and the fewest tokens present in
    one sample (sample 1: only the 8-token sequence; sample 0 has 8 + 24)."""
    present = torch.tensor([[True, True], [True, False]])
    msg = r"^8 visible tokens leave nothing to reconstruct in a sample with 8 tokens present$"
    with pytest.raises(ValueError, match=msg):
        dirichlet_masking(present, [8, 24], 8, generator=torch.Generator().manual_seed(0))


def test_dirichlet_distinct_seeds_give_distinct_masks():
    """The generator's seed picks the masks: 200 seeds give 200 different token orders (one
    sample, 32 tokens: a repeat by chance is out of reach)."""
    present = torch.ones(1, 2, dtype=torch.bool)
    orders = set()
    for seed in range(200):
        m = dirichlet_masking(present, 16, 4, generator=torch.Generator().manual_seed(seed))
        orders.add(tuple(torch.cat([m.ids_keep, m.ids_masked], 1)[0].tolist()))
    assert len(orders) == 200


def test_per_sample_counts_round_each_ratio_of_the_tokens():
    """One masked count per sample: round(ratio * L), 0 allowed (nothing masked)."""
    assert per_sample_counts(torch.tensor([0.0, 0.25, 0.5, 0.9]), 8).tolist() == [0, 2, 4, 7]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_per_sample_ratios_outside_zero_to_one_are_refused(bad):
    """Per-sample mask ratios must lie in [0, 1): a ratio of 1 would leave the encoder nothing to
    see; the error lists the ratios given."""
    ratios = torch.tensor([0.5, bad])
    with pytest.raises(ValueError, match=r"mask ratios must be in \[0, 1\), got \[0\.5, "):
        per_sample_counts(ratios, 8)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        random_masking(2, 8, ratios, generator=torch.Generator().manual_seed(0))
