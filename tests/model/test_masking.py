import re

import pytest
import torch

from modalmae.masking import (
    completion_masks,
    concat_masks,
    num_masked_tokens,
    random_masking,
    slices_order,
    tube_masking,
)


@pytest.mark.parametrize("num_tokens,ratio", [(512, 0.8), (512, 0.75), (1568, 0.9), (7, 0.5), (10, 0.0)])
def test_exact_mask_count_in_every_sample(num_tokens, ratio):
    masks = random_masking(16, num_tokens, ratio, generator=torch.Generator().manual_seed(0))
    expected = round(ratio * num_tokens)
    assert masks.mask.shape == (16, num_tokens)
    assert (masks.mask.sum(dim=1) == expected).all()
    assert masks.ids_masked.shape == (16, expected)
    assert masks.ids_keep.shape == (16, num_tokens - expected)


def test_indices_agree_with_mask():
    masks = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(1))
    order = torch.cat([masks.ids_keep, masks.ids_masked], dim=1)  # [B, L] shuffled token ids
    assert (torch.gather(masks.mask, 1, masks.ids_masked) == 1).all()
    assert (torch.gather(masks.mask, 1, masks.ids_keep) == 0).all()
    # a permutation: every token exactly once
    assert torch.equal(order.sort(dim=1).values, torch.arange(64).expand(8, -1))


def test_generator_controls_randomness():
    a = random_masking(4, 100, 0.8, generator=torch.Generator().manual_seed(7))
    b = random_masking(4, 100, 0.8, generator=torch.Generator().manual_seed(7))
    c = random_masking(4, 100, 0.8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)
    # samples within a batch differ
    assert not torch.equal(a.mask[0], a.mask[1])


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio_rejected(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        num_masked_tokens(10, ratio)


def test_masks_to_moves_every_index_view():
    """``Masks.to`` puts every tensor on the device asked for (the meta device stands in for a
    GPU here) and keeps an absent view absent."""
    masks = random_masking(2, 6, 0.5, generator=torch.Generator().manual_seed(0))
    moved = masks.with_decoder_masking(masks.ids_masked[:, :1]).to("meta")
    assert [t.device.type for t in (moved.ids_keep, moved.ids_masked, moved.mask, moved.ids_predict)] == ["meta"] * 4
    assert moved.keep_valid is None and moved.masked_valid is None


def test_slices_order_lists_kept_then_masked_tokens_each_in_token_order():
    """3 slices of 2 positions; token s * 2 + p. Sample 0 masks the last position of each
    slice's order (positions 0, 1, 0: tokens 0, 3, 4), sample 1 masks none."""
    spatial = torch.tensor([[[1, 0], [0, 1], [1, 0]], [[0, 1], [1, 0], [0, 1]]])
    order = slices_order(spatial, torch.tensor([1, 0]))
    assert order.tolist() == [[1, 2, 5, 0, 3, 4], [0, 1, 2, 3, 4, 5]]


def completion_case():
    """4 sequences of 2 tokens. Sample 0: sequence 0 absent, 1 and 3 visible, 2 the target;
    sample 1: 2 absent, 0 and 1 visible, 3 the target."""
    present = torch.tensor([[False, True, True, True], [True, True, False, True]])
    targets = torch.tensor([[False, False, True, False], [False, False, False, True]])
    return present, targets


def test_completion_masks_predict_the_targets_from_the_visible_sequences_only():
    """Visible: every token of the present non-target sequences; predicted (mask 1): every token
    of the targets; an absent sequence is neither (mask 0, not predicted)."""
    masks = completion_masks(*completion_case(), 2)
    assert masks.ids_keep.sort(1).values.tolist() == [[2, 3, 6, 7], [0, 1, 2, 3]]
    assert masks.ids_predict.sort(1).values.tolist() == [[4, 5], [6, 7]]
    assert masks.mask.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]]
    order = torch.cat([masks.ids_keep, masks.ids_masked], 1)
    assert torch.equal(order.sort(1).values, torch.arange(8).expand(2, -1))  # every token once


@pytest.mark.parametrize("case", ["targets differ", "visible differ", "nothing visible"])
def test_completion_masks_refuse_samples_with_different_counts(case):
    present, targets = completion_case()
    if case == "targets differ":  # sequences 0 and 1 visible in each, targets 1 and 2
        present = torch.tensor([[True, True, True, False], [True, True, True, True]])
        targets = torch.tensor([[False, False, True, False], [False, False, True, True]])
    elif case == "visible differ":  # one target each, 2 and 3 visible
        present = torch.tensor([[False, True, True, True], [True, True, True, True]])
    else:
        present = targets.clone()
    with pytest.raises(ValueError, match=r"^every sample needs the same number \(> 0\) of visible and of target sequences$"):
        completion_masks(present, targets, 2)


@pytest.mark.parametrize("make", [
    lambda **kw: tube_masking(2, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(0), **kw),
    lambda **kw: random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(0), **kw),
], ids=["tube", "random"])
def test_masks_are_made_on_the_device_asked_for(make):
    """``device``: where the masks go, whatever the generator's (the meta device stands in for
    an accelerator's); without it they stay on the generator's. (A ratio per sample cannot be
    tried on meta: its padding reads counts with ``.item()``.)"""
    masks = make(device="meta")
    assert [t.device.type for t in (masks.ids_keep, masks.ids_masked, masks.mask)] == ["meta"] * 3
    assert make().mask.device.type == "cpu"


def test_masks_with_a_ratio_per_sample_cannot_be_joined():
    padded = random_masking(2, 8, torch.tensor([0.5, 0.75]), generator=torch.Generator().manual_seed(0))
    plain = random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(0))
    message = "masks with a ratio per sample (padded) cannot be joined; use one ratio per modality"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        concat_masks([plain, padded])

