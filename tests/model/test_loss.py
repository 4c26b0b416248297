import torch

from modalmae.model.loss import weighted_mean
from modalmae.tokenizers.base import mse_per_token, patch_stats


def masked_mse(pred, target, weight):
    """MAE's loss as the model computes it: per-token MSE, averaged over the masked tokens."""
    return weighted_mean(mse_per_token(pred, target), weight)


def test_loss_ignores_visible_tokens():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 10, 6, generator=g), torch.randn(2, 10, 6, generator=g)
    weight = torch.zeros(2, 10)
    weight[:, ::3] = 1
    base = masked_mse(pred, target, weight)
    visible = weight == 0
    pred2, target2 = pred.clone(), target.clone()
    pred2[visible] += 100.0
    target2[visible] = torch.randn(int(visible.sum()), 6, generator=g)
    changed = masked_mse(pred2, target2, weight)
    assert torch.allclose(base, changed)
    # while a masked token does count
    pred2[0, 0] += 1.0
    assert not torch.allclose(masked_mse(pred2, target2, weight), base)


def test_loss_is_mean_over_counted_tokens():
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    weight = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss = masked_mse(pred, target, weight)
    assert loss.item() == (1.0 + 9.0) / 2


def test_norm_pix_standardises_each_patch():
    patches = torch.randn(3, 5, 256) * 7 + 3
    mean, std = patch_stats(patches)
    normed = (patches - mean) / std
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(normed.var(-1), torch.ones(3, 5), atol=1e-3)


def test_nothing_to_predict_gives_zero_not_nan():
    loss = masked_mse(torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.zeros(1, 3))
    assert loss.item() == 0.0


def test_a_single_counted_token_is_its_own_loss():
    """The zero-count guard must not touch real counts: one counted token gives its own value
    (a guard of 2 would halve it)."""
    per_token = torch.tensor([[3.0, 5.0, 7.0]])
    assert weighted_mean(per_token, torch.tensor([[0.0, 1.0, 0.0]])).item() == 5.0
    assert weighted_mean(per_token, torch.tensor([[0.0, 0.0, 0.0]])).item() == 0.0
