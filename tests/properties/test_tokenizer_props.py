"""Tokenizer round trips over generated shapes: ``unpatchify(patchify(x))`` gives ``x`` back
(VideoTubes: in pixel space), patches are ``[B, num_tokens, patch_dim]``, every token is the
block of the input its index names, and ``tokens_at`` gives the same tokens at any ids."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from modalmae.tokenizers import (
    ImagePatches,
    PointGroups,
    SpectrogramPatches,
    VideoTubes,
    VolumePatches,
    group_points,
)
from modalmae.tokenizers.base import gather_tokens

from ._support import examples

seeds = st.integers(0, 2**31 - 1)
small = st.integers(1, 3)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_tokens(tokenizer, x, patches, batch: int) -> None:
    assert patches.shape == (batch, tokenizer.num_tokens, tokenizer.patch_dim)
    tokens = tokenizer(x)
    assert tokens.embeddings.shape == (batch, tokenizer.num_tokens, tokenizer.embed_dim)
    assert tokens.positions.shape[1:] == (tokenizer.num_tokens, tokenizer.embed_dim)
    assert torch.equal(tokens.targets, patches)
    # tokens_at: the full tokenization gathered at ids in any order, repeats included
    ids = torch.randint(0, tokenizer.num_tokens, (batch, 5), generator=gen(tokenizer.num_tokens))
    masked = tokenizer.tokens_at(x, ids[:, :2], ids[:, 2:])
    torch.testing.assert_close(masked.embeddings, gather_tokens(tokens.embeddings, ids[:, :2]), atol=1e-5, rtol=1e-5)
    assert torch.equal(masked.targets, gather_tokens(patches, ids[:, 2:]))


@examples(3)
@given(batch=small, grid=st.tuples(small, small), patch=st.tuples(st.integers(1, 5), st.integers(1, 5)), seed=seeds, channel=st.booleans())
def test_spectrogram_patches_round_trip(batch, grid, patch, seed, channel):
    (gt, gf), (pt, pf) = grid, patch
    tok = SpectrogramPatches(embed_dim=8, num_frames=gt * pt, num_mel_bins=gf * pf, patch_size=patch)
    assert tok.num_tokens == gt * gf and tok.grid == grid
    spec = torch.randn(batch, gt * pt, gf * pf, generator=gen(seed))
    patches = tok.patchify(spec[:, None] if channel else spec)  # [B, 1, T, F] is accepted too
    check_tokens(tok, spec, patches, batch)
    assert torch.equal(tok.unpatchify(patches), spec)
    # token i is the (time-major) block i // gf, i % gf
    i = int(torch.randint(0, gt * gf, (1,), generator=gen(seed)))
    r, c = divmod(i, gf)
    assert torch.equal(patches[:, i], spec[:, r * pt : (r + 1) * pt, c * pf : (c + 1) * pf].flatten(1))


@examples(3)
@given(batch=small, grid=st.tuples(small, small), patch=st.integers(1, 4), channels=st.integers(1, 4), seed=seeds)
def test_image_patches_round_trip(batch, grid, patch, channels, seed):
    h, w = grid[0] * patch, grid[1] * patch
    tok = ImagePatches(embed_dim=8, image_size=(h, w), patch_size=patch, in_channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    assert tok.num_tokens == grid[0] * grid[1] and tok.grid == grid
    images = torch.randn(batch, channels, h, w, generator=gen(seed))
    patches = tok.patchify(images)
    check_tokens(tok, images, patches, batch)
    assert torch.equal(tok.unpatchify(patches), images)
    r, c = divmod(int(torch.randint(0, tok.num_tokens, (1,), generator=gen(seed))), grid[1])
    block = images[:, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
    assert torch.equal(patches[:, r * grid[1] + c], block.permute(0, 2, 3, 1).flatten(1))  # (row, column, channel)


@examples(3)
@given(
    batch=small, grid=st.tuples(small, small, small), tubelet=st.integers(1, 3), patch=st.integers(1, 4), channels=st.integers(1, 3),
    seed=seeds, identity=st.booleans(),
)
def test_video_tubes_round_trip_in_pixel_space(batch, grid, tubelet, patch, channels, seed, identity):
    t, h, w = grid[0] * tubelet, grid[1] * patch, grid[2] * patch
    mean, std = ((0.0,) * channels, (1.0,) * channels) if identity else ((0.4, 0.5, 0.6)[:channels], (0.2, 0.3, 0.25)[:channels])
    tok = VideoTubes(embed_dim=8, num_frames=t, image_size=(h, w), tubelet_size=tubelet, patch_size=patch, in_channels=channels, mean=mean, std=std)
    assert tok.num_tokens == grid[0] * grid[1] * grid[2] and tok.grid == grid
    video = torch.randn(batch, channels, t, h, w, generator=gen(seed))
    patches = tok.patchify(video)
    check_tokens(tok, video, patches, batch)
    pixels = video * torch.tensor(std).view(1, -1, 1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1, 1)
    back = tok.unpatchify(patches)
    if identity:
        assert torch.equal(back, video)
    assert torch.allclose(back, pixels, atol=1e-6)


@examples(3)
@given(batch=small, grid=st.tuples(small, small, small), patch=st.integers(1, 3), sequences=st.integers(1, 3), seed=seeds, as_dict=st.booleans())
def test_volume_patches_round_trip(batch, grid, patch, sequences, seed, as_dict):
    size = tuple(g * patch for g in grid)
    names = [f"seq{i}" for i in range(sequences)]
    tok = VolumePatches(embed_dim=12, sequences=names, volume_size=size, patch_size=patch)
    per_sequence = grid[0] * grid[1] * grid[2]
    assert tok.num_tokens == sequences * per_sequence and tok.tokens_per_sequence == per_sequence
    volume = torch.randn(batch, sequences, *size, generator=gen(seed))
    x = {"volume": volume, "present": torch.ones(batch, sequences, dtype=torch.bool)} if as_dict else volume
    patches = tok.patchify(x)
    check_tokens(tok, x, patches, batch)
    assert torch.equal(tok.unpatchify(patches), volume)
    # token s * per_sequence + i is patch i of sequence s
    s = int(torch.randint(0, sequences, (1,), generator=gen(seed)))
    _gx, gy, gz = grid
    x0, rest = divmod(int(torch.randint(0, per_sequence, (1,), generator=gen(seed + 1))), gy * gz)
    y0, z0 = divmod(rest, gz)
    block = volume[:, s, x0 * patch : (x0 + 1) * patch, y0 * patch : (y0 + 1) * patch, z0 * patch : (z0 + 1) * patch]
    assert torch.equal(patches[:, s * per_sequence + x0 * gy * gz + y0 * gz + z0], block.flatten(1))


@examples(3)
@given(batch=small, groups=st.integers(1, 6), size=st.integers(1, 6), extra=st.integers(0, 20), seed=seeds)
def test_point_groups_round_trip(batch, groups, size, extra, seed):
    points = torch.randn(batch, max(groups, size) + extra, 3, generator=gen(seed))
    tok = PointGroups(embed_dim=8, num_groups=groups, group_size=size).eval()
    packed = group_points(points, num_groups=groups, group_size=size)
    assert packed.shape == (batch, groups, 1 + size, 3)
    centres = packed[:, :, 0]
    patches = tok.patchify(packed)
    assert patches.shape == (batch, tok.num_tokens, tok.patch_dim) and tok.num_tokens == groups
    assert torch.equal(tok.patchify(points), patches)  # raw clouds are grouped the same way
    tokens = tok(points)
    assert torch.equal(tokens.targets, patches) and torch.equal(tokens.coords, centres)
    absolute = tok.unpatchify(patches, tokens.coords)  # [B, G, k, 3]
    assert torch.allclose(absolute, packed[:, :, 1:] + centres[:, :, None])
    for b in range(batch):
        # every point of every group is a point of the cloud, and each group starts at its centre
        dist = torch.cdist(absolute[b].reshape(-1, 3), points[b], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        assert dist.max() < 1e-5
        assert torch.allclose(absolute[b, :, 0], centres[b], atol=1e-6)
        assert len({tuple(c.tolist()) for c in centres[b]}) == groups, "farthest point sampling picked a centre twice"
