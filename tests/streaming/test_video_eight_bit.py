"""Clips that leave the loader in 8 bits (``VideoDecoder(eight_bit=True)``, what the recipes
train with) and are normalized on the device by ``model_input``: the model sees exactly the
floats a float decoder would have given it."""

import random

import pytest
import torch
from conftest import DATA, load_script

from modalmae.data.stream import CastFloats, collate
from modalmae.data.video import VideoDecoder, make_clip, normalize_clip
from modalmae.modalities import MODALITIES, model_input

CARPHONE = {"mp4": (DATA / "video" / "carphone_pristine.mp4").read_bytes(), "json": b'{"label": "phone"}'}


def test_an_eight_bit_clip_normalizes_to_the_float_clip():
    frames = torch.randint(0, 256, (5, 90, 120, 3), dtype=torch.uint8).numpy()
    for seed in range(6):  # flipped and not, several boxes
        raw = make_clip(frames, crop_size=48, rng=random.Random(seed), flip=True, normalize=False)
        assert raw.dtype == torch.uint8 and raw.shape == (3, 5, 48, 48) and raw.is_contiguous()
        assert torch.equal(normalize_clip(raw), make_clip(frames, crop_size=48, rng=random.Random(seed), flip=True))
    batch = torch.stack([make_clip(frames, crop_size=48, rng=random.Random(s), flip=True, normalize=False) for s in range(3)])
    assert torch.equal(normalize_clip(batch), torch.stack([normalize_clip(clip) for clip in batch]))  # [B, 3, T, H, W]
    with pytest.raises(TypeError, match="uint8"):
        normalize_clip(normalize_clip(raw))  # a float clip is not normalized twice


@pytest.mark.parametrize("motion", [False, True])
def test_the_decoder_ships_uint8_and_model_input_restores_the_floats(motion):
    settings = {"num_frames": 8, "stride": 2, "crop_size": 64, "clips_per_video": 2, "motion": motion, "tubelet_size": 2, "patch_size": 16}
    floats = VideoDecoder(**settings)(CARPHONE, random.Random(3))
    bytes_ = VideoDecoder(**settings, eight_bit=True)(CARPHONE, random.Random(3))
    assert [item["video"].dtype for item in bytes_] == [torch.uint8, torch.uint8]
    if motion:  # matched on the same normalized clip
        assert all(torch.equal(a["motion"], b["motion"]) for a, b in zip(floats, bytes_))
    spec = MODALITIES["video"]
    want = model_input(spec, collate(floats), "cpu")
    got = model_input(spec, collate(bytes_), "cpu")
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(model_input(spec, collate(bytes_), "cpu", rows=slice(1, 2)), want[1:2])
    # A bf16 run's CastFloats leaves the 8-bit clips alone: they are already the smaller form.
    cast = CastFloats(VideoDecoder(**settings, eight_bit=True), spec.input_keys, torch.bfloat16)(CARPHONE, random.Random(3))
    assert cast[0]["video"].dtype == torch.uint8


def test_the_video_recipe_trains_on_eight_bit_clips():
    recipe = load_script("recipes/video_mae.py")
    cfg = recipe.VideoMAEConfig(model="tiny", shards="unused", num_frames=4, input_size=32)
    assert recipe.build(cfg).decode.eight_bit
