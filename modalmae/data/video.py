"""Video clips from shard bytes, the VideoMAE way: sparse frames, multi-scale crops, few decodes.

Sampling (VideoMAE): ``num_frames`` frames ``stride`` apart (16 x 4 for Kinetics-like data,
stride 2 for SSv2-like), from a random start; a video shorter than the span repeats its last
frame. Only the frames a clip needs are decoded: the decoder seeks to the keyframe before the
first one and stops after the last. With repeated augmentation (``clips_per_video`` K, VideoMAE
V2 / MAE-ST), one decode serves K clips, each with its own start, crop and flip.

Augmentation: VideoMAE's multi-scale crop (``GroupMultiScaleCrop(224, [1, .875, .75, .66])``:
a crop whose sides are each one of those fractions of the short side, neighbouring fractions at
most one apart, at one of 13 fixed positions), resized to ``crop_size`` bilinearly in 8 bits as
the reference's Pillow resize (antialiased when shrinking); an optional horizontal flip;
ImageNet normalization. Output clips are float32 [C, T, H, W].

Motion (opt-in, ``motion=True``, for MGMAE's motion-guided masking): each item also gets
``"motion"``, float32 [T', H', W', 2], the clip's token displacement from each time slice to
the next (``modalmae.data.motion``), matched on the output clip itself so it follows the crop,
resize and flip with nothing to transform.

Backends: PyAV (default, bundles FFmpeg); decord and torchcodec behind the same function when
installed (``--video-backend``).

Bounded before decoding: the frame size is read from the container header and a frame of more
than ``max_pixels`` refused (ValueError: the stream skips the sample) before any backend
decodes one, so a sample holds at most K x T frames of ``max_pixels`` as uint8 (16 x 25 MB at
4K) and one clip's uint8 crop at a time, and only the resized clip becomes float. PyAV also
holds every decoded frame to the limit (a stream may change size mid-way) and decodes at most
``max_frames`` frames per sample.
"""

from __future__ import annotations

import bisect
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modalmae.data.motion import clip_motion
from modalmae.flags import arg
from modalmae.formats.schema import MAX_FRAME_PIXELS, MAX_FRAMES, VIDEO_FORMATS
from modalmae.tokenizers.base import IMAGENET_MEAN, IMAGENET_STD

SCALES = (1.0, 0.875, 0.75, 0.66)


def video_field(sample: dict) -> str:
    for fmt in VIDEO_FORMATS:
        if fmt in sample:
            return fmt
    raise ValueError(f"no video entry (one of {', '.join(VIDEO_FORMATS)}) among {sorted(k for k in sample if not k.startswith('__'))}")


def clip_indices(num_video_frames: int, *, num_frames: int, stride: int, rng: random.Random | None) -> list[int]:
    """Frame indices of one clip: a random start (or centred when rng is None); short videos
    repeat their last frame."""
    span = (num_frames - 1) * stride + 1
    if num_video_frames >= span:
        start = rng.randint(0, num_video_frames - span) if rng is not None else (num_video_frames - span) // 2
        return [start + i * stride for i in range(num_frames)]
    return [min(i * stride, num_video_frames - 1) for i in range(num_frames)]


# ----------------------------------------------------------------------------- decoding


def _frame_rate(stream) -> float:
    """Frames per second from the header (Ogg states no average rate: FFmpeg's guess then)."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise ValueError("the video stream states no frame rate")
    return float(rate)


def _frame_count(stream) -> int:
    if stream.frames:
        return int(stream.frames)
    if stream.duration:
        return int(stream.duration * stream.time_base * _frame_rate(stream))
    raise ValueError("the video stream has no frame count or duration")


def probe_pyav(data: bytes) -> tuple[int, float]:
    """(frame count, frames per second) from the container header."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return _frame_count(stream), _frame_rate(stream)


def frame_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the video stream from the container header; nothing is decoded."""
    import av

    with av.open(io.BytesIO(data)) as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height


def check_frame_size(width: int, height: int, max_pixels: int, what: str = "frames") -> None:
    """Refuse frames above ``max_pixels`` (an 8192 x 8192 RGB frame is 200 MB, 800 MB as float)."""
    if width * height > max_pixels:
        raise ValueError(f"too large: {what} of {width} x {height} = {width * height} pixels, more than max_pixels {max_pixels}")


def _collect(data: bytes, wanted: list[int], *, seek: bool, max_pixels: int, max_frames: int) -> tuple[dict[int, np.ndarray], tuple | None]:
    """Frames at the sorted indices ``wanted`` (those the stream has), and the last frame decoded
    as (index, frame); from the keyframe before the first wanted one (``seek``) or the start."""
    import av

    frames: dict[int, np.ndarray] = {}
    last, decoded = None, 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps, base = _frame_rate(stream), stream.time_base
        start = stream.start_time or 0
        if seek:
            container.seek(start + int(round(wanted[0] / fps / base)), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            check_frame_size(frame.width, frame.height, max_pixels, what="a decoded frame")
            decoded += 1
            if decoded > max_frames:
                raise ValueError(f"too long: more than max_frames {max_frames} frames decoded before reaching frame {wanted[-1]}")
            if frame.pts is None:
                continue
            index = int(round(float((frame.pts - start) * base) * fps))
            last = (index, frame)
            if index in wanted and index not in frames:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    return frames, last


def decode_pyav(data: bytes, indices: list[int], *, max_pixels: int = MAX_FRAME_PIXELS, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """uint8 [N, H, W, 3] frames at ``indices`` (any order, repeats allowed), decoding only from
    the keyframe before the first wanted frame up to the last one. Where a container's seek
    overshoots (or finds nothing, as in MPEG-TS without an index), it decodes from the start.
    ValueError for a frame above ``max_pixels``, or past ``max_frames`` frames decoded."""
    wanted = sorted(set(indices))
    limits = {"max_pixels": max_pixels, "max_frames": max_frames}
    frames, last = _collect(data, wanted, seek=wanted[0] > 0, **limits)
    if wanted[0] > 0 and (last is None or min(frames, default=last[0]) > wanted[0]):
        frames, last = _collect(data, wanted, seek=False, **limits)
    if last is None:
        raise ValueError("no frame decoded")
    if last[0] < wanted[-1] and last[0] not in frames:
        # The stream ended before the last wanted frame: the real last frame stands in.
        frames[last[0]] = last[1].to_ndarray(format="rgb24")
    # A frame missing from the stream (a header overstating the count) repeats the one before.
    decoded = sorted(frames)
    return np.stack([frames[decoded[max(bisect.bisect_right(decoded, i) - 1, 0)]] for i in indices])


def decode_decord(data: bytes, indices: list[int]) -> np.ndarray:
    try:
        import decord
    except ImportError as e:
        raise ImportError("--video-backend decord needs the decord package: pip install decord") from e
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    return reader.get_batch([min(i, len(reader) - 1) for i in indices]).asnumpy()


def decode_torchcodec(data: bytes, indices: list[int]) -> np.ndarray:
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as e:
        raise ImportError("--video-backend torchcodec needs the torchcodec package: pip install torchcodec") from e
    decoder = VideoDecoder(data)
    n = decoder.metadata.num_frames
    frames = decoder.get_frames_at([min(i, n - 1) for i in indices]).data  # [N, C, H, W] uint8
    return frames.permute(0, 2, 3, 1).numpy()


BACKENDS: dict[str, Callable[[bytes, list[int]], np.ndarray]] = {
    "pyav": decode_pyav, "decord": decode_decord, "torchcodec": decode_torchcodec,
}


# ----------------------------------------------------------------------------- augmentation


def multiscale_crop_box(height: int, width: int, rng: random.Random, *, max_distort: int = 1) -> tuple[int, int, int, int]:
    """(top, left, h, w) of VideoMAE's GroupMultiScaleCrop with its 13 fixed positions."""
    base = min(height, width)
    sizes = [int(base * s) for s in SCALES]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    crop_h, crop_w = rng.choice(pairs)
    dy, dx = (height - crop_h) // 4, (width - crop_w) // 4
    offsets = [
        (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),  # corners and centre
        (2, 0), (2, 4), (0, 2), (4, 2),  # edge middles
        (1, 1), (1, 3), (3, 1), (3, 3),  # quarter points
    ]
    oy, ox = rng.choice(offsets)
    return oy * dy, ox * dx, crop_h, crop_w


# The normalization (x / 255 - mean) / std as one scale and shift per channel (float64 constants
# rounded once to float32): within 5e-7 of the three-step form, one pass fewer.
_SCALE = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(3, 1, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1, 1)


def normalize_clip(clip: torch.Tensor) -> torch.Tensor:
    """8-bit clips [..., 3, T, H, W] (one or a batch, on any device) -> ImageNet-normalized float32."""
    if clip.dtype != torch.uint8:
        raise TypeError(f"normalize_clip takes uint8 clips, not {clip.dtype}")
    return clip.float().mul_(_SCALE.to(clip.device)).add_(_SHIFT.to(clip.device))


def make_clip(
    frames: np.ndarray, *, crop_size: int, rng: random.Random | None, flip: bool, rows: list[int] | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalized float32 [3, T, crop, crop], from the frames at ``rows``
    (all N in order when None; T = len(rows)); ``normalize=False``: the uint8 clip, which
    ``normalize_clip`` turns into the same floats later (on the training device).

    With rng: multi-scale crop + optional flip; without (evaluation): centre crop of the short side.
    The crop is resized as VideoMAE's reference resizes it (Pillow's bilinear filter on 8-bit
    frames, antialiased when it shrinks): by torch's uint8 kernel, a few times faster than
    Pillow and within 2 levels of it (on 0.1-2.4 % of the values of real clips: their fixed-point
    rounding differs); a crop already at ``crop_size`` is kept as it is. The flip is made on the
    8-bit clip too, so only the output ever becomes float.
    """
    rows = list(range(len(frames))) if rows is None else list(rows)
    _, height, width, _ = frames.shape
    if rng is not None:
        top, left, h, w = multiscale_crop_box(height, width, rng)
    else:
        h = w = min(height, width)
        top, left = (height - h) // 2, (width - w) // 2
    clip = torch.from_numpy(frames[rows, top : top + h, left : left + w]).permute(0, 3, 1, 2)  # [T, C, h, w], channels last
    if (h, w) != (crop_size, crop_size):
        clip = F.interpolate(clip, size=(crop_size, crop_size), mode="bilinear", antialias=True, align_corners=False)
    if rng is not None and flip and rng.random() < 0.5:
        clip = clip.flip(-1)
    clip = clip.transpose(0, 1).contiguous()
    return normalize_clip(clip) if normalize else clip


class VideoDecoder:
    """Raw shard sample -> K clip items {"video": [3, T, S, S], "label"} (+ "motion"
    [T / tubelet_size, S / patch_size, S / patch_size, 2] with ``motion=True``); picklable for workers.

    ``eight_bit``: the clips stay uint8 (resized and flipped, not normalized), a quarter of the
    bytes through the loader's shared memory; ``modalmae.modalities.model_input`` normalizes
    them on the device (``normalize_clip``), to the same values. The recipes train this way.
    """

    def __init__(
        self, *, num_frames: int = 16, stride: int = 4, crop_size: int = 224, clips_per_video: int = 1,
        flip: bool = True, backend: str = "pyav", train: bool = True, max_pixels: int = MAX_FRAME_PIXELS, max_frames: int = MAX_FRAMES,
        motion: bool = False, tubelet_size: int = 2, patch_size: int = 16, eight_bit: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if motion and (num_frames % tubelet_size or crop_size % patch_size):
            raise ValueError(f"motion needs clips of {num_frames} x {crop_size}^2 divisible into {tubelet_size} x {patch_size}^2 tubes")
        self.motion, self.tubelet_size, self.patch_size = motion, tubelet_size, patch_size
        self.num_frames, self.stride, self.crop_size = num_frames, stride, crop_size
        self.clips_per_video, self.flip, self.backend, self.train = clips_per_video, flip, backend, train
        self.max_pixels, self.max_frames, self.eight_bit = max_pixels, max_frames, eight_bit

    @classmethod
    def from_checkpoint(cls, config: dict, *, train: bool, sampling_rate: int | None = None) -> VideoDecoder:
        """The decoder a model folder's config.json implies: the tokenizer's clip size, the
        frame stride it was trained with (``extra.video.sampling_rate``, 4 if unrecorded; or
        ``sampling_rate``), VideoMAE's augmentation in training, the centre clip otherwise."""
        tok = config["tokenizer"]["config"]
        stride = sampling_rate or config.get("extra", {}).get("video", {}).get("sampling_rate", 4)
        return cls(num_frames=tok["num_frames"], stride=stride, crop_size=tok["image_size"][0], train=train, flip=train)

    def decode(self, data: bytes, indices: list[int]) -> np.ndarray:
        """uint8 [N, H, W, 3] by the backend; PyAV's decoding is bounded frame by frame too."""
        if self.backend == "pyav":
            return decode_pyav(data, indices, max_pixels=self.max_pixels, max_frames=self.max_frames)
        return BACKENDS[self.backend](data, indices)

    def cut(self, sample: dict, rng: random.Random) -> tuple[dict, list[tuple[list[int], torch.Tensor]]]:
        """The sample's json, and per clip its frame indices (frame i is at i / fps from the
        stream's start) with its [3, T, S, S] tensor (float32, uint8 when ``eight_bit``); one
        decode serves all K clips."""
        data = sample[video_field(sample)]
        check_frame_size(*frame_size(data), self.max_pixels)  # before any backend decodes a frame
        meta = json.loads(sample["json"]) if "json" in sample else {}
        total = meta.get("frames") or probe_pyav(data)[0]
        crop_rng = rng if self.train else None
        clips = [clip_indices(total, num_frames=self.num_frames, stride=self.stride, rng=crop_rng) for _ in range(self.clips_per_video)]
        union = sorted({i for clip in clips for i in clip})
        frames = self.decode(data, union)  # [len(union), H, W, 3]
        where = {index: row for row, index in enumerate(union)}
        return meta, [
            (clip, make_clip(frames, rows=[where[i] for i in clip], crop_size=self.crop_size, rng=crop_rng, flip=self.flip, normalize=not self.eight_bit))
            for clip in clips
        ]

    def __call__(self, sample: dict, rng: random.Random) -> list[dict]:
        meta, clips = self.cut(sample, rng)
        items = [{"video": video, "label": meta.get("label")} for _, video in clips]
        if self.motion:
            for item in items:
                video = normalize_clip(item["video"]) if self.eight_bit else item["video"]
                item["motion"] = clip_motion(video, tubelet_size=self.tubelet_size, patch_size=self.patch_size)
        return items


@dataclass
class ClipOptions:
    """The clip flags of the recipes that read video (``recipes/video_mae.py``, ``av_mae.py``)."""

    num_frames: int = arg(16, "frames per clip")
    sampling_rate: int = arg(4, "stride between sampled frames (4 for Kinetics-like data, 2 for SSv2-like)")
    input_size: int = arg(224, "clips are multi-scale cropped and resized to this square size")
    flip: bool = arg(True, "random horizontal flips (turn off for direction-sensitive data such as SSv2)")
    video_backend: str = arg("pyav", "decoder: pyav (bundled FFmpeg), decord or torchcodec (if installed)", choices=tuple(BACKENDS))
    max_frame_pixels: int = arg(MAX_FRAME_PIXELS, "skip videos whose frames have more pixels, before decoding them (3840 x 2160 = 4K; as build_shards.py's flag)")
    max_frames: int = arg(MAX_FRAMES, "skip a video once decoding one sample's clips takes more frames than this (keyframes far apart)")

    def video_decoder(
        self, *, train: bool = True, clips_per_video: int = 1, motion: bool = False, tubelet_size: int = 2, patch_size: int = 16,
        eight_bit: bool = False,
    ) -> VideoDecoder:
        """The decoder these flags describe; with ``motion`` each clip's token motion too, on the
        tokenizer's grid (``tubelet_size``, ``patch_size``); ``eight_bit``: uint8 clips (see
        ``VideoDecoder``)."""
        return VideoDecoder(
            num_frames=self.num_frames, stride=self.sampling_rate, crop_size=self.input_size, clips_per_video=clips_per_video,
            flip=self.flip, backend=self.video_backend, train=train, max_pixels=self.max_frame_pixels, max_frames=self.max_frames,
            motion=motion, tubelet_size=tubelet_size, patch_size=patch_size, eight_bit=eight_bit,
        )
