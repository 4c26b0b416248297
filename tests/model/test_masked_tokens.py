"""The masked autoencoders embed only the visible tokens and cut out only the targets they predict
(``Tokenizer.tokens_at``): their loss, predictions, targets and gradients must be those of
tokenizing every token and gathering, as they were computed before, to float rounding."""

import pytest
import torch

from modalmae.masking import Masks, completion_masks, concat_masks, dirichlet_masking, masks_from_order, random_masking, tube_masking
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.model.distill import Teacher
from modalmae.model.loss import weighted_mean
from modalmae.model.mae import gather_tokens
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.tokenizers import ImagePatches, PointGroups, SpectrogramPatches, VideoTubes, VolumePatches

B = 3


def config(**overrides):
    return mae_tiny(encoder_dim=48, encoder_heads=3, encoder_depth=2, decoder_dim=32, decoder_heads=2, decoder_depth=1, **overrides)


def full_forward(model: MaskedAutoencoder, x, masks: Masks):
    """``MaskedAutoencoder.forward`` as it was: every token tokenized, then gathered ->
    (loss, pred [B, L, P] zero where not predicted, target [B, L, P] of every token, loss_mask)."""
    ids_predict = masks.ids_masked if masks.ids_predict is None else masks.ids_predict
    tokens = model.tokenizer(x)
    latent = model.encoder.encode(tokens, masks.ids_keep, masks.keep_valid)
    valid = None if not masks.padded else torch.cat([masks.keep_valid, masks.masked_valid], dim=1)
    pred = model.decoder(latent, tokens, ids_keep=masks.ids_keep, ids_predict=ids_predict, num_prefix=model.encoder.num_prefix_tokens, valid=valid)
    target = tokens.targets
    if model.config.norm_pix_loss:
        mean, std = model.tokenizer.target_stats(target)
        target = (target - mean) / std
    loss = weighted_mean(model.tokenizer.loss(pred, gather_tokens(target, ids_predict)), torch.gather(masks.mask, 1, ids_predict))
    pred_full = torch.zeros_like(target).scatter(1, ids_predict[..., None].expand(-1, -1, pred.shape[-1]), pred)
    loss_mask = torch.zeros_like(masks.mask).scatter(1, ids_predict, 1.0) * masks.mask
    return loss, pred_full, target, loss_mask


def gradients(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def per_sample_masks(num_tokens: int, counts: list[int], seed: int = 1) -> Masks:
    gen = torch.Generator().manual_seed(seed)
    return masks_from_order(torch.stack([torch.randperm(num_tokens, generator=gen) for _ in counts]), torch.tensor(counts))


def spectrogram_case(**cfg):
    tok = SpectrogramPatches(embed_dim=48, num_frames=64, num_mel_bins=64)  # 4 x 4 tokens
    return MaskedAutoencoder(tok, config(**cfg)), torch.randn(B, 64, 64), random_masking(B, 16, 0.75, generator=torch.Generator().manual_seed(1))


CASES = {
    "spectrogram": lambda: spectrogram_case(norm_pix_loss=False),
    "spectrogram, norm-pix, local decoder": lambda: spectrogram_case(norm_pix_loss=True, decoder_window=(2, 2)),
    "spectrogram, ratio per sample": lambda: (*spectrogram_case(norm_pix_loss=True)[:2], per_sample_masks(16, [4, 9, 14])),
    "video, norm-pix, decoder masking": lambda: (
        MaskedAutoencoder(VideoTubes(embed_dim=48, num_frames=4, image_size=(32, 48), tubelet_size=2, patch_size=8), config(norm_pix_loss=True)),
        torch.randn(B, 3, 4, 32, 48),
        (lambda m: m.with_decoder_masking(m.ids_masked[:, 5:]))(tube_masking(B, (2, 4, 6), 0.75, generator=torch.Generator().manual_seed(1))),
    ),
    "image, norm-pix, CLS token": lambda: (
        MaskedAutoencoder(ImagePatches(embed_dim=48, image_size=(32, 48), patch_size=8), config(norm_pix_loss=True, cls_token=True)),
        torch.randn(B, 3, 32, 48),
        random_masking(B, 24, 0.75, generator=torch.Generator().manual_seed(1)),
    ),
    "volume, Dirichlet, absent sequence": lambda: (
        MaskedAutoencoder(VolumePatches(embed_dim=48, sequences=("t1", "t2", "flair"), volume_size=16, patch_size=8), config(norm_pix_loss=False)),
        {"volume": torch.randn(B, 3, 16, 16, 16), "present": torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)},
        dirichlet_masking(torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool), 8, 5, generator=torch.Generator().manual_seed(1)),
    ),
    "volume, completion": lambda: (
        MaskedAutoencoder(VolumePatches(embed_dim=48, sequences=("t1", "t2", "flair"), volume_size=16, patch_size=8), config(norm_pix_loss=True)),
        torch.randn(B, 3, 16, 16, 16),
        completion_masks(torch.ones(B, 3, dtype=torch.bool), torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool), 8),
    ),
    "points (the default path)": lambda: (
        MaskedAutoencoder(PointGroups(embed_dim=48, num_groups=8, group_size=4), config(norm_pix_loss=False)),
        torch.randn(B, 64, 3),
        random_masking(B, 8, 0.6, generator=torch.Generator().manual_seed(1)),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_forward_equals_tokenizing_everything(case):
    torch.manual_seed(0)
    model, x, masks = CASES[case]()
    out = model(x, masks)
    loss, pred, target, loss_mask = full_forward(model, x, masks)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.pred, pred, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.loss_mask, loss_mask)
    # targets: those of the predicted tokens, zeros where nothing is predicted
    predicted = (out.pred != 0).any(dim=-1, keepdim=True)
    torch.testing.assert_close(out.target, torch.where(predicted, target, 0.0), atol=1e-6, rtol=1e-5)
    fast, full = gradients(model, out.loss), gradients(model, loss)
    assert fast.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(fast[name], full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_no_dense_tensor_is_built_unless_read():
    """A training step reads the loss; the [B, L, P] layouts are made on first access, once."""
    model, x, masks = spectrogram_case()
    out = model(x, masks)
    assert out.pred_tokens.shape == (B, 12, 256) and out.target_tokens.shape == (B, 12, 256)
    assert not {"pred", "target", "loss_mask"} & set(vars(out))
    assert out.pred.shape == (B, 16, 256) and out.pred is out.pred


def test_the_teacher_embeds_only_the_visible_tokens_with_the_same_features():
    torch.manual_seed(0)
    model, x, masks = CASES["image, norm-pix, CLS token"]()
    teacher = Teacher(model.encoder, layer=1)
    from_inputs = teacher.features(x, masks.ids_keep)
    torch.testing.assert_close(from_inputs, teacher.features(teacher.tokenizer(x), masks.ids_keep), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- joint models


def full_joint_forward(model: MultiModalMAE, group: Group):
    """``MultiModalMAE`` on one group as it was: every token of every modality tokenized, every
    head on every predicted slot -> (loss, {modality: (pred, target, loss_mask)}) with pred and
    loss_mask laid out over the modality's tokens, target over them all."""
    names, masks = model.order(group.inputs), group.masks
    tokens = {m: model.tokenizers[m](group.inputs[m]) for m in names}
    lengths = model.lengths(names)
    valid = model._valid(names, lengths, group.present, B, "cpu")
    owner = model._owner(names, "cpu")
    x, pos = model._embed(names, [tokens[m].embeddings for m in names], [tokens[m].positions.expand(B, -1, -1) for m in names])
    x, pos = gather_tokens(x, masks.ids_keep), (None if pos is None else gather_tokens(pos, masks.ids_keep))
    latent, _ = model._encode(group, names, x, pos, valid, owner)
    ids_predict = masks.ids_masked if masks.ids_predict is None else masks.ids_predict
    h = model._decode(names, tokens, latent, masks, ids_predict, valid)
    counted = torch.gather(masks.mask, 1, ids_predict) * (1.0 if valid is None else torch.gather(valid, 1, ids_predict))
    loss, outputs, start = 0.0, {}, 0
    for i, (m, n) in enumerate(zip(names, lengths)):
        pred, weight = model.heads[m](h), counted * (owner[ids_predict] == i)
        target = tokens[m].targets
        if model.norm_pix[m]:
            mean, std = model.tokenizers[m].target_stats(target)
            target = (target - mean) / std
        per_token = model.tokenizers[m].loss(pred, gather_tokens(target, (ids_predict - start).clamp(0, n - 1)))
        loss = loss + model.loss_weights[m] * weighted_mean(per_token, weight)
        index = ids_predict[..., None].expand(-1, -1, pred.shape[-1])
        dense = pred.new_zeros(B, sum(lengths), pred.shape[-1]).scatter(1, index, pred)[:, start : start + n]
        loss_mask = torch.zeros_like(masks.mask).scatter(1, ids_predict, weight)[:, start : start + n]
        outputs[m] = (dense, target, loss_mask)
        start += n
    return loss, outputs


def joint_tokenizers():
    return {
        "audio": SpectrogramPatches(embed_dim=48, num_frames=64, num_mel_bins=32),  # 8 tokens
        "video": VideoTubes(embed_dim=48, num_frames=4, image_size=32, tubelet_size=2, patch_size=16),  # 8 tokens
        "points": PointGroups(embed_dim=48, num_groups=8, group_size=4),  # 8 tokens, positions before every block
    }


def joint_inputs():
    return {"audio": torch.randn(B, 64, 32), "video": torch.randn(B, 3, 4, 32, 32), "points": torch.randn(B, 64, 3)}


def per_modality_masks():
    gen = torch.Generator().manual_seed(1)
    return concat_masks([random_masking(B, 8, 0.75, generator=gen), tube_masking(B, (2, 2, 2), 0.5, generator=gen), random_masking(B, 8, 0.6, generator=gen)])


PRESENT = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
JOINT = {
    "per-modality masks, specific blocks": lambda: (
        MultiModalMAE(joint_tokenizers(), config(), specific_depth=1, norm_pix={"audio": False, "points": False}),
        Group(joint_inputs(), per_modality_masks(), present={"audio": PRESENT[:, 0]}),
    ),
    "a Dirichlet budget split (padded slots)": lambda: (
        MultiModalMAE(joint_tokenizers(), config(), norm_pix={"audio": False, "points": False}),
        Group(
            joint_inputs(), dirichlet_masking(PRESENT, [8, 8, 8], 6, generator=torch.Generator().manual_seed(2)),
            present={m: PRESENT[:, i] for i, m in enumerate(("audio", "video", "points"))},
        ),
    ),
}


@pytest.mark.parametrize("case", JOINT)
def test_the_joint_forward_equals_tokenizing_everything(case):
    torch.manual_seed(0)
    model, group = JOINT[case]()
    out = model(group)
    loss, expected = full_joint_forward(model, group)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=1e-5)
    for m, (pred, target, loss_mask) in expected.items():
        got = out.outputs[0][m]
        torch.testing.assert_close(got.pred, pred, atol=1e-5, rtol=1e-5, msg=m)
        assert torch.equal(got.loss_mask, loss_mask), m
        predicted = (pred != 0).any(dim=-1, keepdim=True)
        torch.testing.assert_close(got.target, torch.where(predicted, target, 0.0), atol=1e-6, rtol=1e-5, msg=m)
    fast, full = gradients(model, out.loss), gradients(model, loss)
    assert fast.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(fast[name], full[name], atol=1e-5, rtol=1e-4, msg=name)
