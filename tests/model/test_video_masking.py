import pytest
import torch

from modalmae.masking import masks_from_order, running_cell_predict, tube_masking


def test_tube_masking_shares_the_spatial_mask_over_time():
    masks = tube_masking(4, (8, 14, 14), 0.9, generator=torch.Generator().manual_seed(0))
    grid = masks.mask.view(4, 8, 196)
    assert (grid == grid[:, :1]).all()  # every time slice equal to the first
    assert (masks.mask.sum(1) == 8 * round(0.9 * 196)).all()  # 1408, as VideoMAE
    order = torch.cat([masks.ids_keep, masks.ids_masked], 1)
    assert torch.equal(order.sort(1).values, torch.arange(1568).expand(4, -1))  # every token once
    assert not torch.equal(grid[0, 0], grid[1, 0])


def test_running_cell_keeps_half_of_the_masked_tokens_in_a_rotating_cell():
    g = torch.Generator().manual_seed(0)
    masks = tube_masking(3, (8, 14, 14), 0.9, generator=g)
    ids = running_cell_predict(masks, (8, 14, 14), 0.5, generator=g)
    assert ids.shape == (3, 704)  # exactly half of 1408
    chosen = torch.zeros(3, 1568).scatter(1, ids, 1.0)
    assert (chosen <= masks.mask).all()  # only masked tokens are predicted
    cells = chosen.view(3, 8, 7, 2, 7, 2)  # [B, T', cell rows, 2, cell cols, 2]
    # within a time slice every 2x2 cell has the same pattern (the tiled cell) wherever masked
    masked_cells = masks.mask.view(3, 8, 7, 2, 7, 2)
    for b in range(3):
        for t in range(8):
            pattern = cells[b, t][masked_cells[b, t].bool()]
            layout = cells[b, t].permute(1, 3, 0, 2).reshape(4, -1)  # position in cell -> values
            in_mask = masked_cells[b, t].permute(1, 3, 0, 2).reshape(4, -1).bool()
            for pos in range(4):
                vals = layout[pos][in_mask[pos]]
                assert vals.numel() == 0 or (vals == vals[0]).all()
            assert pattern.numel() > 0
    # the pattern rotates: consecutive slices differ at some cell position
    first = cells[0, 0].permute(1, 3, 0, 2).reshape(4, -1).max(dim=1).values
    second = cells[0, 1].permute(1, 3, 0, 2).reshape(4, -1).max(dim=1).values
    assert not torch.equal(first, second)


def test_running_cell_exact_count_even_when_the_cell_cannot_give_it():
    g = torch.Generator().manual_seed(3)
    masks = tube_masking(5, (2, 4, 4), 0.75, generator=g)  # 2 slices: the cell is not balanced
    ids = running_cell_predict(masks, (2, 4, 4), 0.5, generator=g)
    num_masked = masks.ids_masked.shape[1]
    assert ids.shape == (5, num_masked - round(0.5 * num_masked))
    assert all(len(set(row.tolist())) == ids.shape[1] for row in ids)
    with pytest.raises(ValueError, match="running cell"):
        running_cell_predict(masks, (2, 4, 4), 0.1, generator=g)


def test_running_cell_phases_are_uniform_and_bad_settings_are_refused():
    """Each sample's cell starts at one of the 4 phases, equally often: on the first slice the
    decoder reconstructs the 2 cell positions the phase keeps (of 2 x 2; 1 = drop, rotating by
    one each slice). A ratio whose cell drops nothing or everything, and masks with a count per
    sample, are refused with the reason."""
    g = torch.Generator().manual_seed(0)
    masks = tube_masking(400, (4, 4, 4), 0.9, generator=g)
    ids = running_cell_predict(masks, (4, 4, 4), 0.5, generator=g)
    first = [row[row < 16] for row in ids]  # the first slice's tokens
    kept = [frozenset(((i // 4) % 2 * 2 + i % 4 % 2).tolist()) for i in first]
    counts = {pair: kept.count(pair) for pair in set(kept)}
    assert sorted(map(sorted, counts)) == [[0, 1], [0, 3], [1, 2], [2, 3]]  # neighbours in the cell's rotation
    assert all(70 <= n <= 130 for n in counts.values()), counts  # 100 each expected (sd 8.7)
    for ratio in (0.2, 1.0):
        with pytest.raises(ValueError, match=f"decoder mask ratio {ratio} leaves no running cell"):
            running_cell_predict(masks, (4, 4, 4), ratio, generator=g)
    per_sample = tube_masking(2, (4, 4, 4), torch.tensor([0.5, 0.75]), generator=g)
    with pytest.raises(ValueError, match=r"^decoder masking needs the same number of masked tokens in every sample \(one mask ratio, not one per sample\)$"):
        running_cell_predict(per_sample, (4, 4, 4), 0.5, generator=g)


def test_running_cell_keeps_half_of_the_masked_tokens_by_default():
    """VideoMAE V2's decoder ratio is 0.5: without one, half of the masked tokens are predicted."""
    g = torch.Generator().manual_seed(0)
    masks = tube_masking(2, (4, 4, 4), 0.75, generator=g)  # 48 masked
    assert running_cell_predict(masks, (4, 4, 4), generator=g).shape == (2, 24)


def test_running_cell_draws_each_samples_order_on_its_own():
    """Samples with the same masks still get their own random order of predicted tokens: of 8
    samples at least two share a cell phase (4 phases), and their orders differ too."""
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1)).expand(8, -1)
    masks = masks_from_order(order, 48)
    ids = running_cell_predict(masks, (4, 4, 4), 0.5, generator=torch.Generator().manual_seed(2))
    assert len({tuple(row) for row in ids.tolist()}) == 8
