import re

import pytest
import torch

from modalmae.checkpoint import load_encoder, load_pretrained, save_pretrained
from modalmae.masking import random_masking
from modalmae.model import MaskedAutoencoder, mae_base, mae_tiny
from modalmae.model.transformer import window_attention_mask
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.positions import grid_coordinates
from modalmae.tokenizers.spectrogram import SpectrogramPatches


def tiny_model(**overrides):
    cfg = mae_tiny(encoder_dim=48, encoder_heads=3, encoder_depth=2, decoder_dim=32, decoder_heads=2, **overrides)
    return MaskedAutoencoder(SpectrogramPatches(embed_dim=48, num_frames=128, num_mel_bins=64), cfg)


def test_patchify_round_trip_and_time_major_order():
    tok = SpectrogramPatches(embed_dim=48, num_frames=1024, num_mel_bins=128)
    spec = torch.randn(2, 1024, 128)
    patches = tok.patchify(spec)
    assert patches.shape == (2, 512, 256) and tok.grid == (64, 8)
    assert torch.equal(tok.unpatchify(patches), spec)
    # token 1 is the second frequency patch of the first 16 frames (Audio-MAE's order)
    assert torch.equal(patches[0, 1], spec[0, :16, 16:32].reshape(-1))
    assert torch.equal(patches[0, 8], spec[0, 16:32, :16].reshape(-1))
    with pytest.raises(ValueError, match="expected spectrograms"):
        tok.patchify(torch.randn(1, 1000, 128))


def test_forward_shapes_and_loss_on_masked_tokens():
    model = tiny_model()
    x = torch.randn(3, 128, 64)
    masks = random_masking(3, model.tokenizer.num_tokens, 0.75, generator=torch.Generator().manual_seed(0))
    out = model(x, masks)
    assert out.pred.shape == (3, 32, 256)
    assert torch.equal(out.loss_mask, masks.mask)
    assert (out.pred[masks.mask == 0] == 0).all()  # nothing predicted at visible positions
    out.loss.backward()
    assert model.decoder.mask_token.grad is not None and model.decoder.mask_token.grad.abs().sum() > 0


def test_encoder_sees_only_visible_tokens():
    model = tiny_model().eval()
    x = torch.randn(1, 128, 64)
    masks = random_masking(1, 32, 0.75, generator=torch.Generator().manual_seed(3))
    patches = model.tokenizer.patchify(x)
    tampered = patches.clone()
    tampered[masks.mask.bool()] += 5.0  # change only masked patches
    x2 = model.tokenizer.unpatchify(tampered)
    enc = lambda v: model.encoder.encode(model.tokenizer(v), masks.ids_keep)  # noqa: E731
    assert torch.allclose(enc(x), enc(x2))
    assert not torch.allclose(model(x, masks).target, model(x2, masks).target)


def test_predicting_a_subset_restricts_the_loss():
    model = tiny_model()
    masks = random_masking(2, 32, 0.75, generator=torch.Generator().manual_seed(0))
    subset = masks.ids_masked[:, :5]
    out = model(torch.randn(2, 128, 64), masks.with_decoder_masking(subset))
    assert (out.loss_mask.sum(dim=1) == 5).all()
    assert torch.equal(torch.gather(out.loss_mask, 1, subset), torch.ones(2, 5))


def test_window_mask_groups_like_shifted_windows():
    coords = grid_coordinates((8, 4))[None]  # [1, 32, 2]
    plain = window_attention_mask(coords, window=(4, 4), shift=(0, 0))[0, 0]
    shifted = window_attention_mask(coords, window=(4, 4), shift=(2, 0))[0, 0]
    row = coords[0, :, 0]
    assert torch.equal(plain, (row[:, None] // 4) == (row[None, :] // 4))
    # shift 2: rows {0,1}, {2..5}, {6,7}
    group = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])[row]
    assert torch.equal(shifted, group[:, None] == group[None, :])


def test_local_attention_decoder_is_local():
    # one decoder block: a prediction depends only on tokens of its own 4x4 window
    model = tiny_model(decoder_depth=1, decoder_window=(4, 4), decoder_shift=(2, 0)).eval()
    x = torch.randn(1, 128, 64)  # grid 8 x 4 tokens
    masks = random_masking(1, 32, 0.5, generator=torch.Generator().manual_seed(5))
    coords = grid_coordinates(model.tokenizer.grid)
    target = masks.ids_masked[0, 0].item()
    window = coords[:, 0] // 4 == coords[target, 0] // 4
    far = (~window) & (masks.mask[0] == 0)  # visible tokens outside the target's window
    assert far.any()
    # Change the encoder's view of far tokens by tampering the latent directly.
    tokens = model.tokenizer(x)
    latent = model.encoder.encode(tokens, masks.ids_keep)
    far_in_keep = far[masks.ids_keep[0]]
    latent2 = latent.clone()
    latent2[0, far_in_keep] += 3.0
    run = lambda lat: model.decoder(lat, tokens, ids_keep=masks.ids_keep, ids_predict=masks.ids_masked, num_prefix=0)  # noqa: E731
    a, b = run(latent), run(latent2)
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-6)
    assert not torch.allclose(a, b)


def test_local_attention_alternates_plain_and_shifted_windows_block_by_block():
    """Swin's order over any depth: plain, shifted, plain, ... (three blocks: the third plain)."""
    model = tiny_model(decoder_depth=3, decoder_window=(4, 4), decoder_shift=(2, 0)).eval()
    ids = torch.arange(32)[None]  # every token of the 8 x 4 grid
    plain, shifted, third = model.decoder._window_masks(ids, 0)
    assert torch.equal(third, plain) and not torch.equal(plain, shifted)
    coords = grid_coordinates(model.tokenizer.grid)
    same_window = (coords[:, None, 0] // 4 == coords[None, :, 0] // 4) & (coords[:, None, 1] // 4 == coords[None, :, 1] // 4)
    assert torch.equal(plain[0, 0], same_window)
    # A prefix token (CLS) stands outside every window, plain or shifted: it attends to itself
    # alone, no grid token attends to it, and the grid tokens keep their windows.
    for with_cls, without in zip(model.decoder._window_masks(ids, 1)[:2], (plain, shifted)):
        assert torch.equal(with_cls[0, 0, 0], torch.arange(33) == 0) and not with_cls[0, 0, 1:, 0].any()
        assert torch.equal(with_cls[0, 0, 1:, 1:], without[0, 0])


def test_cls_token_and_pooling():
    model = tiny_model(cls_token=True).eval()
    x = torch.randn(2, 128, 64)
    feats = model.encoder(x)
    assert feats.shape == (2, 33, 48)
    assert torch.allclose(model.encoder.pooled(x, pool="cls"), feats[:, 0])
    assert torch.allclose(model.encoder.pooled(x), feats[:, 1:].mean(1))
    masks = random_masking(2, 32, 0.8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(x, masks).loss)
    assert torch.equal(model.encoder.pool(feats), feats[:, 1:].mean(1))  # mean by default
    with pytest.raises(ValueError, match="^unknown pooling 'max': mean or cls$"):
        model.encoder.pool(feats, pool="max")
    with pytest.raises(ValueError, match="^this encoder has no CLS token; use pool='mean'$"):
        tiny_model().encoder.pool(feats[:, 1:], pool="cls")


def test_a_cls_token_model_trains_on_a_ratio_per_sample():
    """Padded masks (one ratio per sample): the decoder's key mask covers the CLS token too."""
    model = tiny_model(cls_token=True)
    masks = random_masking(2, 32, torch.tensor([0.5, 0.8]), generator=torch.Generator().manual_seed(0))
    out = model(torch.randn(2, 128, 64), masks)
    assert masks.padded and torch.isfinite(out.loss)
    out.loss.backward()


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(decoder_window=(4, 4)).eval()
    save_pretrained(model, tmp_path / "m", extra={"frontend": {"num_frames": 128}})
    loaded, config = load_pretrained(tmp_path / "m")
    assert config["extra"]["frontend"]["num_frames"] == 128
    x = torch.randn(2, 128, 64)
    masks = random_masking(2, 32, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x, masks).pred, loaded(x, masks).pred)
    encoder, _ = load_encoder(tmp_path / "m")
    assert torch.equal(encoder.pooled(x), model.encoder.pooled(x))
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "m").iterdir())


def test_base_preset_is_vit_b():
    cfg = mae_base()
    assert (cfg.encoder_dim, cfg.encoder_depth, cfg.encoder_heads, cfg.decoder_dim) == (768, 12, 12, 512)
    with pytest.raises(ValueError, match="embed_dim"):
        MaskedAutoencoder(SpectrogramPatches(embed_dim=192), cfg)


def test_local_decoder_windows_need_a_grid_of_their_rank():
    """Audio-MAE's local decoder attention: a window per grid axis. Point groups have no grid, a
    spectrogram's is 2-D: either refusal names the window."""
    points = PointGroups(embed_dim=48, num_groups=8, group_size=4)
    for tokenizer, window in ((points, (2, 2)), (SpectrogramPatches(embed_dim=48, num_frames=128, num_mel_bins=64), (2, 2, 2))):
        cfg = mae_tiny(encoder_dim=48, encoder_heads=3, decoder_dim=32, decoder_heads=2, decoder_window=window)
        with pytest.raises(ValueError, match="^" + re.escape(f"decoder_window {window} needs a token grid of the same rank") + "$"):
            MaskedAutoencoder(tokenizer, cfg)


@pytest.mark.parametrize("window,shift", [((4, 4), (2, 2)), ((3, 5), (1, 2))])
def test_local_decoder_shifts_by_half_a_window_and_saves_no_grid(window, shift):
    """Swin's shifted windows move by window // 2 on each axis unless told otherwise; the grid
    coordinates are rebuilt from the tokenizer, not saved with the weights."""
    decoder = tiny_model(decoder_window=window).decoder
    assert decoder.shift == shift
    assert tiny_model(decoder_window=window, decoder_shift=(1, 1)).decoder.shift == (1, 1)
    assert not [k for k in decoder.state_dict() if "grid" in k]


def test_decoder_mask_token_starts_like_maes():
    """MAE initialises the mask token from N(0, 0.02^2) (1024 draws: the sample std is within
    0.002 of it); Point-MAE's tokenizer adds positions before every decoder block too."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=48, num_frames=128, num_mel_bins=64), mae_tiny(
        encoder_dim=48, encoder_heads=3, decoder_dim=1024, decoder_heads=8, decoder_depth=1))
    assert abs(model.decoder.mask_token.std().item() - 0.02) < 0.002
    points = MaskedAutoencoder(PointGroups(embed_dim=48, num_groups=8, group_size=4), mae_tiny(
        encoder_dim=48, encoder_heads=3, decoder_dim=32, decoder_heads=2, norm_pix_loss=False))
    assert points.decoder.pos_every_block is True and model.decoder.pos_every_block is False


def test_positions_before_every_block_reach_a_cls_token_encoder():
    """Point-MAE adds the group centres' positions before every block; with a CLS token (which
    has none) they still do: other centres, other features."""
    torch.manual_seed(0)
    tok = PointGroups(embed_dim=48, num_groups=8, group_size=4)
    model = MaskedAutoencoder(tok, mae_tiny(encoder_dim=48, encoder_heads=3, decoder_dim=32, decoder_heads=2, norm_pix_loss=False, cls_token=True)).eval()
    x, pos = torch.randn(2, 8, 48), torch.randn(2, 8, 48)
    assert not torch.allclose(model.encoder._encode(x, pos, None), model.encoder._encode(x, pos + 1, None))


def test_encoder_cls_token_and_pooled_norm_follow_the_config():
    """MAE: the CLS token starts from N(0, 0.02^2) (1024 draws: the sample std within 0.002);
    the pooled features' norm takes pooled_norm_eps, or the blocks' norm_eps when unset."""
    torch.manual_seed(0)
    cfg = dict(encoder_dim=1024, encoder_heads=8, encoder_depth=1, decoder_dim=32, decoder_heads=2, cls_token=True, pooled_norm=True)
    encoder = MaskedAutoencoder(SpectrogramPatches(embed_dim=1024, num_frames=32, num_mel_bins=16), mae_tiny(**cfg, norm_eps=1e-6)).encoder
    assert abs(encoder.cls_token.std().item() - 0.02) < 0.002
    assert encoder.fc_norm.eps == 1e-6
    encoder = MaskedAutoencoder(SpectrogramPatches(embed_dim=1024, num_frames=32, num_mel_bins=16), mae_tiny(**cfg, pooled_norm_eps=1e-4)).encoder
    assert encoder.fc_norm.eps == 1e-4


def test_grid_coordinates_are_row_major():
    assert grid_coordinates((2, 3)).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
