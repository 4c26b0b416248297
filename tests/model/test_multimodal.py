"""The joint masked autoencoder: one modality reproduces MAE exactly, absent modalities take no
part, masks across modalities keep exact counts, and a joint checkpoint gives each modality's
encoder back."""

import pytest
import torch

from modalmae.checkpoint import CheckpointError, load_encoder, load_pretrained, save_pretrained
from modalmae.masking import concat_masks, dirichlet_masking, random_masking, tube_masking
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes


def tokenizers():
    return {
        "audio": SpectrogramPatches(embed_dim=192, num_frames=64, num_mel_bins=32),  # 4 x 2 = 8 tokens
        "video": VideoTubes(embed_dim=192, num_frames=4, image_size=32, tubelet_size=2, patch_size=16),  # 2 x 2 x 2 = 8 tokens
    }


def inputs(batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(batch, 64, 32, generator=gen), "video": torch.randn(batch, 3, 4, 32, 32, generator=gen)}


def av_masks(batch=3, seed=1, ratio=0.75):
    gen = torch.Generator().manual_seed(seed)
    return concat_masks([random_masking(batch, 8, ratio, generator=gen), tube_masking(batch, (2, 2, 2), ratio, generator=gen)])


def test_concat_masks_offsets_and_counts():
    gen = torch.Generator().manual_seed(0)
    a, v = random_masking(2, 8, 0.75, generator=gen), random_masking(2, 6, 0.5, generator=gen)
    joint = concat_masks([a, v])
    assert joint.mask.shape == (2, 14) and joint.mask.sum(1).tolist() == [9.0, 9.0]
    assert torch.equal(joint.ids_keep, torch.cat([a.ids_keep, v.ids_keep + 8], 1))
    assert torch.equal(joint.mask.gather(1, joint.ids_keep), torch.zeros(2, 5))
    assert torch.equal(joint.mask.gather(1, joint.ids_masked), torch.ones(2, 9))
    assert joint.ids_predict is None
    partial = concat_masks([a.with_decoder_masking(a.ids_masked[:, :2]), v])  # decoder masking on one part
    assert torch.equal(partial.ids_predict, torch.cat([a.ids_masked[:, :2], v.ids_masked + 8], 1))


def test_dirichlet_budget_across_modalities_of_different_lengths():
    gen = torch.Generator().manual_seed(0)
    present = torch.tensor([[True, True], [True, False], [False, True]] * 20)
    masks = dirichlet_masking(present, [8, 24], 6, generator=gen)
    assert masks.ids_keep.shape == (60, 6)
    modality = (masks.ids_keep >= 8).long()  # 0 audio, 1 video
    assert not ((modality == 1) & ~present[:, 1:]).any() and not ((modality == 0) & ~present[:, :1]).any()
    assert torch.equal(masks.mask[1::3, 8:], torch.zeros(20, 24))  # absent: no loss
    assert torch.equal(masks.mask[2::3, :8], torch.zeros(20, 8))
    shares = [int((modality[i] == 1).sum()) for i in range(0, 60, 3)]
    assert len(set(shares)) > 2  # the split varies from sample to sample


def test_one_modality_reproduces_the_masked_autoencoder():
    """With one modality and zero modality embeddings, the joint model is MAE: copy the weights
    of a MaskedAutoencoder across and the loss and predictions agree."""
    torch.manual_seed(0)
    tok = SpectrogramPatches(embed_dim=192, num_frames=64, num_mel_bins=32)
    mae = MaskedAutoencoder(tok, mae_tiny())
    joint = MultiModalMAE({"audio": SpectrogramPatches(embed_dim=192, num_frames=64, num_mel_bins=32)}, mae_tiny())
    d = mae.state_dict()
    state = {
        **{f"tokenizers.audio.{k[len('encoder.tokenizer.'):]}": v for k, v in d.items() if k.startswith("encoder.tokenizer.")},
        **{f"shared.{k[len('encoder.transformer.'):]}": v for k, v in d.items() if k.startswith("encoder.transformer.")},
        **{f"decoder.{k[len('decoder.transformer.'):]}": v for k, v in d.items() if k.startswith("decoder.transformer.")},
        **{f"decoder_positions.audio.{k[len('decoder.positions.'):]}": v for k, v in d.items() if k.startswith("decoder.positions.")},
        "decoder_embed.weight": d["decoder.embed.weight"], "decoder_embed.bias": d["decoder.embed.bias"],
        "heads.audio.weight": d["decoder.head.weight"], "heads.audio.bias": d["decoder.head.bias"],
        "mask_token": d["decoder.mask_token"],
        "modality_embed.audio": torch.zeros(1, 1, 192), "decoder_modality_embed.audio": torch.zeros(1, 1, 128),
    }
    joint.load_state_dict(state, strict=True)
    x = inputs()["audio"]
    masks = random_masking(3, 8, 0.75, generator=torch.Generator().manual_seed(2))
    expected = mae(x, masks)
    got = joint(Group({"audio": x}, concat_masks([masks])))
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert torch.allclose(got.outputs[0]["audio"].pred, expected.pred, atol=1e-5)
    stats = got.stats["audio"]
    assert stats[1].item() == 18 and (stats[0] / stats[1]).item() == pytest.approx(expected.loss.item(), rel=1e-5)


@pytest.mark.parametrize("specific_depth", [0, 3])
def test_an_absent_modality_takes_no_part(specific_depth):
    """A clip without sound: whatever its audio input holds changes nothing, its audio carries no
    loss, and nothing is NaN."""
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), mae_tiny(), specific_depth=specific_depth).eval()
    x, masks = inputs(), av_masks()
    present = {"audio": torch.tensor([True, False, True])}
    out = model(Group(x, masks, present=present, pooled=True))
    noisy = {**x, "audio": x["audio"].clone()}
    noisy["audio"][1] = 1e3 * torch.randn(64, 32)
    again = model(Group(noisy, masks, present=present, pooled=True))
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(again.loss.item(), rel=1e-6)
    assert torch.allclose(out.outputs[0]["video"].pred[1], again.outputs[0]["video"].pred[1], atol=1e-5)
    assert torch.allclose(out.pooled[0]["video"], again.pooled[0]["video"], atol=1e-5)
    assert out.outputs[0]["audio"].loss_mask[1].sum() == 0 and out.stats["audio"][1].item() == 2 * 6  # two samples x 6 masked
    assert out.loss.item() == pytest.approx(sum((s[0] / s[1]).item() for s in out.stats.values()), rel=1e-5)


def test_loss_weights_and_gradients_reach_every_modality():
    model = MultiModalMAE(tokenizers(), mae_tiny(), specific_depth=2, loss_weights={"audio": 0.0})
    out = model(Group(inputs(), av_masks()))
    assert out.loss.item() == pytest.approx((out.stats["video"][0] / out.stats["video"][1]).item(), rel=1e-5)
    full = MultiModalMAE(tokenizers(), mae_tiny(), specific_depth=2)
    full(Group(inputs(), av_masks())).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in full.parameters()), "a parameter without gradient (DDP would stall)"


def test_groups_of_different_modalities_average_by_samples():
    """Unpaired corpora: one group per modality in one forward, weighted by their samples."""
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), mae_tiny()).eval()
    x = inputs()
    gen = torch.Generator().manual_seed(4)
    audio = Group({"audio": x["audio"]}, concat_masks([random_masking(3, 8, 0.75, generator=gen)]))
    video = Group({"video": x["video"][:1]}, concat_masks([tube_masking(1, (2, 2, 2), 0.75, generator=gen)]))
    both = model(audio, video)
    alone = [model(audio).loss.item(), model(video).loss.item()]
    assert both.loss.item() == pytest.approx(0.75 * alone[0] + 0.25 * alone[1], rel=1e-5)


def test_budget_split_needs_a_fully_shared_encoder():
    x = inputs(batch=2)
    masks = dirichlet_masking(torch.ones(2, 2, dtype=torch.bool), [8, 8], 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(MultiModalMAE(tokenizers(), mae_tiny())(Group(x, masks)).loss)
    with pytest.raises(ValueError, match="specific_depth=0"):
        MultiModalMAE(tokenizers(), mae_tiny(), specific_depth=1)(Group(x, masks))


def test_pooled_features_under_a_budget_split_are_each_modality_alone():
    """Per-sample counts differ: the masked pass gives what each sample's modality gives encoded
    alone, and a modality without visible tokens pools to zero."""
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), mae_tiny()).eval()
    x = inputs(batch=6)
    masks = dirichlet_masking(torch.ones(6, 2, dtype=torch.bool), [8, 8], 5, alpha=0.3, generator=torch.Generator().manual_seed(1))
    pooled = model(Group(x, masks, pooled=True)).pooled[0]
    counts = model.visible_counts(Group(x, masks))
    assert (counts["audio"] + counts["video"] == 5).all() and len(set(counts["audio"].tolist())) > 1
    assert counts["audio"].tolist() == [int((keep < 8).sum()) for keep in masks.ids_keep]  # audio: tokens 0-7
    for b in range(6):
        keep = masks.ids_keep[b]
        for m, start in (("audio", 0), ("video", 8)):
            ids = keep[(keep >= start) & (keep < start + 8)] - start
            if len(ids) == 0:
                assert pooled[m][b].abs().max() == 0
                continue
            alone = concat_masks([random_masking(1, 8, 0.0, generator=torch.Generator())])
            alone.ids_keep = ids[None]  # this sample's visible tokens of m only
            expected = model(Group({m: x[m][b : b + 1]}, alone, pooled=True)).pooled[0][m]
            assert torch.allclose(pooled[m][b], expected[0], atol=1e-5)


def test_point_groups_join_with_positions_before_every_block():
    """Point-MAE adds positions before every block; mixed with a modality that adds them once."""
    toks = {"audio": tokenizers()["audio"], "points": PointGroups(embed_dim=192, num_groups=8, group_size=8)}
    model = MultiModalMAE(toks, mae_tiny(), specific_depth=1, norm_pix={"points": False})
    gen = torch.Generator().manual_seed(0)
    masks = concat_masks([random_masking(2, 8, 0.5, generator=gen), random_masking(2, 8, 0.5, generator=gen)])
    x = {"audio": torch.randn(2, 64, 32), "points": torch.randn(2, 256, 3)}
    out = model(Group(x, masks))
    assert torch.isfinite(out.loss) and set(out.stats) == {"audio", "points"}
    # Pooled features with every token visible: each modality's standalone encoder, whose
    # transformer adds the point positions before every block, gives the same.
    model.eval()
    pooled = model.pooled(x)
    for m in ("audio", "points"):
        assert torch.allclose(pooled[m], model.encoder_for(m).eval().pooled(x[m]), atol=1e-5), m


def test_joint_checkpoint_round_trip_and_encoders(tmp_path):
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), mae_tiny(), specific_depth=3, loss_weights={"video": 0.5}).eval()
    save_pretrained(model, tmp_path / "joint", extra={"frontend": {"sample_rate": 16000}})
    loaded, config = load_pretrained(tmp_path / "joint")
    x, masks = inputs(), av_masks()
    assert loaded.loss_weights == {"audio": 1.0, "video": 0.5} and loaded.specific_depth == 3
    assert torch.equal(model(Group(x, masks)).loss, loaded(Group(x, masks)).loss)
    full = concat_masks([random_masking(3, 8, 0.0, generator=torch.Generator())])
    pooled = model(Group({"audio": x["audio"]}, full, pooled=True)).pooled[0]["audio"]
    encoder, enc_config = load_encoder(tmp_path / "joint", modality="audio")
    assert torch.allclose(encoder.pooled(x["audio"]), pooled, atol=1e-5)
    assert torch.allclose(model.pooled(x)["audio"], pooled, atol=1e-5) and model.pooled(x)["video"].shape == (3, 192)
    assert enc_config["modality"] == "audio" and enc_config["extra"] == {"frontend": {"sample_rate": 16000}}
    with pytest.raises(CheckpointError, match="joint model of audio, video: name the modality"):
        load_encoder(tmp_path / "joint")
    with pytest.raises(CheckpointError, match="without points"):
        load_encoder(tmp_path / "joint", modality="points")


def test_heads_on_own_columns_equal_heads_on_every_token():
    """Each head runs on its own modality's predicted slots wherever they sit: shuffling each
    sample's predicted tokens differently moves them, and must give the same loss."""
    torch.manual_seed(0)
    model = MultiModalMAE(tokenizers(), mae_tiny()).eval()
    x, masks = inputs(), av_masks()
    fast = model(Group(x, masks))
    gen = torch.Generator().manual_seed(5)
    shuffled = torch.stack([row[torch.randperm(row.numel(), generator=gen)] for row in masks.ids_masked])
    general = model(Group(x, masks.with_decoder_masking(shuffled)))
    assert general.loss.item() == pytest.approx(fast.loss.item(), rel=1e-5)
    for m in ("audio", "video"):
        assert torch.allclose(general.stats[m], fast.stats[m], rtol=1e-5)
        assert torch.allclose(general.outputs[0][m].pred, fast.outputs[0][m].pred, atol=1e-5)
