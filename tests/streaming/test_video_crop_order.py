"""Clips are cropped on uint8 before it becomes float: the output must equal, bit
for bit, the old order (every decoded frame to float first, then crop, resize, flip, normalize),
on real clips (tests/data/video, and /work/shared/media/video where that folder exists)."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import DATA
from modalmae.data.video import VideoDecoder, clip_indices, decode_pyav, make_clip, multiscale_crop_box, probe_pyav
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD

SHARED = Path(__file__).resolve().parents[3] / "shared" / "media" / "video"
VIDEOS = [DATA / "video" / "carphone_pristine.mp4"] + sorted(SHARED.glob("*.mp4"))


def old_order(frames: np.ndarray, rows: list[int], *, crop_size: int, rng: random.Random | None, flip: bool) -> torch.Tensor:
    """The reference: the clip's whole frames become float [C, T, H, W] before anything else."""
    video = torch.from_numpy(frames[rows]).permute(3, 0, 1, 2).float().div(255)
    _, _, height, width = video.shape
    if rng is not None:
        top, left, h, w = multiscale_crop_box(height, width, rng)
    else:
        h = w = min(height, width)
        top, left = (height - h) // 2, (width - w) // 2
    video = F.interpolate(video[:, :, top : top + h, left : left + w], size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if rng is not None and flip and rng.random() < 0.5:
        video = video.flip(-1)
    return (video - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


@pytest.fixture(scope="module", params=VIDEOS, ids=lambda p: p.stem)
def decoded(request) -> np.ndarray:
    """A few frames of each real video (few: the shared folder holds a 720p one)."""
    data = request.param.read_bytes()
    return decode_pyav(data, clip_indices(probe_pyav(data)[0], num_frames=6, stride=4, rng=None))


@pytest.mark.parametrize("crop_size", [224, 112])
def test_training_crops_and_flips_equal_the_old_order(decoded, crop_size):
    # Rows with a repeat and out of order, as a short video's clip or one of K clips has them.
    rows = [0, 1, 2, 3, 4, 5, 5, 2]
    for seed in range(6):
        new = make_clip(decoded, rows=rows, crop_size=crop_size, rng=random.Random(seed), flip=True)
        assert new.shape == (3, len(rows), crop_size, crop_size)
        assert torch.equal(new, old_order(decoded, rows, crop_size=crop_size, rng=random.Random(seed), flip=True))
    # The seeds draw both a flipped and an unflipped clip.
    assert any(_flipped(seed) for seed in range(6)) and not all(_flipped(seed) for seed in range(6))


def _flipped(seed: int) -> bool:
    rng = random.Random(seed)
    multiscale_crop_box(144, 176, rng)  # the box is drawn first; its draws do not depend on the size
    return rng.random() < 0.5


def test_evaluation_centre_crop_equals_the_old_order(decoded):
    rows = list(range(len(decoded)))
    short = min(decoded.shape[1:3])
    for crop_size in (224, short):  # at the short side, the resize is the identity
        assert torch.equal(make_clip(decoded, crop_size=crop_size, rng=None, flip=False), old_order(decoded, rows, crop_size=crop_size, rng=None, flip=False))


@pytest.mark.parametrize("frames", [1, 3, 16])
def test_odd_sizes_equal_the_old_order(frames):
    # Small and odd crops, where torch's kernel rounds with the shape of its input.
    clip = np.random.default_rng(frames).integers(0, 256, (frames, 90, 120, 3), dtype=np.uint8)
    rows = list(range(frames))
    for seed in range(4):
        for crop_size in (64, 75):
            new = make_clip(clip, crop_size=crop_size, rng=random.Random(seed), flip=True)
            assert torch.equal(new, old_order(clip, rows, crop_size=crop_size, rng=random.Random(seed), flip=True))


@pytest.mark.parametrize("train", [True, False])
def test_decoder_clips_equal_the_old_order(train):
    data = VIDEOS[0].read_bytes()
    decoder = VideoDecoder(num_frames=8, stride=3, crop_size=96, clips_per_video=2, train=train, flip=True)
    (_, clips), rng = decoder.cut({"mp4": data}, random.Random(5)), random.Random(5)
    # Replay the decoder's draws: K clips' indices, then per clip its box and flip.
    indices = [clip_indices(probe_pyav(data)[0], num_frames=8, stride=3, rng=rng if train else None) for _ in range(2)]
    union = sorted({i for clip in indices for i in clip})
    frames = decode_pyav(data, union)
    for (got_indices, got), want_indices in zip(clips, indices):
        assert got_indices == want_indices
        rows = [union.index(i) for i in want_indices]
        assert torch.equal(got, old_order(frames, rows, crop_size=96, rng=rng if train else None, flip=True))
