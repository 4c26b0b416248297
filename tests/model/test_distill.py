import copy

import pytest
import torch
import torch.nn.functional as F

from modalmae.masking import random_masking
from modalmae.model import Encoder, MaskedAutoencoder, mae_tiny
from modalmae.model.distill import (
    Distillation,
    DistilledMAE,
    Teacher,
    default_layer,
    matching_layer,
)
from modalmae.model.mae import gather_tokens
from modalmae.tokenizers.spectrogram import SpectrogramPatches

FRAMES, BINS = 64, 32  # 4 x 2 = 8 tokens of 16 x 16


def student(**overrides) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES, num_mel_bins=BINS), mae_tiny(**overrides))


def teacher_encoder(*, dim: int = 256, depth: int = 6, frames: int = FRAMES, **overrides) -> Encoder:
    """A teacher wider and deeper than the student (mae_tiny: 192 wide, 4 blocks)."""
    torch.manual_seed(1)
    cfg = mae_tiny(encoder_dim=dim, encoder_depth=depth, encoder_heads=4, **overrides)
    return Encoder(SpectrogramPatches(embed_dim=dim, num_frames=frames, num_mel_bins=BINS), cfg)


def batch(seed: int = 0, size: int = 4):
    x = torch.randn(size, FRAMES, BINS, generator=torch.Generator().manual_seed(seed))
    masks = random_masking(size, 8, 0.5, generator=torch.Generator().manual_seed(seed))
    return x, masks


def distilled(*, teacher_layer: int = 4, student_layer: int = 3, **teacher_options) -> DistilledMAE:
    model = student()
    return DistilledMAE(model, Distillation(Teacher(teacher_encoder(**teacher_options), layer=teacher_layer), student=model, student_layer=student_layer))


def count_calls(blocks) -> list[int]:
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_the_teacher_stays_frozen_and_gets_no_gradient():
    model = distilled()
    teacher = model.distillation.teacher
    before = copy.deepcopy(teacher.state_dict())
    projection = model.distillation.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    assert not teacher.training and not teacher.encoder.training  # .train() on a parent leaves it in eval
    for step in range(3):
        x, masks = batch(step)
        out, feature_loss = model(x, masks)
        (out.loss + model.weight * feature_loss).backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert model.distillation.projection.weight.grad.abs().sum() > 0
        assert model.student.encoder.transformer.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(projection, model.distillation.projection.weight)  # the projection trains
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_feature_loss_falls_and_the_teacher_runs_only_its_first_blocks():
    encoder = teacher_encoder()
    calls = count_calls(list(encoder.transformer.blocks))  # all 6, before the cut
    model = student()
    distill = Distillation(Teacher(encoder, layer=4), student=model, student_layer=3)
    assert len(distill.teacher.encoder.transformer.blocks) == 4 and distill.teacher.depth == 6
    trained = DistilledMAE(model, distill)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-3)
    x, masks = batch()
    losses = []
    for _ in range(30):
        out, feature_loss = trained(x, masks)
        (out.loss + feature_loss).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(feature_loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert calls == [30, 30, 30, 30, 0, 0]
    # the student's hook is removed after each forward
    assert not any(block._forward_hooks for block in model.encoder.transformer.blocks)


@pytest.mark.parametrize("cls_token", [False, True])
def test_the_teacher_sees_only_the_visible_tokens_up_to_its_layer(cls_token):
    encoder = teacher_encoder(cls_token=cls_token).eval()
    reference = copy.deepcopy(encoder)
    teacher = Teacher(encoder, layer=2)
    x, masks = batch(3)
    # computed independently: the visible tokens with their positions, (CLS,) the first 2 blocks
    tokens = reference.tokenizer(x)
    h = gather_tokens(tokens.embeddings, masks.ids_keep) + gather_tokens(tokens.positions.expand(4, -1, -1), masks.ids_keep)
    if cls_token:
        h = torch.cat([reference.cls_token.expand(4, -1, -1), h], dim=1)
    for block in reference.transformer.blocks[:2]:
        h = block(h)
    expected = h[:, 1:] if cls_token else h
    feats = teacher.features(x, masks.ids_keep)
    assert feats.shape == (4, 4, 256)
    torch.testing.assert_close(feats, expected)
    # changing the masked patches changes nothing
    patches = teacher.tokenizer.patchify(x).clone()
    patches[masks.mask.bool()] += 5.0
    torch.testing.assert_close(teacher.features(teacher.tokenizer.unpatchify(patches), masks.ids_keep), feats)


def test_the_loss_matches_the_student_block_output_to_the_teacher():
    model = student(cls_token=True).eval()
    distill = Distillation(Teacher(teacher_encoder(), layer=5), student=model, student_layer=2)
    x, masks = batch(5)
    out, feature_loss = distill(model, x, masks)
    torch.testing.assert_close(out.loss, model(x, masks).loss)  # the pixel loss is untouched
    # the student's block-2 output on its visible tokens, CLS left out, computed independently
    tokens = model.tokenizer(x)
    h = gather_tokens(tokens.embeddings + tokens.positions, masks.ids_keep)
    h = torch.cat([model.encoder.cls_token.expand(4, -1, -1), h], dim=1)
    for block in model.encoder.transformer.blocks[:2]:
        h = block(h)
    teacher_feats = distill.teacher.features(x, masks.ids_keep)
    torch.testing.assert_close(feature_loss, distill.loss(h[:, 1:], teacher_feats))
    # the paper's loss: L1 between unit-norm projected student and teacher features
    expected = (F.normalize(distill.projection(h[:, 1:]), dim=-1) - F.normalize(teacher_feats, dim=-1)).abs().mean()
    torch.testing.assert_close(feature_loss, expected)
    torch.testing.assert_close(distill.loss(h[:, 1:], 3.0 * teacher_feats), feature_loss)  # scale-free


@pytest.mark.parametrize("dim", [192, 384])
def test_any_teacher_width_is_projected_to(dim):
    model = distilled(dim=dim, teacher_layer=3)
    assert model.distillation.projection.in_features == 192 and model.distillation.projection.out_features == dim
    out, feature_loss = model(*batch())
    assert feature_loss.ndim == 0 and torch.isfinite(feature_loss) and torch.isfinite(out.loss)


def test_a_different_token_grid_is_refused():
    model = student()
    other = Teacher(teacher_encoder(frames=2 * FRAMES), layer=2)  # 8 x 2 tokens against 4 x 2
    with pytest.raises(ValueError, match=r"token grid differs.*num_tokens 8 \(student\) vs 16 \(teacher\).*grid"):
        Distillation(other, student=model, student_layer=2)


def test_layers_out_of_range_are_refused_and_the_official_pairing():
    with pytest.raises(ValueError, match="teacher layer 7 is out of range: the encoder has 6 blocks"):
        Teacher(teacher_encoder(), layer=7)
    with pytest.raises(ValueError, match="student layer 5 is out of range"):
        Distillation(Teacher(teacher_encoder(), layer=2), student=student(), student_layer=5)
    assert default_layer(12) == 9 and default_layer(24) == 18  # the official ViT-B / ViT-L blocks
    assert matching_layer(9, student_depth=12, teacher_depth=24) == 18
