"""Checkpoint round trips over generated small models: ``save_pretrained`` then
``load_pretrained`` / ``load_encoder`` give identical state dicts and identical outputs on a
fixed input, for single-modality masked autoencoders, bare encoders and joint models."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st

from modalmae.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_encoder,
    load_pretrained,
    save_pretrained,
    state_digest,
)
from modalmae.masking import concat_masks, random_masking
from modalmae.model import Encoder, MAEConfig, MaskedAutoencoder
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.tokenizers import (
    ImagePatches,
    PointGroups,
    SpectrogramPatches,
    VideoTubes,
    VolumePatches,
)

from ._support import examples

# Tiny tokenizers of every modality (embed_dim is the encoder width) and a fixed input for each.
TOKENIZERS = {
    "audio": lambda d: SpectrogramPatches(embed_dim=d, num_frames=8, num_mel_bins=8, patch_size=4),
    "image": lambda d: ImagePatches(embed_dim=d, image_size=8, patch_size=4),
    "video": lambda d: VideoTubes(embed_dim=d, num_frames=4, image_size=8, tubelet_size=2, patch_size=4),
    "points": lambda d: PointGroups(embed_dim=d, num_groups=4, group_size=4),
    "mri": lambda d: VolumePatches(embed_dim=d, sequences=("t1", "t2"), volume_size=4, patch_size=2),
}
SHAPES = {"audio": (8, 8), "image": (3, 8, 8), "video": (3, 4, 8, 8), "points": (32, 3), "mri": (2, 4, 4, 4)}
BATCH = 2


def inputs(names) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return {m: torch.randn(BATCH, *SHAPES[m], generator=gen) for m in names}


@st.composite
def configs(draw, *, joint: bool):
    dim = draw(st.sampled_from([32, 64]))
    ddim = draw(st.sampled_from([16, 32]))
    extra = {}
    if not joint:
        extra = {
            "cls_token": draw(st.booleans()), "encoder_norm": draw(st.booleans()), "pooled_norm": draw(st.booleans()),
        }
    return MAEConfig(
        encoder_dim=dim, encoder_depth=draw(st.integers(1, 2)), encoder_heads=draw(st.sampled_from([1, 2, 4, 8])),
        decoder_dim=ddim, decoder_depth=draw(st.integers(1, 2)), decoder_heads=draw(st.sampled_from([1, 2, 4])),
        mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])), norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
        norm_pix_loss=draw(st.booleans()), **extra,
    )


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{k} differs after the round trip"
    assert state_digest(a) == state_digest(b)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every saved float tensor moved off its initial value (zeros, ones, running statistics
    too), so a weight the loader leaves at its initial value is noticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():  # shares storage with the module's tensors
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen))
                if t.dim() == 1:  # norm scales, running variances: kept positive
                    t.abs_()
    return model


def folder_is_clean(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])  # no .tmp left


@examples(1)
@given(config=configs(joint=False), modality=st.sampled_from(sorted(TOKENIZERS)), seed=st.integers(0, 2**31 - 1), window=st.booleans())
def test_masked_autoencoder_round_trip(config, modality, seed, window):
    if window and modality in ("audio", "image"):  # a token grid of rank 2: local decoder attention
        config = replace(config, decoder_window=(2, 2), decoder_shift=(1, 0))
    if modality == "points":
        config = replace(config, norm_pix_loss=False)  # point groups have no norm-pix targets
    torch.manual_seed(seed)
    model = perturbed(MaskedAutoencoder(TOKENIZERS[modality](config.encoder_dim), config), seed).eval()
    x = inputs([modality])[modality]
    masks = random_masking(BATCH, model.tokenizer.num_tokens, 0.5, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pretrained(model, Path(tmp) / "m", extra={"note": "é"})
        folder_is_clean(path)
        loaded, cfg = load_pretrained(path)
        assert isinstance(loaded, MaskedAutoencoder) and not loaded.training
        assert loaded.config == config and cfg["modality"] == modality and cfg["extra"] == {"note": "é"}
        same_state(model, loaded)
        with torch.no_grad():
            want, got = model(x, masks), loaded(x, masks)
            assert torch.equal(want.pred, got.pred) and torch.equal(want.loss, got.loss)
        encoder, _ = load_encoder(path, modality=modality)
        same_state(model.encoder, encoder)
        with torch.no_grad():
            assert torch.equal(encoder.pooled(x), model.encoder.pooled(x))
        # the encoder alone, saved and loaded
        alone = save_pretrained(model.encoder, Path(tmp) / "encoder")
        assert json.loads((alone / CONFIG_NAME).read_text())["parts"] == "encoder"
        again, _ = load_encoder(alone)
        assert isinstance(again, Encoder)
        same_state(model.encoder, again)
        with torch.no_grad():
            assert torch.equal(again(x), model.encoder(x))


@st.composite
def joint_cases(draw):
    config = draw(configs(joint=True))
    names = draw(st.lists(st.sampled_from(sorted(TOKENIZERS)), min_size=1, max_size=3, unique=True))  # in the model's order
    specific = draw(st.integers(0, config.encoder_depth))
    weights = {m: draw(st.floats(0.1, 2.0)) for m in names if draw(st.booleans())}
    norm_pix = {m: False if m == "points" else draw(st.booleans()) for m in names}
    return config, names, specific, weights, norm_pix


@examples(1)
@given(case=joint_cases(), seed=st.integers(0, 2**31 - 1))
def test_joint_model_round_trip(case, seed):
    config, names, specific, weights, norm_pix = case
    torch.manual_seed(seed)
    tokenizers = {m: TOKENIZERS[m](config.encoder_dim) for m in names}
    model = perturbed(MultiModalMAE(tokenizers, config, specific_depth=specific, loss_weights=weights, norm_pix=norm_pix), seed).eval()
    x = inputs(names)
    gen = torch.Generator().manual_seed(seed)
    masks = concat_masks([random_masking(BATCH, tokenizers[m].num_tokens, 0.5, generator=gen) for m in names])
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pretrained(model, Path(tmp) / "joint")
        folder_is_clean(path)
        loaded, _cfg = load_pretrained(path)
        assert isinstance(loaded, MultiModalMAE) and not loaded.training
        assert loaded.modalities == tuple(names) and loaded.specific_depth == specific and loaded.config == config
        assert loaded.loss_weights == model.loss_weights and loaded.norm_pix == model.norm_pix
        same_state(model, loaded)
        with torch.no_grad():
            want, got = model(Group(x, masks)), loaded(Group(x, masks))
        assert torch.equal(want.loss, got.loss)
        for m in names:
            assert torch.equal(want.outputs[0][m].pred, got.outputs[0][m].pred)
            assert torch.equal(want.stats[m], got.stats[m])
        for m in names:
            encoder, enc_cfg = load_encoder(path, modality=m)
            assert enc_cfg["modality"] == m
            reference = model.encoder_for(m).eval()
            same_state(reference, encoder)
            with torch.no_grad():
                assert torch.equal(encoder.pooled(x[m]), reference.pooled(x[m]))
