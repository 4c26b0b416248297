import pytest
import torch

from modalmae.masking import num_masked_tokens, random_masking


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
