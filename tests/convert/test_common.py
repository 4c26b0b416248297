"""The helpers every converter shares: reading a checkpoint file or folder without running its
code, finding the tensors inside its wrappers, and counting numbered blocks."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modalmae.convert.common import count_blocks, load_mapped, read_state_dict, unwrap


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


class RunsCode:
    """Unpickled, it would create ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    """A torch.save file whose pickle calls a function is refused by weights-only loading, named
    with the reason, and the call never happens."""
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2), "hook": RunsCode(marker)}}, path)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: not readable as weights only: torch.load(weights_only=True) refused it (UnpicklingError: Weights only load failed.")):
        read_state_dict(path)
    assert not marker.exists()


def test_read_state_dict_finds_the_weights_in_a_file_or_a_folder(tmp_path):
    weights = {"blocks.0.w": torch.arange(3.0)}
    torch.save({"model": weights}, tmp_path / "a.pth")
    state, config = read_state_dict(tmp_path / "a.pth")
    assert config is None and torch.equal(state["blocks.0.w"], weights["blocks.0.w"])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "videomae"}')
    torch.save(weights, folder / "pytorch_model.bin")  # transformers' older file name
    state, config = read_state_dict(folder)
    assert config == {"model_type": "videomae"} and set(state) == {"blocks.0.w"}
    save_file({"w": torch.ones(2)}, folder / "model.safetensors")  # preferred when both are there
    assert set(read_state_dict(folder)[0]) == {"w"}
    assert set(read_state_dict(folder / "model.safetensors")[0]) == {"w"}


def test_read_state_dict_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"{tmp_path}: no model.safetensors or pytorch_model.bin in this folder") + "$"):
        read_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"{tmp_path / 'x.pth'}: no such checkpoint file") + "$"):
        read_state_dict(tmp_path / "x.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'empty.pth'}: no tensors found")):
        read_state_dict(tmp_path / "empty.pth")


def test_unwrap_lists_at_most_ten_top_level_keys():
    keys = [f"k{i:02d}" for i in range(12)]
    with pytest.raises(ValueError, match="^" + re.escape(f"checkpoint: no tensors found (top-level keys: {keys[:10]})") + "$"):
        unwrap(dict.fromkeys(keys, 0))


class Layers(torch.nn.Module):
    """Five 1 -> 1 linear layers (ten parameters), a float buffer and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(1, 1) for _ in range(5)))
        self.register_buffer("table", torch.full((2,), 7.0))
        self.register_buffer("count", torch.tensor(0))


def weights(value=0.5, dtype=torch.float32):
    return {f"layers.{i}.{name}": torch.full(shape, value, dtype=dtype) for i in range(5) for name, shape in (("weight", (1, 1)), ("bias", (1,)))}


def test_load_mapped_sets_every_parameter_and_may_leave_buffers():
    """Buffers the mapping does not give keep the model's own values; the model comes back in eval mode."""
    model = load_mapped(Layers().train(), weights(), what="Tiny")
    assert not model.training and torch.equal(model.table, torch.full((2,), 7.0))
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.parameters())


def test_load_mapped_loads_half_precision_as_float32_and_integers_exactly():
    """float16 / bfloat16 source weights become float32 parameters with the same values; an
    integer tensor (BatchNorm's num_batches_tracked) keeps its value even where float32 has no
    exact representation for it (2^24 + 1)."""
    for dtype in (torch.float16, torch.bfloat16):
        model = load_mapped(Layers(), weights(-1.25, dtype) | {"count": torch.tensor(2**24 + 1)}, what="Tiny")
        assert all(p.dtype == torch.float32 and torch.equal(p, torch.full_like(p, -1.25)) for p in model.parameters())
        assert model.count.dtype == torch.int64 and model.count.item() == 2**24 + 1


def test_load_mapped_lists_at_most_five_shape_mismatches():
    wrong = {k: torch.zeros(2, *v.shape[1:]) for k, v in weights().items()}  # ten weights, two rows each
    first = ("layers.0.weight: (2, 1) vs ours (1, 1); layers.0.bias: (2,) vs ours (1,); layers.1.weight: (2, 1) vs ours (1, 1); "
             "layers.1.bias: (2,) vs ours (1,); layers.2.weight: (2, 1) vs ours (1, 1)")  # the first five, in the mapping's order
    with pytest.raises(ValueError, match="^" + re.escape(f"Tiny: shapes do not match: {first}") + "$"):
        load_mapped(Layers(), wrong, what="Tiny")


def test_load_mapped_refuses_unset_or_unexpected_weights_listing_eight_of_each():
    """Loading is strict for parameters: one missing, or one extra key, is an error naming it;
    the message lists the first eight unset parameters (sorted) and the first eight unexpected keys."""
    some = weights()
    del some["layers.4.bias"]
    with pytest.raises(KeyError, match=re.escape("Tiny: conversion left weights unset: ['layers.4.bias']; unexpected: []")):
        load_mapped(Layers(), some, what="Tiny")
    with pytest.raises(KeyError, match=re.escape("Tiny: conversion left weights unset: []; unexpected: ['head.weight']")):
        load_mapped(Layers(), weights() | {"head.weight": torch.zeros(1)}, what="Tiny")
    extra = {f"head.{i}": torch.zeros(1) for i in range(9)}
    unset = [f"layers.{i}.{name}" for i in range(4) for name in ("bias", "weight")]  # sorted, 8 of the 10
    unexpected = [f"head.{i}" for i in range(8)]
    with pytest.raises(KeyError, match="^[\"']" + re.escape(f"Tiny: conversion left weights unset: {unset}; unexpected: {unexpected}") + "[\"']$"):
        load_mapped(Layers(), extra, what="Tiny")
