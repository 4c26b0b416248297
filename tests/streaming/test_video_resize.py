"""Clips are resized as VideoMAE's reference resizes them: its ``GroupMultiScaleCrop`` crops each
8-bit frame with Pillow and resizes it with ``Image.BILINEAR`` (antialiased when it shrinks), then
``ToTorchFormatTensor`` divides by 255 and ``GroupNormalize`` applies the ImageNet statistics.
``make_clip`` does the same with torch's uint8 kernel, whose fixed-point rounding differs from
Pillow's by a level or two on a few percent of the values (measured below). The reference below is that chain, frame by frame in Pillow, on real
clips (tests/data/video, and /work/shared/media/video where that folder exists) and on noise."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import DATA
from modalmae.data.video import VideoDecoder, clip_indices, decode_pyav, make_clip, multiscale_crop_box, probe_pyav
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD

SHARED = Path(__file__).resolve().parents[3] / "shared" / "media" / "video"
VIDEOS = [DATA / "video" / "carphone_pristine.mp4"] + sorted(SHARED.glob("*.mp4"))
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def reference(frames: np.ndarray, rows: list[int], *, crop_size: int, rng: random.Random | None, flip: bool) -> torch.Tensor:
    """The reference chain, each frame a Pillow image: crop, resize, flip, /255, normalize."""
    height, width = frames.shape[1:3]
    if rng is not None:
        top, left, h, w = multiscale_crop_box(height, width, rng)
    else:
        h = w = min(height, width)
        top, left = (height - h) // 2, (width - w) // 2
    images = [Image.fromarray(frames[r]).crop((left, top, left + w, top + h)).resize((crop_size, crop_size), Image.Resampling.BILINEAR) for r in rows]
    if rng is not None and flip and rng.random() < 0.5:
        images = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
    video = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(3, 0, 1, 2).float().div(255)
    return (video - MEAN) / STD


def levels(clip: torch.Tensor) -> torch.Tensor:
    """A normalized clip back in 8-bit levels (0-255, as float)."""
    return (clip * STD + MEAN) * 255


def assert_near_reference(got: torch.Tensor, want: torch.Tensor, *, share: float) -> None:
    """Every value within 2 levels of the reference, at most ``share`` of them off by any level
    at all (the normalization's own float rounding aside), and 0.05 levels off on average."""
    assert got.shape == want.shape and got.dtype == torch.float32
    off = (levels(got) - levels(want)).abs()
    assert off.max() <= 2 + 1e-3, f"{off.max():.3f} levels from the reference"
    assert (off > 0.5).float().mean() <= share, f"{(off > 0.5).float().mean():.2%} of the values differ by a level"
    assert off.mean() < 0.05, f"{off.mean():.3f} levels from the reference on average"


@pytest.fixture(scope="module", params=VIDEOS, ids=lambda p: p.stem)
def decoded(request) -> np.ndarray:
    """A few frames of each real video (few: the shared folder holds a 720p one)."""
    data = request.param.read_bytes()
    return decode_pyav(data, clip_indices(probe_pyav(data)[0], num_frames=6, stride=4, rng=None))


@pytest.mark.parametrize("crop_size", [224, 112])
def test_training_crops_and_flips_follow_the_reference(decoded, crop_size):
    # Rows with a repeat and out of order, as a short video's clip or one of K clips has them.
    rows = [0, 1, 2, 3, 4, 5, 5, 2]
    for seed in range(6):
        got = make_clip(decoded, rows=rows, crop_size=crop_size, rng=random.Random(seed), flip=True)
        assert got.shape == (3, len(rows), crop_size, crop_size)
        # Measured on these clips: at most 2 levels, on 0.1 % (720p) to 2.4 % (176 x 144) of the values.
        assert_near_reference(got, reference(decoded, rows, crop_size=crop_size, rng=random.Random(seed), flip=True), share=0.04)
    # The seeds draw both a flipped and an unflipped clip.
    assert any(_flipped(seed) for seed in range(6)) and not all(_flipped(seed) for seed in range(6))


def _flipped(seed: int) -> bool:
    rng = random.Random(seed)
    multiscale_crop_box(144, 176, rng)  # the box is drawn first; its draws do not depend on the size
    return rng.random() < 0.5


def test_evaluation_centre_crop_follows_the_reference(decoded):
    rows = list(range(len(decoded)))
    want = reference(decoded, rows, crop_size=224, rng=None, flip=False)
    assert_near_reference(make_clip(decoded, crop_size=224, rng=None, flip=False), want, share=0.04)
    # At the short side nothing is resized: the reference's values to float rounding.
    short = min(decoded.shape[1:3])
    torch.testing.assert_close(make_clip(decoded, crop_size=short, rng=None, flip=False), reference(decoded, rows, crop_size=short, rng=None, flip=False), rtol=0, atol=1e-6)


@pytest.mark.parametrize("frames", [1, 3, 16])
def test_noise_shrunk_and_grown_follows_the_reference(frames):
    # Small and odd sizes, shrinking (where antialiasing matters) and growing, on noise, where
    # rounding differs most: measured, at most 2 levels, on 0.5 to 4.1 % of the values.
    clip = np.random.default_rng(frames).integers(0, 256, (frames, 90, 120, 3), dtype=np.uint8)
    rows = list(range(frames))
    for seed in range(4):
        for crop_size in (40, 75, 200):
            got = make_clip(clip, crop_size=crop_size, rng=random.Random(seed), flip=True)
            assert_near_reference(got, reference(clip, rows, crop_size=crop_size, rng=random.Random(seed), flip=True), share=0.06)


def test_shrinking_is_antialiased_as_the_reference():
    """Bilinear interpolation without antialiasing (what clips got before, in float) samples
    a shrunk frame at a few points and aliases: on fine detail it lands tens of levels from
    the reference. Ours averages over the footprint as Pillow does."""
    clip = np.random.default_rng(0).integers(0, 256, (2, 360, 480, 3), dtype=np.uint8)
    rows = [0, 1]
    want = levels(reference(clip, rows, crop_size=112, rng=None, flip=False))
    got = levels(make_clip(clip, crop_size=112, rng=None, flip=False))
    aliased = F.interpolate(torch.from_numpy(clip[:, :, 60:420]).permute(3, 0, 1, 2).float(), size=(112, 112), mode="bilinear", align_corners=False)
    assert (got - want).abs().mean() < 0.05
    assert (aliased - want).abs().mean() > 10


@pytest.mark.parametrize("train", [True, False])
def test_decoder_clips_follow_the_reference(train):
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
        assert_near_reference(got, reference(frames, rows, crop_size=96, rng=rng if train else None, flip=True), share=0.04)
