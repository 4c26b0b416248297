"""The decoder's opt-in token motion (``VideoDecoder(motion=True)``, ``modalmae.data.motion``):
shape, off by default, following the flip, and known shifts recovered at token resolution."""

import io
import random

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, moving_bar
from PIL import Image

from modalmae.data.motion import block_motion, clip_motion
from modalmae.data.video import ClipOptions, VideoDecoder

CARPHONE = {"mp4": (DATA / "video" / "carphone_pristine.mp4").read_bytes()}


def test_motion_is_opt_in_with_one_field_per_clip():
    plain = VideoDecoder(num_frames=16, stride=4, crop_size=224)(CARPHONE, random.Random(0))
    assert set(plain[0]) == {"video", "label"}  # unchanged without the flag
    items = VideoDecoder(num_frames=16, stride=4, crop_size=224, clips_per_video=2, motion=True)(CARPHONE, random.Random(0))
    assert len(items) == 2
    for item in items:
        assert item["motion"].shape == (8, 14, 14, 2) and item["motion"].dtype == torch.float32
        assert item["motion"].isfinite().all() and (item["motion"][-1] == 0).all()  # no slice after the last
        assert item["motion"].abs().max() <= 1.5  # the search range, in tokens
    other = VideoDecoder(num_frames=8, stride=2, crop_size=96, motion=True, tubelet_size=1, patch_size=8)(CARPHONE, random.Random(0))
    assert other[0]["motion"].shape == (8, 12, 12, 2)
    with pytest.raises(ValueError, match="divisible"):
        VideoDecoder(num_frames=15, motion=True)


def test_clip_options_make_a_decoder_with_motion_on_request():
    assert not ClipOptions().video_decoder().motion
    decoder = ClipOptions(num_frames=8, input_size=96).video_decoder(motion=True, tubelet_size=2, patch_size=8)
    assert decoder.motion and (decoder.tubelet_size, decoder.patch_size) == (2, 8)
    assert decoder(CARPHONE, random.Random(0))[0]["motion"].shape == (4, 12, 12, 2)


def test_a_flipped_clip_has_the_mirrored_motion():
    """Same seed, flips on and off: where the clip came out flipped, its motion is the other's
    mirrored along x with dx negated (the field is matched on the output clip)."""
    flipping = VideoDecoder(num_frames=16, stride=4, crop_size=224, flip=True, motion=True)
    still = VideoDecoder(num_frames=16, stride=4, crop_size=224, flip=False, motion=True)
    flipped = 0
    for seed in range(8):
        a, b = flipping(CARPHONE, random.Random(seed))[0], still(CARPHONE, random.Random(seed))[0]
        if torch.equal(a["video"], b["video"]):
            continue
        assert torch.equal(a["video"], b["video"].flip(-1))
        mirrored = b["motion"].flip(2) * torch.tensor([-1.0, 1.0])  # [T', H', W', (dx, dy)]
        assert b["motion"].abs().max() > 0.5  # something moves
        torch.testing.assert_close(a["motion"], mirrored, atol=1e-4, rtol=0)
        flipped += 1
    assert flipped >= 2


def test_the_moving_bar_moves_one_token_per_slice(tmp_path):
    """conftest's bar (8 px wide, white on black) moves 4 px a frame: 6 frames 2 apart, one frame
    per slice, 8-pixel tokens of the 48 x 48 centre crop -> the bar's token moves +1 token in x
    per slice; the still black background does not move (the token the bar is about to cover is
    ambiguous, black matching black either side, and is not checked)."""
    data = moving_bar(tmp_path / "bar.mp4", "mp4", codec="mpeg4", frames=12).read_bytes()
    decode = VideoDecoder(num_frames=6, stride=2, crop_size=48, train=False, flip=False, motion=True, tubelet_size=1, patch_size=8)
    item = decode({"mp4": data}, random.Random(0))[0]
    motion = item["motion"]  # [6, 6, 6, 2]; frames 0, 2, ..., 10: the bar's crop token at slice t is t - 1
    for t in range(1, 5):
        bar = t - 1
        torch.testing.assert_close(motion[t, :, bar], torch.tensor([1.0, 0.0]).expand(6, 2), atol=0.15, rtol=0)
        assert (motion[t, :, :bar] == 0).all() and (motion[t, :, t + 1 :] == 0).all()


def pan_clip(shift: tuple[float, float], frames: int = 40) -> bytes:
    """A real photograph (tests/data/images/chelsea.png) panned by ``shift`` pixels (dx, dy) a
    frame, 320 x 240, H.264."""
    photo = torch.from_numpy(np.array(Image.open(DATA / "images" / "chelsea.png").convert("RGB"))).permute(2, 0, 1).float()
    _, height, width = photo.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            # content moves by +shift a frame: the window onto the photo moves by -shift
            xs = (torch.arange(320) + 60 - shift[0] * i + 0.5) / width * 2 - 1
            ys = (torch.arange(240) + 30 - shift[1] * i + 0.5) / height * 2 - 1
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]
            frame = F.grid_sample(photo[None], grid, align_corners=False)[0]
            picture = frame.clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def test_a_known_pan_is_recovered_at_token_resolution():
    """(+1.5, -0.75) px a frame, 4 frames from slice to slice (16 frames 2 apart, tubes of 2),
    the 240-pixel centre crop resized to 224 -> (+0.35, -0.175) tokens of 16 pixels a slice."""
    data = pan_clip((1.5, -0.75))
    decode = VideoDecoder(num_frames=16, stride=2, crop_size=224, train=False, flip=False, motion=True)
    motion = decode({"mp4": data}, random.Random(0))[0]["motion"]
    expected = torch.tensor([1.5, -0.75]) * 4 * (224 / 240) / 16
    inner = motion[:-1, 1:-1, 1:-1].reshape(-1, 2)  # the border tokens see content entering the frame
    error = (inner - expected).norm(dim=-1)
    print(f"\npan: expected {expected.numpy().round(3)} tokens/slice, median estimate {inner.median(0).values.numpy().round(3)}, "
          f"mean error {error.mean():.3f}, within 0.15 token: {(error < 0.15).float().mean():.1%}")
    assert (inner.median(0).values - expected).abs().max() < 0.06  # measured 0.028
    assert (error < 0.15).float().mean() > 0.9  # measured 98%


def test_block_motion_on_a_plain_shift_and_flat_images():
    torch.manual_seed(0)
    texture = F.avg_pool2d(torch.rand(1, 1, 64, 96), 3, 1, 1)[0, 0]  # smooth random texture
    moved = torch.roll(texture, shifts=(-4, 8), dims=(0, 1))  # content moves 8 px right, 4 px up
    field = block_motion(torch.stack([texture, moved]), patch_size=16)  # [1, 4, 6, 2]
    torch.testing.assert_close(field[0, 1:-1, 1:-1], torch.tensor([0.5, -0.25]).expand(2, 4, 2), atol=0.05, rtol=0)
    flat = clip_motion(torch.zeros(3, 4, 32, 32), tubelet_size=2, patch_size=16)
    assert flat.shape == (2, 2, 2, 2) and (flat == 0).all()
    with pytest.raises(ValueError, match="tubes of 3"):
        clip_motion(torch.zeros(3, 4, 32, 32), tubelet_size=3)
