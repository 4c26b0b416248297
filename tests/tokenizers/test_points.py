"""Point-MAE grouping, embedding and Chamfer loss; the CPU fast path gives identical groups.

Grouping is defined exactly (the docstring of modalmae/tokenizers/points.py): float32 distance
(dx*dx + dy*dy) + dz*dz, FPS from point 0 keeping the lowest index among equally far points,
kNN by (distance, index). ``definition_*`` below spell it out in plain numpy, slowly, and both
paths are held to it on real scans and on clouds built to tie: integer grids, duplicates, all
points equal, as many centres as points, +0.0 and -0.0.
"""

import itertools
import re
import sys

import numpy as np
import plyfile
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from modalmae.data.points import PointDecoder, normalize, scale_and_translate
from modalmae.masking import block_masking, random_masking
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.tokenizers.points import (
    PointGroups,
    chamfer,
    fps_fast,
    fps_torch,
    group_indices,
    group_points,
    knn_fast,
    knn_torch,
)


def distance32(points, centre):
    """The definition's distance, one float32 operation at a time: [N, 3], [3] -> [N]."""
    d = (points - centre).astype(np.float32)
    return (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]


def definition_fps(points, num, start=0):
    chosen, nearest = [start], np.full(len(points), np.inf, np.float32)
    for _ in range(num - 1):
        nearest = np.minimum(nearest, distance32(points, points[chosen[-1]]))
        chosen.append(int(np.flatnonzero(nearest == nearest.max())[0]))  # the lowest index of the farthest
    return np.array(chosen)


def definition_knn(points, centre_idx, k):
    out = []
    for c in centre_idx:
        d = distance32(points, points[c])
        out.append(sorted(range(len(points)), key=lambda i: (d[i], i))[:k])
    return np.array(out, dtype=np.int64).reshape(len(centre_idx), k)


def cloud(n=2048, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32))


def scan(name):
    if name == "kitten":
        return np.loadtxt(DATA / "points" / "kitten.xyz", dtype=np.float32)[:, :3]
    vertex = plyfile.PlyData.read(str(DATA / "points" / "bunny_zipper.ply"))["vertex"]
    return np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)


def loader_cloud(name, n, seed):
    """A real scan the loader's way: n of its points (with replacement, so with duplicates,
    when it has fewer), in the unit sphere, scaled and shifted."""
    rng = np.random.default_rng(seed)
    base = scan(name)
    pick = base[rng.choice(len(base), n, replace=len(base) < n)]
    return scale_and_translate(normalize(pick), rng).astype(np.float32)


def adversarial_clouds():
    """(name, float32 [N, 3]) clouds full of exact ties."""
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    yield "integer grid", grid.astype(np.float32)
    yield "shuffled grid", grid[rng.permutation(len(grid))].astype(np.float32)
    yield "grid with duplicates", grid[rng.integers(len(grid), size=300)].astype(np.float32)
    yield "cube corners", np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)] * 3, np.float32)
    yield "all equal", np.ones((40, 3), np.float32)
    yield "two places", np.repeat(np.eye(3, dtype=np.float32)[:2], 25, axis=0)[rng.permutation(50)]
    signed_zeros = np.zeros((12, 3), np.float32)
    signed_zeros[::2] = -0.0
    signed_zeros[5:] += np.float32(0.5)
    yield "+0.0 and -0.0", signed_zeros
    blobs = np.repeat(rng.normal(size=(30, 3)), 4, axis=0)  # every point four times
    yield "duplicated blobs", blobs[rng.permutation(len(blobs))].astype(np.float32)
    yield "quantised normal", (np.round(rng.normal(size=(400, 3)) * 3) / 3).astype(np.float32)
    huge = np.zeros((6, 3), np.float32)  # squared distances up to 2.9e38, near float32's largest
    huge[:, 0] = [0, 1.0e19, 1.4e19, 1.7e19, 1.2e19, 0.5e19]
    yield "huge coordinates", huge


def test_distance_is_the_documented_float32_formula():
    # fps_torch relies on pow(2).sum(-1) adding the three squares in order (dx² + dy²) + dz²
    rng = np.random.default_rng(0)
    points = (rng.normal(size=(100_000, 3)) * 10.0 ** rng.uniform(-4, 4, size=(100_000, 1))).astype(np.float32)
    centre = points[123]
    via_torch = (torch.from_numpy(points) - torch.from_numpy(centre)).pow(2).sum(-1).numpy()
    assert np.array_equal(via_torch, distance32(points, centre))
    batched = (torch.from_numpy(points).view(4, -1, 3) - torch.from_numpy(centre)).pow(2).sum(-1).reshape(-1).numpy()
    assert np.array_equal(batched, distance32(points, centre))


def test_fps_matches_the_definition():
    pts = cloud(500)
    assert fps_torch(pts[None], 32)[0].tolist() == definition_fps(pts.numpy(), 32).tolist()


def test_torch_path_follows_the_definition_on_ties():
    for name, points in adversarial_clouds():
        n = len(points)
        for num, k in ((min(n, 16), min(n, 7)), (n, n)):
            centres = definition_fps(points, num)
            got = fps_torch(torch.from_numpy(points)[None], num)[0].numpy()
            assert np.array_equal(got, centres), name
            members = knn_torch(torch.from_numpy(points)[None], torch.from_numpy(points[centres])[None], k)[0].numpy()
            assert np.array_equal(members, definition_knn(points, centres, k)), name


def test_knn_is_nearest_first():
    pts, centres = cloud(300)[None], cloud(5, seed=1)[None]
    idx = knn_torch(pts, centres, 8)
    d = torch.cdist(centres, pts)
    assert torch.allclose(torch.gather(d, 2, idx), d.sort(dim=-1).values[..., :8])


def test_fast_path_is_identical_on_ties_and_duplicates():
    needs_fast_path()
    for name, points in adversarial_clouds():
        n = len(points)
        for num, k in ((min(n, 16), min(n, 7)), (n, n), (1, 1)):
            centres = definition_fps(points, num)
            assert np.array_equal(fps_fast(points, num), centres), name
            assert np.array_equal(knn_fast(points, points[centres], k), definition_knn(points, centres, k)), name
            pts = torch.from_numpy(points)
            assert torch.equal(group_indices(pts, num_groups=num, group_size=k, fast=True), group_indices(pts, num_groups=num, group_size=k))


def shell_81():
    """The integer points at squared distance exactly 81 from the origin, sorted: (1,4,8),
    (4,4,7) and (0,0,9) in every order and with every sign."""
    return sorted({
        tuple(s * v for s, v in zip(signs, order))
        for base in ((1, 4, 8), (4, 4, 7), (0, 0, 9))
        for order in itertools.permutations(base)
        for signs in itertools.product((1, -1), repeat=3)
    })


def test_fast_knn_keeps_the_lowest_indices_among_many_equally_near():
    """The fast kNN ranks only points within a bound on the k-th distance; every point at that
    distance must still be seen, so that the lowest indices win the ties."""
    needs_fast_path()
    rng = np.random.default_rng(3)
    # the 78-point shell, shuffled among others: more equally near points than k
    shell = shell_81()
    assert len(shell) == 78
    points = np.concatenate([np.zeros((1, 3)), np.array(shell), rng.uniform(-30, 30, size=(2000, 3))])
    points = points[np.r_[0, 1 + rng.permutation(len(points) - 1)]].astype(np.float32)
    points[-100:] = points[-200]  # and a hundred copies of one point
    centres = np.array([0, len(points) - 200, len(points) - 1, 7])
    assert np.array_equal(knn_fast(points, points[centres], 32), definition_knn(points, centres, 32))
    for scale in (1e-21, 1e-22):  # squared distances below float32's normal range: subnormals and zeros
        tiny = (rng.normal(size=(1500, 3)) * scale).astype(np.float32)
        centres = np.arange(0, 1500, 150)
        assert np.array_equal(knn_fast(tiny, tiny[centres], 32), definition_knn(tiny, centres, 32))


def test_fast_knn_with_more_ties_at_the_bound_than_it_ranks_by_counting():
    """Hundreds of points equally near a centre (four copies of the 78-point shell at squared
    distance 81) and ten nearer ones among them: every one is within the bound, more than
    ``RANK_MAX`` per neighbour, so they are ranked by insertion, nearer ones arriving late."""
    needs_fast_path()
    from modalmae.tokenizers.point_kernels import RANK_MAX

    rng = np.random.default_rng(4)
    near = rng.integers(-4, 5, size=(10, 3))  # squared distance at most 48
    points = np.concatenate([np.zeros((1, 3)), np.array(shell_81() * 4), near, rng.uniform(20, 30, size=(500, 3))])
    points = points[np.r_[0, 1 + rng.permutation(len(points) - 1)]].astype(np.float32)
    assert (distance32(points, points[0]) <= 81).sum() > RANK_MAX * 32
    assert np.array_equal(knn_fast(points, points[:1], 32), definition_knn(points, [0], 32))


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(0, 2**62), min_size=1, max_size=300, unique=True), data=st.data())
def test_fast_knn_rankings_by_counting_and_by_insertion_both_give_the_smallest_in_order(keys, data):
    """The two ways the kernels order a row's candidates, on their own: the k smallest of any
    distinct keys, ascending."""
    needs_fast_path()
    from modalmae.tokenizers import point_kernels

    keys = np.array(keys, dtype=np.int64)
    k = data.draw(st.integers(1, len(keys)))
    for rank in (point_kernels._rank, point_kernels._insert):
        out = np.full(k, -1, dtype=np.int64)
        rank(keys, k, out)
        assert out.tolist() == sorted(keys.tolist())[:k], rank.__name__


@pytest.mark.parametrize("n", [8, 9, 15, 21, 23])
def test_fast_knn_finds_neighbours_past_the_last_whole_row(n):
    """The bound on the k-th distance comes from whole rows of k points; the points after them
    (n mod k) are ranked too: here the nearest points are the last ones."""
    needs_fast_path()
    k = 8
    points = np.zeros((n, 3), np.float32)
    points[:, 0] = np.arange(n, 0, -1)  # x = n, n - 1, ..., 1: the nearer to the origin, the later
    got = knn_fast(points, np.zeros((1, 3), np.float32), k)
    assert got.tolist() == [list(range(n - 1, n - 1 - k, -1))]


@settings(max_examples=150, deadline=None)
@given(
    coords=st.lists(st.tuples(*[st.integers(-2, 2)] * 3), min_size=1, max_size=60),
    data=st.data(),
)
def test_fast_grouping_is_the_definition_on_any_small_integer_cloud(coords, data):
    """Integer coordinates in [-2, 2]: exact distances and ties at every step."""
    needs_fast_path()
    points = np.array(coords, np.float32)
    n = len(points)
    num, k = data.draw(st.integers(1, n)), data.draw(st.integers(1, n))
    centres = definition_fps(points, num)
    want = np.concatenate([centres[:, None], definition_knn(points, centres, k)], axis=1)
    assert np.array_equal(group_indices(torch.from_numpy(points), num_groups=num, group_size=k, fast=True).numpy(), want)


@pytest.mark.parametrize(("name", "n", "groups"), [("kitten", 1024, 64), ("bunny", 2048, 64), ("kitten", 4096, 512)])
def test_fast_path_is_identical_on_real_scans(name, n, groups):
    needs_fast_path()
    pts = torch.from_numpy(np.stack([loader_cloud(name, n, seed) for seed in range(2)]))  # bunny: duplicates
    slow = group_indices(pts, num_groups=groups, group_size=32)
    assert torch.equal(group_indices(pts, num_groups=groups, group_size=32, fast=True), slow)
    assert slow[0, :5, 0].tolist() == definition_fps(pts[0].numpy(), 5).tolist()
    grouped = pts[torch.arange(2)[:, None, None], slow]  # what the torch path packs from them
    packed = torch.cat([grouped[:, :, :1], grouped[:, :, 1:] - grouped[:, :, :1]], dim=2)
    assert torch.equal(group_points(pts, num_groups=groups, group_size=32, fast=True), packed)
    assert torch.equal(group_points(pts[0], num_groups=groups, group_size=32, fast=True), packed[0])  # the loader's form


def test_fast_path_without_numba_says_how_to_get_it(monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "numba", None)  # makes the import fail, as when not installed
        m.delitem(sys.modules, "modalmae.tokenizers.point_kernels", raising=False)
        with pytest.raises(ImportError, match=r"needs numba \(numba is missing\): pip install 'modalmae\[fast\]'"):
            group_points(cloud(256), num_groups=8, group_size=4, fast=True)
        with pytest.raises(ImportError, match=r"pip install 'modalmae\[fast\]'"):
            PointDecoder(num_points=256, num_groups=8, group_size=4, fast=True)
        assert group_points(cloud(256), num_groups=8, group_size=4).shape == (8, 5, 3)  # torch path unaffected
        assert PointDecoder(num_points=256, num_groups=8, group_size=4).fast is False


def test_fast_path_rejects_what_it_cannot_match():
    needs_fast_path()
    with pytest.raises(ValueError, match="float32"):
        group_points(cloud(64).double(), num_groups=8, group_size=4, fast=True)
    with pytest.raises(ValueError, match="cannot pick"):
        fps_fast(cloud(4).numpy(), 5)
    with pytest.raises(ValueError, match="cannot pick"):
        group_points(cloud(4), num_groups=5, group_size=2, fast=True)
    with pytest.raises(ValueError, match="neighbours"):
        knn_fast(cloud(4).numpy(), cloud(2).numpy(), 5)
    with pytest.raises(ValueError, match="neighbours"):
        group_points(cloud(4), num_groups=2, group_size=5, fast=True)
    for bad in (np.nan, np.inf):
        points = cloud(64)
        points[5, 1] = bad
        with pytest.raises(ValueError, match=r"^the fast path takes finite clouds: NaN or infinity found$"):
            group_points(points, num_groups=8, group_size=4, fast=True)
        with pytest.raises(ValueError, match=r"^the fast path takes finite centres: NaN or infinity found$"):
            knn_fast(cloud(8).numpy(), points.numpy(), 2)


def test_fast_fps_of_no_centres_is_empty_like_the_torch_path():
    """num=0 picks nothing: an empty int64 index array, as fps_torch gives."""
    needs_fast_path()
    points = cloud(16).numpy()
    got, want = fps_fast(points, 0), fps_torch(torch.from_numpy(points)[None], 0)[0].numpy()
    assert got.shape == want.shape == (0,) and got.dtype == want.dtype == np.int64


@pytest.mark.parametrize(
    ("points", "says"),
    [
        (np.zeros((8, 3), np.float64), r"^the fast path takes one cloud as float32 \[N, 3\], got float64 \[8, 3\]$"),
        (np.zeros((2, 8, 3), np.float32), r"^the fast path takes one cloud as float32 \[N, 3\], got float32 \[2, 8, 3\]$"),  # a batch
    ],
)
def test_fast_fps_takes_one_float32_cloud_and_says_what_it_got(points, says):
    needs_fast_path()
    with pytest.raises(ValueError, match=says):
        fps_fast(points, 2)


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


def test_chamfer_l1_averages_each_set_on_its_own():
    """Several sets at once give each set's own distance (L2 and L1), as computed one set at a time."""
    x, y = torch.randn(5, 16, 3, generator=torch.Generator().manual_seed(0)), torch.randn(5, 12, 3, generator=torch.Generator().manual_seed(1))
    for squared in (True, False):
        alone = torch.cat([chamfer(x[i : i + 1], y[i : i + 1], squared=squared) for i in range(5)])
        torch.testing.assert_close(chamfer(x, y, squared=squared), alone)
    near = torch.cdist(x, y)  # [5, 16, 12]
    torch.testing.assert_close(chamfer(x, y, squared=False), (near.min(2).values.mean(1) + near.min(1).values.mean(1)) / 2)


@pytest.mark.parametrize("loss", ["chamfer_l2", "chamfer_l1"])
def test_the_tokenizer_loss_is_the_chamfer_distance_it_names(loss):
    """Point-MAE's group loss per predicted group: CD-L2 (the default) or CD-L1, on the k x 3
    points each token's prediction and target flatten."""
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8, loss=loss)
    pred, target = torch.randn(2, 3, 24), torch.randn(2, 3, 24)
    expected = chamfer(pred.reshape(6, 8, 3), target.reshape(6, 8, 3), squared=loss == "chamfer_l2").view(2, 3)
    torch.testing.assert_close(tok.loss(pred, target), expected)
    assert PointGroups(embed_dim=48, num_groups=16, group_size=8).loss_name == "chamfer_l2"


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


def test_one_cloud_without_a_batch_axis_gives_its_groups_without_one():
    pts = cloud(256, seed=4)
    batched = group_indices(pts[None], num_groups=8, group_size=4)
    assert batched.shape == (1, 8, 1 + 4)  # each group: its centre, then its 4 points
    assert torch.equal(group_indices(pts, num_groups=8, group_size=4), batched[0])
    assert torch.equal(group_points(pts, num_groups=8, group_size=4), group_points(pts[None], num_groups=8, group_size=4)[0])


def test_defaults_are_point_maes():
    """Point-MAE's ShapeNet pretraining: 64 groups of 32 points, width 384, CD-L2."""
    assert PointGroups().config() == {"embed_dim": 384, "num_groups": 64, "group_size": 32, "loss": "chamfer_l2"}


def test_bad_options_and_inputs_are_refused_by_exact_message():
    with pytest.raises(ValueError, match="^unknown point loss 'emd': chamfer_l2 or chamfer_l1$"):
        PointGroups(loss="emd")
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8)
    with pytest.raises(ValueError, match=re.escape("packed groups must be [B, 16, 9, 3], got [2, 16, 8, 3]")):
        tok(torch.zeros(2, 16, 8, 3))
    for shape in [(2, 64, 2), (64, 3), (2, 64, 3, 1, 1)]:  # not xyz, no batch, too many axes
        with pytest.raises(ValueError, match=re.escape(f"expected point clouds [B, N, 3] or packed groups [B, G, 1 + k, 3], got {list(shape)}")):
            tok(torch.zeros(shape))


def test_point_mae_trains_on_chamfer_with_block_masking():
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8)
    model = MaskedAutoencoder(tok, mae_tiny(encoder_dim=48, encoder_heads=3, decoder_dim=48, decoder_heads=3, norm_pix_loss=False))
    x = group_points(torch.stack([cloud(512, seed=s) for s in range(2)]), num_groups=16, group_size=8)
    masks = block_masking(x[:, :, 0], 0.6, generator=torch.Generator().manual_seed(0))
    out = model(x, masks)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert model.decoder.positions.mlp[0].weight.grad.abs().sum() > 0  # decoder positions learn


def test_with_nothing_masked_the_loss_is_zero_not_an_error():
    """Every group visible (mask ratio 0, or a joint model's points all kept): no set to compare,
    so Chamfer gives an empty result and the loss is 0, with a gradient, as for the other tokenizers."""
    assert chamfer(torch.zeros(0, 8, 3), torch.zeros(0, 8, 3)).shape == (0,)
    tok = PointGroups(embed_dim=48, num_groups=16, group_size=8)
    model = MaskedAutoencoder(tok, mae_tiny(encoder_dim=48, encoder_heads=3, decoder_dim=48, decoder_heads=3, norm_pix_loss=False))
    x = group_points(torch.stack([cloud(512, seed=s) for s in range(2)]), num_groups=16, group_size=8)
    out = model(x, random_masking(2, 16, 0.0, generator=torch.Generator().manual_seed(0)))
    assert out.loss.item() == 0.0
    out.loss.backward()


def test_block_masking_masks_a_neighbourhood():
    centres = torch.rand(3, 64, 3)
    masks = block_masking(centres, 0.6, generator=torch.Generator().manual_seed(1))
    assert (masks.mask.sum(1) == round(0.6 * 64)).all()
    for b in range(3):
        masked, visible = centres[b][masks.mask[b].bool()], centres[b][~masks.mask[b].bool()]
        d_m = torch.cdist(centres[b][masks.ids_masked[b, :1]], masked).max()
        d_v = torch.cdist(centres[b][masks.ids_masked[b, :1]], visible).min()
        assert d_m <= d_v + 1e-6  # the masked block is a ball around its seed


def test_point_groups_refuse_norm_pix_targets():
    """Point-MAE's targets are coordinates under a Chamfer loss: a per-patch normalization has
    no meaning there, and a model built with norm_pix_loss on says so at its first step."""
    tok = PointGroups(embed_dim=192, num_groups=8, group_size=4)
    with pytest.raises(ValueError, match="^point groups have no norm-pix targets: train with norm_pix_loss off$"):
        tok.target_stats(torch.zeros(1, 8, 12))
    model = MaskedAutoencoder(tok, mae_tiny(norm_pix_loss=True))
    with pytest.raises(ValueError, match="norm_pix_loss off"):
        model(torch.randn(2, 64, 3), random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(0)))


def test_point_groups_unpatchify_needs_the_centres():
    """Groups are stored relative to their centres: unpatchify without them says what to pass,
    with them gives back the points where they were."""
    tok = PointGroups(embed_dim=192, num_groups=8, group_size=4)
    groups = torch.randn(2, 8, 12)
    with pytest.raises(ValueError, match=r"^point groups are stored relative to their centres: pass coords \(Tokens\.coords\)$"):
        tok.unpatchify(groups)
    centres = torch.randn(2, 8, 3)
    points = tok.unpatchify(groups, coords=centres)
    torch.testing.assert_close(points - centres[:, :, None], groups.view(2, 8, 4, 3))


def needs_fast_path():
    """The fast path needs the ``[fast]`` extra: numba."""
    pytest.importorskip("numba")


def test_fast_knn_gives_the_first_k_of_the_full_order_for_every_k():
    """A centre's k members are the first k of all points ranked by (distance, index), for any
    k: each k's answer is a prefix of the complete ranking (a stable argsort of the definition's
    float32 distances)."""
    needs_fast_path()
    points = np.random.default_rng(5).normal(size=(300, 3)).astype(np.float32)
    centres = np.array([0, 17, 299])
    ranking = np.stack([np.argsort(distance32(points, points[c]), kind="stable") for c in centres])
    for k in range(1, len(points) + 1):
        assert np.array_equal(knn_fast(points, points[centres], k), ranking[:, :k]), k


@pytest.mark.parametrize(
    ("points", "centres", "says"),
    [
        (np.float64, np.float32, "points as float32 [N, 3], got float64 [8, 3]"),
        (np.float32, np.float64, "centres as float32 [N, 3], got float64 [2, 3]"),
        (np.float16, np.float16, "points as float32 [N, 3], got float16 [8, 3]"),
    ],
)
def test_fast_knn_refuses_other_dtypes_and_says_which(points, centres, says):
    """The fast path matches the float32 definition only on float32 input: either array in
    another dtype is refused, and the message names the array and its dtype."""
    needs_fast_path()
    with pytest.raises(ValueError, match=f"^the fast path takes {re.escape(says)}$"):
        knn_fast(np.zeros((8, 3), points), np.zeros((2, 3), centres), 2)


def test_fast_path_names_a_batch_it_cannot_take():
    needs_fast_path()
    with pytest.raises(ValueError, match=r"^the fast path takes clouds as float32 \[B, N, 3\], got float32 \[2, 8, 4\]$"):
        group_points(torch.zeros(2, 8, 4), num_groups=2, group_size=2, fast=True)


def test_fast_path_takes_nothing_from_nothing():
    """No centres of an empty cloud, no neighbours of any centre: empty int64 results, not a
    refusal (and no kernel asked for a 0-wide selection)."""
    needs_fast_path()
    empty, points = np.zeros((0, 3), np.float32), cloud(32).numpy()
    got = fps_fast(empty, 0)
    assert got.shape == (0,) and got.dtype == np.int64
    for cloud_, centres in ((empty, points[:3]), (points, points[:3])):
        got = knn_fast(cloud_, centres, 0)
        assert got.shape == (3, 0) and got.dtype == np.int64
