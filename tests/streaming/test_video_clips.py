"""Clip sampling and windowed decoding on a real clip (tests/data/video/carphone_pristine.mp4)."""

import io
import random

import av
import numpy as np
import pytest
import torch

from conftest import DATA
from modalmae.data.video import (
    SCALES, VideoDecoder, clip_indices, decode_decord, decode_pyav, make_clip, multiscale_crop_box, probe_pyav,
)

CLIP = (DATA / "video" / "carphone_pristine.mp4").read_bytes()


@pytest.fixture(scope="module")
def all_frames():
    """The reference: every frame, decoded in order from the start, no seeking."""
    with av.open(io.BytesIO(CLIP)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_probe(all_frames):
    assert probe_pyav(CLIP)[0] == len(all_frames) == 120
    assert all_frames.shape == (120, 144, 176, 3)


@pytest.mark.parametrize("indices", [[0, 4, 8, 12], [61, 65, 69], [100, 119], [119, 30, 30, 2]])
def test_windowed_decode_gives_exactly_the_frames_asked_for(all_frames, indices):
    frames = decode_pyav(CLIP, indices)
    assert np.array_equal(frames, all_frames[indices])


def test_indices_past_the_end_repeat_the_last_frame(all_frames):
    frames = decode_pyav(CLIP, [118, 130, 200])
    assert np.array_equal(frames[1], all_frames[119]) and np.array_equal(frames[2], all_frames[119])


def test_clip_indices():
    rng = random.Random(0)
    starts = set()
    for _ in range(50):
        idx = clip_indices(120, num_frames=16, stride=4, rng=rng)
        assert len(idx) == 16 and all(b - a == 4 for a, b in zip(idx, idx[1:])) and 0 <= idx[0] and idx[-1] < 120
        starts.add(idx[0])
    assert len(starts) > 10
    assert clip_indices(120, num_frames=16, stride=4, rng=None)[0] == (120 - 61) // 2
    short = clip_indices(20, num_frames=16, stride=2, rng=rng)
    assert short[:10] == list(range(0, 20, 2)) and short[10:] == [19] * 6


def test_multiscale_crop_boxes():
    rng = random.Random(1)
    sizes = {int(144 * s) for s in SCALES}
    for _ in range(100):
        top, left, h, w = multiscale_crop_box(144, 176, rng)
        assert h in sizes and w in sizes and 0 <= top <= 144 - h and 0 <= left <= 176 - w


def test_make_clip_normalizes_and_flips(all_frames):
    frames = all_frames[:4]
    centre = make_clip(frames, crop_size=64, rng=None, flip=False)
    assert centre.shape == (3, 4, 64, 64)
    pixels = centre * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    assert 0 <= pixels.min() and pixels.max() <= 1.0 + 1e-5
    flipped, plain = 0, 0
    for seed in range(20):
        a = make_clip(frames, crop_size=64, rng=random.Random(seed), flip=True)
        b = make_clip(frames, crop_size=64, rng=random.Random(seed), flip=False)
        if torch.equal(a, b):
            plain += 1
        else:
            assert torch.allclose(a, b.flip(-1))
            flipped += 1
    assert flipped and plain


def test_repeated_augmentation_one_decode_several_clips():
    decoder = VideoDecoder(num_frames=8, stride=2, crop_size=64, clips_per_video=3)
    items = decoder({"mp4": CLIP, "json": b'{"frames": 120, "label": "phone"}'}, random.Random(0))
    assert len(items) == 3 and all(i["video"].shape == (3, 8, 64, 64) and i["label"] == "phone" for i in items)
    assert not torch.equal(items[0]["video"], items[1]["video"])


def test_missing_backend_says_how_to_get_it():
    try:
        import decord  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install decord"):
            decode_decord(CLIP, [0])
    with pytest.raises(ValueError, match="unknown video backend"):
        VideoDecoder(backend="opencv")
