"""Properties of every masking strategy over generated grids, ratios, batches and seeds:
shapes, exact masked counts (per sample, per time slice where promised), ``ids_keep`` and
``ids_masked`` partitioning the tokens (padding slots aside), ``mask`` agreeing with them, and
the generator seed reproducing the masks."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from modalmae.masking import (
    Masks,
    block_masking,
    concat_masks,
    dirichlet_masking,
    masks_from_order,
    random_masking,
    running_cell_predict,
    tube_masking,
)
from modalmae.masking.color import COLORS, NoiseBank, color_masking, colored_noise
from modalmae.masking.motion import motion_guided_masking

from ._support import examples

seeds = st.integers(0, 2**31 - 1)
ratios = st.floats(0.0, 0.95, allow_nan=False)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_sample_ratios(batch: int):
    return st.lists(ratios, min_size=batch, max_size=batch).map(lambda r: torch.tensor(r, dtype=torch.float32))


def near_round(count: int, exact: float) -> bool:
    """``count`` is round(exact), allowing either neighbour at a tie (float32 ratio products)."""
    return abs(count - exact) <= 0.5 + 1e-4


def split(m: Masks) -> list[tuple[list[int], list[int]]]:
    """Per sample: (valid kept ids, valid masked ids), padding slots dropped."""
    out = []
    for b in range(m.mask.shape[0]):
        keep, masked = m.ids_keep[b], m.ids_masked[b]
        if m.padded:
            keep, masked = keep[m.keep_valid[b]], masked[m.masked_valid[b]]
        out.append((keep.tolist(), masked.tolist()))
    return out


def check_partition(m: Masks, num_tokens: int, batch: int) -> list[tuple[list[int], list[int]]]:
    """The invariants every ``Masks`` keeps; returns the per-sample (kept, masked) id lists."""
    assert m.mask.shape == (batch, num_tokens) and m.mask.dtype.is_floating_point
    assert m.ids_keep.dim() == m.ids_masked.dim() == 2
    assert m.ids_keep.shape[0] == m.ids_masked.shape[0] == batch
    assert m.ids_keep.dtype == m.ids_masked.dtype == torch.long
    assert (m.keep_valid is None) == (m.masked_valid is None)
    if m.padded:
        assert m.keep_valid.shape == m.ids_keep.shape and m.masked_valid.shape == m.ids_masked.shape
        assert m.keep_valid.dtype == m.masked_valid.dtype == torch.bool
    else:
        assert m.ids_keep.shape[1] + m.ids_masked.shape[1] == num_tokens
    for ids in (m.ids_keep, m.ids_masked):
        assert ids.numel() == 0 or (0 <= int(ids.min()) and int(ids.max()) < num_tokens)
    parts = split(m)
    for b, (keep, masked) in enumerate(parts):
        assert len(set(keep)) == len(keep) and len(set(masked)) == len(masked), "an id twice"
        assert not set(keep) & set(masked), "a token both kept and masked"
        assert sorted(keep + masked) == list(range(num_tokens)), "kept + masked must cover every token"
        assert m.mask[b, keep].eq(0).all() and m.mask[b, masked].eq(1).all()
        if m.padded:  # padding slots repeat a token of the other list (documented on Masks)
            assert set(m.ids_keep[b][~m.keep_valid[b]].tolist()) <= set(masked)
            assert set(m.ids_masked[b][~m.masked_valid[b]].tolist()) <= set(keep)
            # ids_keep: the sample's own visible tokens first, then padding ("past its count")
            n = int(m.keep_valid[b].sum())
            assert m.keep_valid[b, :n].all() and not m.keep_valid[b, n:].any()
    return parts


def same(a: Masks, b: Masks) -> bool:
    fields = ("ids_keep", "ids_masked", "mask", "ids_predict", "keep_valid", "masked_valid")
    return all(
        (getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f)) for f in fields
    )


# ------------------------------------------------------------------------------- random


@examples(3)
@given(batch=st.integers(1, 5), num_tokens=st.integers(1, 64), data=st.data(), seed=seeds, per_sample=st.booleans())
def test_random_masking(batch, num_tokens, data, seed, per_sample):
    ratio = data.draw(per_sample_ratios(batch) if per_sample else ratios, label="ratio")
    m = random_masking(batch, num_tokens, ratio, generator=gen(seed))
    parts = check_partition(m, num_tokens, batch)
    for b, (_, masked) in enumerate(parts):
        if per_sample:
            assert near_round(len(masked), float(ratio[b]) * num_tokens)
        else:
            assert len(masked) == round(ratio * num_tokens)
    assert m.padded == per_sample
    assert same(m, random_masking(batch, num_tokens, ratio, generator=gen(seed)))


@examples(1)
@given(batch=st.integers(1, 5), num_tokens=st.integers(2, 64), ratio=ratios, seed=seeds)
def test_one_ratio_per_sample_equal_for_all_masks_like_one_ratio(batch, num_tokens, ratio, seed):
    """[B] equal ratios give the same tokens as the one ratio (only padded, with all slots valid)."""
    one = random_masking(batch, num_tokens, ratio, generator=gen(seed))
    each = random_masking(batch, num_tokens, torch.full((batch,), ratio, dtype=torch.float64), generator=gen(seed))
    assert torch.equal(one.mask, each.mask)
    assert each.keep_valid.all() and each.masked_valid.all()
    assert torch.equal(one.ids_keep, each.ids_keep) and torch.equal(one.ids_masked, each.ids_masked)


@examples(1)
@given(batch=st.integers(1, 4), num_tokens=st.integers(1, 40), seed=seeds, data=st.data())
def test_masks_from_order_with_counts_per_sample(batch, num_tokens, seed, data):
    counts = data.draw(st.lists(st.integers(0, num_tokens), min_size=batch, max_size=batch), label="counts")
    g = gen(seed)
    order = torch.stack([torch.randperm(num_tokens, generator=g) for _ in range(batch)])
    m = masks_from_order(order, torch.tensor(counts))
    assert m.padded
    assert m.ids_keep.shape == (batch, num_tokens - min(counts)) and m.ids_masked.shape == (batch, max(counts))
    parts = check_partition(m, num_tokens, batch)
    for b, (keep, masked) in enumerate(parts):
        assert len(masked) == counts[b] and m.mask[b].sum() == counts[b]
        # the last counts[b] of the order are masked, in order; the rest kept, in order
        assert masked == order[b, num_tokens - counts[b] :].tolist()
        assert keep == order[b, : num_tokens - counts[b]].tolist()


# --------------------------------------------------------------------------------- tube

grids = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))


@examples(2)
@given(batch=st.integers(1, 4), grid=grids, data=st.data(), seed=seeds, per_sample=st.booleans())
def test_tube_masking_masks_the_same_positions_in_every_slice(batch, grid, data, seed, per_sample):
    t, h, w = grid
    ratio = data.draw(per_sample_ratios(batch) if per_sample else ratios, label="ratio")
    m = tube_masking(batch, grid, ratio, generator=gen(seed))
    parts = check_partition(m, t * h * w, batch)
    slices = m.mask.view(batch, t, h * w)
    assert torch.equal(slices, slices[:, :1].expand(-1, t, -1)), "a tube mask differs between time slices"
    for b, (_, masked) in enumerate(parts):
        per_slice = slices[b, 0].sum().item()
        if per_sample:
            assert near_round(int(per_slice), float(ratio[b]) * h * w)
        else:
            assert per_slice == round(ratio * h * w)
        assert len(masked) == t * per_slice
    assert same(m, tube_masking(batch, grid, ratio, generator=gen(seed)))


def cell_drops(phase: int, t: int, h: int, w: int, drops: int) -> torch.Tensor:
    """VideoMAE V2's running cell as documented: a 2x2 cell with ``drops`` ones, rotated by one
    position per slice (advanced before the first), from ``phase``; [T' * H' * W'] 1 = drop."""
    queue = [1] * drops + [0] * (4 - drops)
    out = torch.empty(t, h, w, dtype=torch.long)
    for s in range(t):
        for y in range(h):
            for x in range(w):
                out[s, y, x] = queue[((y % 2) * 2 + x % 2 + phase + s + 1) % 4]
    return out.flatten()


@examples(1)
@given(
    batch=st.integers(1, 3), grid=st.tuples(st.sampled_from([4, 8]), st.integers(1, 6), st.integers(1, 6)),
    tube_ratio=st.floats(0.3, 0.95), drops=st.integers(1, 3), seed=seeds,
)
def test_running_cell_predicts_exactly_the_cells_kept_tokens_under_tube_masking(batch, grid, tube_ratio, drops, seed):
    t, h, w = grid
    masks = tube_masking(batch, grid, tube_ratio, generator=gen(seed))
    ratio = drops / 4
    predict = running_cell_predict(masks, grid, ratio, generator=gen(seed + 1))
    num_masked = masks.ids_masked.shape[1]
    assert predict.shape == (batch, num_masked - round(ratio * num_masked))
    for b in range(batch):
        chosen = predict[b].tolist()
        assert len(set(chosen)) == len(chosen) and set(chosen) <= set(masks.ids_masked[b].tolist())
        # over a multiple of 4 slices with tubes the cell keeps exactly as many as are predicted:
        # the prediction is the cell's kept tokens for one of the 4 phases
        kept = [set(masks.ids_masked[b][cell_drops(p, t, h, w, drops)[masks.ids_masked[b]] == 0].tolist()) for p in range(4)]
        assert set(chosen) in kept
    assert torch.equal(predict, running_cell_predict(masks, grid, ratio, generator=gen(seed + 1)))
    joined = masks.with_decoder_masking(predict)
    assert torch.equal(joined.ids_predict, predict) and torch.equal(joined.mask, masks.mask)


@examples(1)
@given(
    batch=st.integers(1, 3), grid=grids, tube_ratio=st.floats(0.2, 0.95), ratio=st.floats(0.25, 0.95), seed=seeds,
)
def test_running_cell_predicts_a_subset_of_the_masked_tokens(batch, grid, tube_ratio, ratio, seed):
    masks = tube_masking(batch, grid, tube_ratio, generator=gen(seed))
    predict = running_cell_predict(masks, grid, ratio, generator=gen(seed))
    num_masked = masks.ids_masked.shape[1]
    assert predict.shape == (batch, num_masked - round(ratio * num_masked))
    for b in range(batch):
        chosen = predict[b].tolist()
        assert len(set(chosen)) == len(chosen) and set(chosen) <= set(masks.ids_masked[b].tolist())


# -------------------------------------------------------------------------------- block


@examples(2)
@given(
    batch=st.integers(1, 4), num_tokens=st.integers(1, 40), dims=st.integers(1, 3), data=st.data(), seed=seeds,
    per_sample=st.booleans(),
)
def test_block_masking_masks_a_token_and_its_nearest_neighbours(batch, num_tokens, dims, data, seed, per_sample):
    ratio = data.draw(per_sample_ratios(batch) if per_sample else ratios, label="ratio")
    centres = torch.randn(batch, num_tokens, dims, generator=gen(seed))
    m = block_masking(centres, ratio, generator=gen(seed + 1))
    parts = check_partition(m, num_tokens, batch)
    assert m.padded == per_sample
    for b, (keep, masked) in enumerate(parts):
        if per_sample:
            assert near_round(len(masked), float(ratio[b]) * num_tokens)
        else:
            assert len(masked) == round(ratio * num_tokens)
        if not masked or not keep:
            continue
        # some masked token (the seed) has every other masked token nearer than any kept one
        dist = torch.cdist(centres[b], centres[b])
        assert any(dist[s, masked].max() <= dist[s, keep].min() for s in masked), "the masked tokens are no block"
    assert same(m, block_masking(centres, ratio, generator=gen(seed + 1)))


# ---------------------------------------------------------------------------- dirichlet


@st.composite
def dirichlet_cases(draw):
    batch = draw(st.integers(1, 5))
    sequences = draw(st.integers(1, 4))
    sizes = draw(st.one_of(st.integers(1, 8), st.lists(st.integers(1, 8), min_size=sequences, max_size=sequences)))
    rows = draw(st.lists(st.lists(st.booleans(), min_size=sequences, max_size=sequences).filter(any), min_size=batch, max_size=batch))
    present = torch.tensor(rows)
    per_seq = torch.tensor(sizes if isinstance(sizes, list) else [sizes] * sequences)
    fewest = int((present.long() * per_seq).sum(1).min())
    num_visible = draw(st.integers(0, fewest - 1))
    alpha = draw(st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    return present, sizes, per_seq, num_visible, alpha


@examples(3)
@given(case=dirichlet_cases(), seed=seeds)
def test_dirichlet_masking_keeps_the_budget_in_present_sequences(case, seed):
    present, sizes, per_seq, num_visible, alpha = case
    batch, sequences = present.shape
    length = int(per_seq.sum())
    starts = torch.cat([torch.zeros(1, dtype=torch.long), per_seq.cumsum(0)])
    owner = torch.repeat_interleave(torch.arange(sequences), per_seq)  # [L] each token's sequence
    m = dirichlet_masking(present, sizes, num_visible, alpha=alpha, generator=gen(seed))
    assert not m.padded
    assert m.ids_keep.shape == (batch, num_visible) and m.ids_masked.shape == (batch, length - num_visible)
    for b in range(batch):
        keep, masked = m.ids_keep[b].tolist(), m.ids_masked[b].tolist()
        assert sorted(keep + masked) == list(range(length))
        assert all(present[b, owner[i]] for i in keep), "a visible token of an absent sequence"
        token_present = present[b, owner]
        expected = torch.zeros(length)
        expected[masked] = 1.0
        expected[~token_present] = 0.0  # absent sequences: among ids_masked, but no loss
        assert torch.equal(m.mask[b], expected)
        assert m.mask[b].sum() == int(token_present.sum()) - num_visible
        for s in range(sequences):  # within a sequence, a subset of its own tokens
            assert sum(starts[s] <= i < starts[s + 1] for i in keep) <= per_seq[s]
    again = dirichlet_masking(present, sizes, num_visible, alpha=alpha, generator=gen(seed))
    assert same(m, again)


@examples(1)
@given(case=dirichlet_cases(), seed=seeds)
def test_dirichlet_masking_refuses_a_budget_leaving_nothing_to_reconstruct(case, seed):
    present, sizes, per_seq, _, alpha = case
    fewest = int((present.long() * per_seq).sum(1).min())
    try:
        dirichlet_masking(present, sizes, fewest, alpha=alpha, generator=gen(seed))
    except ValueError as e:
        assert "nothing to reconstruct" in str(e)
    else:
        raise AssertionError(f"{fewest} visible tokens of {fewest} present were accepted")


# ------------------------------------------------------------------------------- concat


@st.composite
def unpadded_parts(draw):
    parts, lengths = [], []
    for _ in range(draw(st.integers(1, 3))):
        seed = draw(seeds)
        if draw(st.booleans()):
            n = draw(st.integers(1, 30))
            m = random_masking(draw(st.shared(st.integers(1, 4), key="batch")), n, draw(ratios), generator=gen(seed))
        else:
            grid = draw(grids)
            m = tube_masking(draw(st.shared(st.integers(1, 4), key="batch")), grid, draw(ratios), generator=gen(seed))
            n = grid[0] * grid[1] * grid[2]
        if draw(st.booleans()) and m.ids_masked.shape[1]:
            m = m.with_decoder_masking(m.ids_masked[:, : draw(st.integers(0, m.ids_masked.shape[1]))])
        parts.append(m)
        lengths.append(n)
    return parts, lengths


@examples(2)
@given(case=unpadded_parts())
def test_concat_masks_offsets_each_part_and_keeps_columns_per_part(case):
    parts, lengths = case
    batch = parts[0].mask.shape[0]
    joint = concat_masks(parts)
    total = sum(lengths)
    check_partition(joint, total, batch)
    offsets = [sum(lengths[:i]) for i in range(len(parts))]
    col_k = col_m = col_p = 0
    for part, offset, n in zip(parts, offsets, lengths):
        k, mm = part.ids_keep.shape[1], part.ids_masked.shape[1]
        assert torch.equal(joint.ids_keep[:, col_k : col_k + k], part.ids_keep + offset)
        assert torch.equal(joint.ids_masked[:, col_m : col_m + mm], part.ids_masked + offset)
        assert torch.equal(joint.mask[:, offset : offset + n], part.mask)
        if joint.ids_predict is not None:
            predicted = part.ids_masked if part.ids_predict is None else part.ids_predict
            p = predicted.shape[1]
            assert torch.equal(joint.ids_predict[:, col_p : col_p + p], predicted + offset)
            col_p += p
        col_k, col_m = col_k + k, col_m + mm
    assert (joint.ids_predict is None) == all(p.ids_predict is None for p in parts)


@examples(1)
@given(batch=st.integers(1, 4), n=st.integers(2, 20), data=st.data(), seed=seeds)
def test_concat_masks_refuses_padded_parts(batch, n, data, seed):
    padded = random_masking(batch, n, data.draw(per_sample_ratios(batch)), generator=gen(seed))
    plain = random_masking(batch, n, 0.5, generator=gen(seed))
    try:
        concat_masks([plain, padded])
    except ValueError:
        pass
    else:
        raise AssertionError("padded masks were joined")


# -------------------------------------------------------------------------------- color


@examples(3)
@given(
    batch=st.integers(1, 4), grid=st.one_of(st.tuples(st.integers(2, 8), st.integers(1, 8)), grids.filter(lambda g: g[1] * g[2] >= 2)),
    color=st.sampled_from(COLORS), per_frame=st.booleans(), data=st.data(), seed=seeds, per_sample=st.booleans(),
)
def test_color_masking_counts_per_slice_and_masks_the_lowest_noise(batch, grid, color, per_frame, data, seed, per_sample):
    ratio = data.draw(per_sample_ratios(batch) if per_sample else ratios, label="ratio")
    t, (h, w) = (1, grid) if len(grid) == 2 else (grid[0], grid[1:])
    m = color_masking(batch, grid, ratio, color=color, generator=gen(seed), per_frame=per_frame)
    parts = check_partition(m, t * h * w, batch)
    assert m.padded == per_sample
    slices = m.mask.view(batch, t, h * w)
    if not per_frame:
        assert torch.equal(slices, slices[:, :1].expand(-1, t, -1)), "tubes differ between time slices"
    # the same generator state gives the noise the masks were cut from
    fields = t if per_frame else 1
    noise = colored_noise(batch * fields, (h, w), color, generator=gen(seed)).reshape(batch, fields, h * w)
    for b, (_, masked) in enumerate(parts):
        for s in range(t):
            count = int(slices[b, s].sum())
            if per_sample:
                assert near_round(count, float(ratio[b]) * h * w)
            else:
                assert count == round(ratio * h * w)
            field = noise[b, s if per_frame else 0]
            hidden = slices[b, s].bool()
            if hidden.any() and (~hidden).any():
                assert field[hidden].max() <= field[~hidden].min(), "a masked token's noise above a visible one's"
        assert len(masked) == int(slices[b].sum())
    assert same(m, color_masking(batch, grid, ratio, color=color, generator=gen(seed), per_frame=per_frame))


@examples(1)
@given(batch=st.integers(1, 4), grid=st.tuples(st.integers(1, 12), st.integers(1, 12)), ratio=ratios, seed=seeds, color=st.sampled_from(COLORS))
def test_color_masking_from_a_noise_bank(batch, grid, ratio, seed, color):
    bank = NoiseBank(color, size=12, count=2, seed=seed % 7)
    m = color_masking(batch, grid, ratio, color=bank, generator=gen(seed))
    parts = check_partition(m, grid[0] * grid[1], batch)
    assert all(len(masked) == round(ratio * grid[0] * grid[1]) for _, masked in parts)
    assert same(m, color_masking(batch, grid, ratio, color=bank, generator=gen(seed)))


# ------------------------------------------------------------------------------- motion

motions = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))


@examples(2)
@given(
    shape=motions, ratio=ratios, seed=seeds, scale=st.sampled_from([0.0, 0.3, 1.5, 4.0]), cells=st.sampled_from([1, 2, 4]),
    data=st.data(),
)
def test_motion_guided_masking_counts_per_slice(shape, ratio, seed, scale, cells, data):
    batch, t, h, w = shape
    base = data.draw(st.one_of(st.none(), st.integers(0, t - 1)), label="base")
    motion = scale * torch.randn(batch, t, h, w, 2, generator=gen(seed + 1))
    m = motion_guided_masking(motion, ratio, generator=gen(seed), base=base, cells=cells)
    check_partition(m, t * h * w, batch)
    per_slice = round(ratio * h * w)
    assert torch.equal(m.mask.view(batch, t, h * w).sum(2), torch.full((batch, t), float(per_slice)))
    # the base slice keeps the random visible set tube masking draws from the same generator state
    tube = tube_masking(batch, (t, h, w), ratio, generator=gen(seed))
    b0 = t // 2 if base is None else base
    assert torch.equal(m.mask.view(batch, t, h * w)[:, b0], tube.mask.view(batch, t, h * w)[:, b0])
    if scale == 0.0:  # no motion: exactly tube masking
        assert torch.equal(m.mask, tube.mask)
    assert same(m, motion_guided_masking(motion, ratio, generator=gen(seed), base=base, cells=cells))


def test_motion_guided_masking_with_every_token_of_a_slice_masked():
    """round(ratio * H'W') may mask a whole slice: all masked, as tube_masking (it once crashed)."""
    motion = torch.zeros(1, 2, 1, 1, 2)  # a 1 x 1 grid: ratio 0.75 masks round(0.75) = 1 token of 1
    tube = tube_masking(1, (2, 1, 1), 0.75, generator=gen(0))
    assert tube.mask.sum() == 2
    m = motion_guided_masking(motion, 0.75, generator=gen(0))
    assert torch.equal(m.mask, tube.mask)
