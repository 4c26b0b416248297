"""BM-MAE pieces: the volume tokenizer, Dirichlet masking across sequences, the per-sequence loss
and completing an absent sequence."""

import pytest
import torch

from modalmae.masking import completion_masks, dirichlet_masking
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.model.multisequence import complete_sequences, sequence_balanced_loss, sequence_losses
from modalmae.tokenizers import VolumePatches

SEQS = ["t1", "t1ce", "t2", "flair"]


def tiny(norm_pix=False):
    torch.manual_seed(0)
    return MaskedAutoencoder(VolumePatches(embed_dim=192, sequences=SEQS, volume_size=16, patch_size=8), mae_tiny(norm_pix_loss=norm_pix))


def test_patchify_round_trip_and_sequence_major_order():
    tok = VolumePatches(embed_dim=48, sequences=SEQS, volume_size=(16, 16, 32), patch_size=8)
    x = torch.randn(2, 4, 16, 16, 32)
    patches = tok.patchify(x)
    assert patches.shape == (2, 4 * 2 * 2 * 4, 512) and tok.tokens_per_sequence == 16
    assert torch.equal(tok.unpatchify(patches), x)
    assert torch.equal(patches[1, 16 * 2 + 1], x[1, 2, 0:8, 0:8, 8:16].reshape(-1))  # t2, second patch along z
    tokens = tok({"volume": x, "present": torch.ones(2, 4, dtype=torch.bool)})
    assert tokens.embeddings.shape == (2, 64, 48)
    # the same patch in two sequences gets different tokens (own projection, own sequence embedding)
    same = tok(torch.zeros(1, 4, 16, 16, 32))
    emb = same.embeddings + same.positions
    assert not torch.allclose(emb[0, 0], emb[0, 16])


@pytest.mark.parametrize("alpha", [1.0, 0.2])
def test_dirichlet_masking_exact_counts_and_absent_sequences(alpha):
    present = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]] * 20, dtype=torch.bool)
    masks = dirichlet_masking(present, 8, 6, alpha=alpha, generator=torch.Generator().manual_seed(0))
    assert masks.ids_keep.shape == (60, 6) and masks.ids_masked.shape == (60, 26)
    seq_of_kept = masks.ids_keep // 8
    assert present.gather(1, seq_of_kept).all()  # visible tokens come from present sequences only
    mask = masks.mask.view(60, 4, 8)
    assert (mask[~present] == 0).all()  # absent: neither visible nor reconstructed
    assert torch.equal(mask.sum((1, 2)), present.sum(1) * 8.0 - 6)  # every other present token is masked
    # the split varies: some samples of the 4-sequence pattern leave a sequence without visible tokens
    per_seq = torch.stack([(seq_of_kept[::3] == s).sum(1) for s in range(4)], 1)
    assert (per_seq == 0).any() and (per_seq.sum(1) == 6).all()
    with pytest.raises(ValueError, match="nothing to reconstruct"):
        dirichlet_masking(torch.tensor([[1, 0, 0, 0]], dtype=torch.bool), 8, 8, generator=torch.Generator())


def test_dirichlet_concentration():
    present = torch.ones(400, 4, dtype=torch.bool)
    spread = {}
    for alpha in (0.1, 10.0):
        kept = dirichlet_masking(present, 64, 32, alpha=alpha, generator=torch.Generator().manual_seed(1)).ids_keep // 64
        spread[alpha] = torch.stack([(kept == s).sum(1) for s in range(4)], 1).float().std(1).mean()
    assert spread[0.1] > 2 * spread[10.0]  # small alpha: budgets concentrate on few sequences


def test_per_sequence_loss_survives_a_sequence_with_nothing_masked():
    model = tiny()
    x = {"volume": torch.randn(2, 4, 16, 16, 16), "present": torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)}
    masks = dirichlet_masking(x["present"], 8, 4, generator=torch.Generator().manual_seed(0))
    loss, stats = sequence_balanced_loss(model(x, masks), 4)
    assert torch.isfinite(loss) and stats[2, 1] == 0 and stats[2, 0] == 0  # t2 absent everywhere: no count, no loss
    loss.backward()
    assert model.encoder.tokenizer.proj[0].weight.grad.abs().sum() > 0
    assert model.encoder.tokenizer.proj[2].weight.grad is None or model.encoder.tokenizer.proj[2].weight.grad.abs().sum() == 0


@pytest.mark.parametrize("norm_pix", [False, True])
def test_the_plain_loss_is_the_mean_over_the_masks_mask_with_an_absent_sequence(norm_pix):
    """MaskedAutoencoder's own loss under Dirichlet masking: absent sequences' tokens sit among
    the masked ids but carry mask 0, so the loss is the per-token MSE averaged over mask == 1
    only (computed here from the predictions and targets, with the mask)."""
    model = tiny(norm_pix)
    x = {"volume": torch.randn(3, 4, 16, 16, 16), "present": torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)}
    masks = dirichlet_masking(x["present"], 8, 5, generator=torch.Generator().manual_seed(1))
    out = model(x, masks)
    per_token = (out.pred - out.target).pow(2).mean(-1)  # [B, L]; every masked token is predicted
    expected = (per_token * masks.mask).sum() / masks.mask.sum()
    over_all_masked = per_token.gather(1, masks.ids_masked).mean()  # what ignoring the mask would give
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(over_all_masked.item() - expected.item()) > 1e-3  # the example tells them apart


def test_completing_an_absent_sequence():
    present, targets = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool), torch.tensor([[0, 0, 1, 0]], dtype=torch.bool)
    masks = completion_masks(present, targets, 8)
    assert sorted((masks.ids_keep // 8).unique().tolist()) == [0, 1, 3] and masks.ids_keep.shape[1] == 24
    assert (masks.ids_predict // 8 == 2).all() and masks.ids_predict.shape[1] == 8
    model = tiny().eval()
    volume = torch.randn(1, 4, 16, 16, 16)
    volume[0, 2] = 0
    out = complete_sequences(model, volume, present, targets)
    assert out.shape == volume.shape and (out[0, [0, 1, 3]] == 0).all() and out[0, 2].abs().sum() > 0
    # the encoder never sees the target sequence: its content does not change the answer
    other = volume.clone()
    other[0, 2] = torch.randn(16, 16, 16)
    assert torch.allclose(complete_sequences(model, other, present, targets), out)


def test_sequence_losses_names_each_sequence_and_averages_the_present_ones():
    """The MRI recipe's loss: the mean over sequences of each one's masked-token MSE (a sequence
    absent from the batch left out), and loss_<sequence> = [summed MSE, count] for each,
    recomputed here token by token from the dense predictions and targets."""
    model = tiny()
    present = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=torch.bool)  # t2 absent everywhere
    masks = dirichlet_masking(present, 8, 5, generator=torch.Generator().manual_seed(3))
    out = model({"volume": torch.randn(2, 4, 16, 16, 16), "present": present}, masks)
    loss, figures = sequence_losses(out, model.tokenizer)
    assert list(figures) == ["loss_t1", "loss_t1ce", "loss_t2", "loss_flair"]
    per_token = (out.pred - out.target).pow(2).mean(-1) * out.loss_mask  # [B, L]
    want = []
    for s, name in enumerate(SEQS):
        tokens = slice(8 * s, 8 * (s + 1))
        total, count = per_token[:, tokens].sum(), out.loss_mask[:, tokens].sum()
        torch.testing.assert_close(figures[f"loss_{name}"], torch.stack([total, count]).detach())
        if count > 0:
            want.append(total / count)
    assert figures["loss_t2"][1] == 0 and len(want) == 3
    torch.testing.assert_close(loss, torch.stack(want).mean())
    assert not figures["loss_t1"].requires_grad and loss.requires_grad


def test_sequence_balanced_loss_weighs_sequences_not_tokens_and_is_zero_with_nothing_masked():
    """Two sequences of 2 tokens: the first with one masked token (squared error 4 per value),
    the second with two (1 and 3): the loss is the mean of the sequences' means, (4 + 2) / 2 = 3,
    not the token mean 8 / 3. With nothing to count, the loss is 0 and still has a gradient."""
    from modalmae.model.mae import MAEOutput

    pred = torch.tensor([[[2.0, 2.0], [1.0, 1.0], [3.0 ** 0.5, 3.0 ** 0.5]]], requires_grad=True)

    def output(weight):
        return MAEOutput(
            loss=torch.zeros(()), pred_tokens=pred, target_tokens=torch.zeros(1, 3, 2), weight=weight,
            ids_predict=torch.tensor([[0, 2, 3]]), mask=torch.tensor([[1.0, 0.0, 1.0, 1.0]]),
        )

    loss, stats = sequence_balanced_loss(output(torch.ones(1, 3)), 2)
    torch.testing.assert_close(loss, torch.tensor(3.0))
    torch.testing.assert_close(stats, torch.tensor([[4.0, 1.0], [4.0, 2.0]]))
    loss, stats = sequence_balanced_loss(output(torch.zeros(1, 3)), 2)
    assert loss.item() == 0.0 and loss.requires_grad and (stats[:, 1] == 0).all()
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
