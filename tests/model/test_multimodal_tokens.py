"""How the joint model handles each modality's tokens: the split of the joint sequence into
per-modality slots, which samples' tokens count (``Group.present``), positions added before every
block (Point-MAE) in the specific, shared and decoder blocks, the decoder's modality embedding,
and pooled features of each modality encoded alone."""

import copy
import re

import pytest
import torch

from modalmae.masking import (
    concat_masks,
    dirichlet_masking,
    random_masking,
    tube_masking,
)
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes


def config(**overrides):
    return mae_tiny(**{"encoder_dim": 32, "encoder_depth": 2, "encoder_heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **overrides})


def audio():
    return SpectrogramPatches(embed_dim=32, num_frames=32, num_mel_bins=16, patch_size=8)  # 4 x 2 = 8 tokens


def video():
    return VideoTubes(embed_dim=32, num_frames=4, image_size=16, tubelet_size=2, patch_size=8)  # 2 x 2 x 2 = 8 tokens


def points():
    return PointGroups(embed_dim=32, num_groups=8, group_size=4)  # 8 tokens


def inputs(batch, *names, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"audio": (32, 16), "video": (3, 4, 16, 16), "points": (64, 3)}
    return {m: torch.randn(batch, *shapes[m], generator=gen) for m in names}


def av_masks(batch=3, seed=1):
    """Audio: 6 of 8 tokens masked per sample; video: 6 of 8 tubes."""
    gen = torch.Generator().manual_seed(seed)
    return concat_masks([random_masking(batch, 8, 0.75, generator=gen), tube_masking(batch, (2, 2, 2), 0.75, generator=gen)])


# ----------------------------------------------------------------------------- the split


def test_split_gives_each_modality_its_slots_in_order():
    """Slots of three modalities interleaved differently per sample (more than a few, where an
    unstable sort would reorder ties): each modality gets its slots in their order, padded to its
    largest count, and ``back`` places every slot in the modalities' slots concatenated."""
    owner = torch.randint(0, 3, (3, 40), generator=torch.Generator().manual_seed(0))
    slots, real, back = MultiModalMAE._split(owner, 3)
    offset = 0
    for i in range(3):
        mine = [[k for k in range(40) if owner[b, k] == i] for b in range(3)]
        size = max(len(row) for row in mine)
        assert slots[i].shape == real[i].shape == (3, size)
        for b, row in enumerate(mine):
            assert slots[i][b, : len(row)].tolist() == row
            assert real[i][b].tolist() == [True] * len(row) + [False] * (size - len(row))
            assert [back[b, k].item() for k in row] == [offset + j for j in range(len(row))]
        offset += size


# ----------------------------------------------------------------------------- which samples count


def test_present_for_every_modality_still_drops_the_absent_ones():
    """``present`` may name every modality: an absent one still carries no loss (2 of 3 samples
    with sound x 6 masked audio tokens) and its input changes nothing, as when only it is named."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio(), "video": video()}, config()).eval()
    x, masks = inputs(3, "audio", "video"), av_masks()
    both = {"audio": torch.tensor([True, False, True]), "video": torch.ones(3, dtype=torch.bool)}
    out = model(Group(x, masks, present=both))
    assert out.stats["audio"][1].item() == 2 * 6 and out.stats["video"][1].item() == 3 * 6
    assert out.outputs[0]["audio"].loss_mask[1].sum() == 0
    noisy = {**x, "audio": x["audio"].clone()}
    noisy["audio"][1] = 1e3
    again = model(Group(noisy, masks, present=both))
    assert torch.allclose(out.outputs[0]["video"].pred_tokens, again.outputs[0]["video"].pred_tokens, atol=1e-5)
    only_audio = model(Group(x, masks, present={"audio": both["audio"]}))
    assert torch.allclose(out.loss, only_audio.loss, rtol=1e-6)


def test_present_as_zero_one_numbers_means_the_same_as_booleans():
    """A ``present`` flag collated as integers (0 / 1) is read as the boolean it stands for."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio(), "video": video()}, config()).eval()
    x, masks = inputs(3, "audio", "video"), av_masks()
    flags = model(Group(x, masks, present={"audio": torch.tensor([True, False, True])}))
    numbers = model(Group(x, masks, present={"audio": torch.tensor([1, 0, 1])}))
    assert torch.allclose(flags.loss, numbers.loss, rtol=1e-6) and torch.equal(flags.stats["audio"], numbers.stats["audio"])
    assert torch.allclose(flags.outputs[0]["video"].pred_tokens, numbers.outputs[0]["video"].pred_tokens, atol=1e-6)


def test_a_sample_with_no_modality_at_all_is_refused():
    model = MultiModalMAE({"audio": audio(), "video": video()}, config())
    present = {"audio": torch.tensor([True, False, True]), "video": torch.tensor([False, False, True])}  # sample 1: nothing
    with pytest.raises(ValueError, match="^" + re.escape("a sample has none of the modalities audio, video") + "$"):
        model(Group(inputs(3, "audio", "video"), av_masks(), present=present))


def test_modality_specific_blocks_refuse_a_budget_split_with_the_reason():
    model = MultiModalMAE({"audio": audio(), "video": video()}, config(), specific_depth=1)
    masks = dirichlet_masking(torch.ones(4, 2, dtype=torch.bool), [8, 8], 4, alpha=0.3, generator=torch.Generator().manual_seed(0))
    message = (
        "modality-specific blocks need the same number of visible tokens of each modality in every sample "
        "(per-modality ratios, concat_masks); a budget split across modalities needs specific_depth=0"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        model(Group(inputs(4, "audio", "video"), masks))


# ----------------------------------------------------------------------------- positions and embeddings


def joint_state_from_mae(mae: MaskedAutoencoder, name: str, specific_depth: int, dim: int, ddim: int) -> dict:
    """A one-modality MAE's weights as a joint model's: its first ``specific_depth`` encoder blocks
    become the modality's own, the rest the shared ones; zero modality embeddings."""
    state = {f"modality_embed.{name}": torch.zeros(1, 1, dim), f"decoder_modality_embed.{name}": torch.zeros(1, 1, ddim)}
    renames = [
        ("encoder.tokenizer.", f"tokenizers.{name}."), ("encoder.transformer.norm.", "shared.norm."), ("decoder.transformer.", "decoder."),
        ("decoder.positions.", f"decoder_positions.{name}."), ("decoder.embed.", "decoder_embed."), ("decoder.head.", f"heads.{name}."),
        ("decoder.mask_token", "mask_token"),
    ]
    for key, value in mae.state_dict().items():
        if key.startswith("encoder.transformer.blocks."):
            index, rest = key[len("encoder.transformer.blocks.") :].split(".", 1)
            i = int(index)
            key = f"specific.{name}.blocks.{i}.{rest}" if i < specific_depth else f"shared.blocks.{i - specific_depth}.{rest}"
        else:
            key = next(new + key[len(old) :] for old, new in renames if key.startswith(old))
        state[key] = value
    return state


def test_point_groups_alone_reproduce_point_mae_through_specific_and_shared_blocks():
    """Point-MAE adds the centre positions before every block, in the encoder and the decoder: a
    joint model of point groups alone, its first block its own and the second shared, with Point-
    MAE's weights, gives Point-MAE's loss and predictions."""
    torch.manual_seed(0)
    cfg = config(norm_pix_loss=False)
    mae = MaskedAutoencoder(points(), cfg).eval()
    joint = MultiModalMAE({"points": points()}, cfg, specific_depth=1).eval()
    joint.load_state_dict(joint_state_from_mae(mae, "points", 1, 32, 16), strict=True)
    x = inputs(2, "points")["points"]
    masks = random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(3))
    expected = mae(x, masks)
    got = joint(Group({"points": x}, concat_masks([masks]))).outputs[0]["points"]
    assert torch.allclose(got.pred_tokens, expected.pred_tokens, atol=1e-5)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)


def test_the_decoder_modality_embedding_is_added_to_every_decoder_token():
    """Adding an embedding d to every decoder token of the (only) modality equals adding d to the
    decoder's input projection bias and to the mask token."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio()}, config()).eval()
    d = torch.randn(1, 1, 16)
    with torch.no_grad():
        model.decoder_modality_embed["audio"].copy_(d)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.decoder_modality_embed["audio"].zero_()
        moved.decoder_embed.bias += d[0, 0]
        moved.mask_token += d
    x, masks = inputs(2, "audio"), concat_masks([random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(1))])
    a, b = model(Group(x, masks)).outputs[0]["audio"], moved(Group(x, masks)).outputs[0]["audio"]
    assert torch.allclose(a.pred_tokens, b.pred_tokens, atol=1e-5)


# ----------------------------------------------------------------------------- pooled features


def encoded_alone(encoder, x, ids: torch.Tensor) -> torch.Tensor:
    """[B, D] the mean feature of the tokens ``ids`` [B, K] from a modality's standalone encoder
    (``MultiModalMAE.encoder_for``): the reference for pooled features."""
    return encoder.encode(encoder.tokenizer(x), ids).mean(dim=1)


def test_pooled_point_features_with_per_modality_masks_are_the_modality_encoded_alone():
    """Per-modality masks (the same columns in every sample): each modality's visible tokens run
    through its blocks and the shared ones alone, positions before every block included."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio(), "points": points()}, config(), specific_depth=1, norm_pix={"points": False}).eval()
    x = inputs(2, "audio", "points")
    gen = torch.Generator().manual_seed(2)
    parts = [random_masking(2, 8, 0.5, generator=gen), random_masking(2, 8, 0.25, generator=gen)]
    pooled = model(Group(x, concat_masks(parts), pooled=True)).pooled[0]
    for m, part in zip(("audio", "points"), parts):
        assert torch.allclose(pooled[m], encoded_alone(model.encoder_for(m).eval(), x[m], part.ids_keep), atol=1e-5), m


def test_pooled_point_features_under_a_budget_split_are_the_modality_encoded_alone():
    """Visible counts differ by sample (a budget split): each sample's modality, positions before
    every block included, pools as it would encoded alone from its visible tokens."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio(), "points": points()}, config(), norm_pix={"points": False}).eval()
    x = inputs(4, "audio", "points")
    masks = dirichlet_masking(torch.ones(4, 2, dtype=torch.bool), [8, 8], 8, alpha=0.5, generator=torch.Generator().manual_seed(1))
    pooled = model(Group(x, masks, pooled=True)).pooled[0]
    counts = model.visible_counts(Group(x, masks))
    assert len(set(counts["points"].tolist())) > 1  # the budget split differs by sample
    encoders = {m: model.encoder_for(m).eval() for m in x}
    for b in range(4):
        keep = masks.ids_keep[b]
        for m, start in (("audio", 0), ("points", 8)):
            ids = keep[(keep >= start) & (keep < start + 8)] - start
            if len(ids) == 0:
                assert pooled[m][b].abs().max() == 0
            else:
                assert torch.allclose(pooled[m][b], encoded_alone(encoders[m], x[m][b : b + 1], ids[None])[0], atol=1e-5), (m, b)


def test_pooled_features_keep_the_models_dtype():
    """A bfloat16 model gives bfloat16 pooled features, whether the visible counts are the same in
    every sample or differ (a budget split)."""
    torch.manual_seed(0)
    model = MultiModalMAE({"audio": audio(), "video": video()}, config()).eval().to(torch.bfloat16)
    x = {m: v.to(torch.bfloat16) for m, v in inputs(3, "audio", "video").items()}
    split = dirichlet_masking(torch.ones(3, 2, dtype=torch.bool), [8, 8], 6, alpha=0.3, generator=torch.Generator().manual_seed(0))
    for masks in (av_masks(), split):
        pooled = model(Group(x, masks, pooled=True)).pooled[0]
        assert {v.dtype for v in pooled.values()} == {torch.bfloat16}
