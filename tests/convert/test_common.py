"""The helpers every converter shares: finding the tensors inside a checkpoint's wrappers, and
counting numbered blocks."""

import re

import pytest
import torch

from modalmae.convert.common import count_blocks, unwrap


def test_unwrap_descends_into_wrappers_and_drops_the_ddp_prefix():
    weight = torch.zeros(2)
    assert unwrap({"model": {"module.blocks.0.w": weight, "epoch": 3}}) == {"blocks.0.w": weight}
    assert unwrap({"state_dict": {"w": weight}}) == {"w": weight}


def test_unwrap_errors_name_the_source():
    """What holds no tensors is refused naming the file (``source``), "checkpoint" by default."""
    with pytest.raises(ValueError, match=r"^checkpoint: no tensors found \(top-level keys: \['args', 'epoch'\]\)$"):
        unwrap({"epoch": 3, "args": {}})
    with pytest.raises(ValueError, match=r"^run/last\.pth: no tensors found \(top-level keys: \['x'\]\)$"):
        unwrap({"model": {"x": 1}}, source="run/last.pth")  # the wrapper entered, nothing inside
    with pytest.raises(ValueError, match=r"^checkpoint: expected a state dict, got list$"):
        unwrap([torch.zeros(1)])


def test_count_blocks_counts_only_a_complete_numbering():
    state = {f"blocks.{i}.w": torch.zeros(1) for i in (0, 1, 2)} | {"blocks_extra.5.w": torch.zeros(1), "head.w": torch.zeros(1)}
    assert count_blocks(state, "blocks.") == 3
    assert count_blocks(state, "decoder_blocks.") == 0
    del state["blocks.1.w"]
    with pytest.raises(ValueError, match="^" + re.escape("blocks under 'blocks.' are not numbered 0..n-1: [0, 2]") + "$"):
        count_blocks(state, "blocks.")
