"""Point-MAE grouping, embedding and Chamfer loss; the CPU fast paths give the same groups."""

import numpy as np
import pytest
import torch

from modalmae.masking import block_masking
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.tokenizers.points import chamfer
from modalmae.tokenizers.points import PointGroups, fps_torch, group_points, knn_torch


def brute_fps(points, num):
    chosen = [0]
    d = np.full(len(points), np.inf)
    for _ in range(num - 1):
        d = np.minimum(d, ((points - points[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(d.argmax()))
    return chosen


def cloud(n=2048, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32))


def test_fps_matches_the_definition():
    pts = cloud(500)
    assert fps_torch(pts[None], 32)[0].tolist() == brute_fps(pts.numpy().astype(np.float64), 32)


def test_knn_is_nearest_first():
    pts, centres = cloud(300)[None], cloud(5, seed=1)[None]
    idx = knn_torch(pts, centres, 8)
    d = torch.cdist(centres, pts)
    assert torch.allclose(torch.gather(d, 2, idx), d.sort(dim=-1).values[..., :8])


def test_fast_paths_give_the_same_groups():
    pytest.importorskip("fpsample")
    pytest.importorskip("scipy")
    pts = torch.stack([cloud(4096, seed=s) for s in range(2)])
    slow = group_points(pts, num_groups=64, group_size=32)
    fast = group_points(pts, num_groups=64, group_size=32, fast=True)
    assert torch.equal(slow[:, :, 0], fast[:, :, 0])  # same centres, same order
    # same members per group (order among equidistant points may differ)
    key = lambda g: g[:, :, 1:].round(decimals=5).sort(dim=2).values  # noqa: E731
    assert torch.allclose(key(slow), key(fast), atol=1e-5)


def test_groups_are_relative_to_their_centre_and_nearest():
    pts = cloud(1000)
    packed = group_points(pts, num_groups=16, group_size=8)
    assert packed.shape == (16, 9, 3)
    absolute = packed[:, 1:] + packed[:, :1]
    assert torch.allclose(absolute[:, 0], packed[:, 0], atol=1e-6)  # each centre is its own nearest
    radius = (packed[:, 1:]).norm(dim=-1).max(dim=1).values  # [G]
    d = torch.cdist(packed[:, 0], pts)  # no other point is strictly closer than the farthest member
    assert ((d < radius[:, None] - 1e-5).sum(1) <= 8).all()


def test_chamfer_values():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [3, 0, 0]]])
    # a->b: 0 and 1 (squared 0, 1); b->a: 0 and 2 (squared 0, 4)
    assert torch.allclose(chamfer(a, b), torch.tensor([0.5 + 2.0]))
    assert torch.allclose(chamfer(a, b, squared=False), torch.tensor([(0.5 + 1.0) / 2]))
    x, y = torch.randn(50, 32, 3), torch.randn(50, 32, 3)
    assert torch.allclose(chamfer(x, y, chunk_elements=2048), chamfer(x, y), atol=1e-6)  # chunking changes nothing
    assert torch.allclose(chamfer(x, x), torch.zeros(50))


def test_tokenizer_accepts_raw_and_grouped_clouds_and_reconstructs():
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8).eval()
    pts = torch.stack([cloud(512, seed=s) for s in range(2)])
    raw, packed = tok(pts), tok(group_points(pts, num_groups=16, group_size=8))
    assert torch.allclose(raw.embeddings, packed.embeddings, atol=1e-5)
    assert raw.embeddings.shape == (2, 16, 48) and raw.positions.shape == (2, 16, 48) and raw.targets.shape == (2, 16, 24)
    absolute = tok.unpatchify(raw.targets, raw.coords)
    # every reconstructed point is a point of the input cloud
    exact = torch.cdist(absolute.reshape(2, -1, 3), pts, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(dim=-1).values.max() < 1e-5
    with pytest.raises(ValueError, match="packed groups"):
        tok(torch.zeros(2, 15, 9, 3))


def test_point_mae_trains_on_chamfer_with_block_masking():
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8)
    model = MaskedAutoencoder(tok, mae_tiny(encoder_dim=48, encoder_heads=3, decoder_dim=48, decoder_heads=3, norm_pix_loss=False))
    x = group_points(torch.stack([cloud(512, seed=s) for s in range(2)]), num_groups=16, group_size=8)
    masks = block_masking(x[:, :, 0], 0.6, generator=torch.Generator().manual_seed(0))
    out = model(x, masks)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert model.decoder.positions.mlp[0].weight.grad.abs().sum() > 0  # decoder positions learn


def test_block_masking_masks_a_neighbourhood():
    centres = torch.rand(3, 64, 3)
    masks = block_masking(centres, 0.6, generator=torch.Generator().manual_seed(1))
    assert (masks.mask.sum(1) == round(0.6 * 64)).all()
    for b in range(3):
        masked, visible = centres[b][masks.mask[b].bool()], centres[b][~masks.mask[b].bool()]
        d_m = torch.cdist(centres[b][masks.ids_masked[b, :1]], masked).max()
        d_v = torch.cdist(centres[b][masks.ids_masked[b, :1]], visible).min()
        assert d_m <= d_v + 1e-6  # the masked block is a ball around its seed
