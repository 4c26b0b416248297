"""Audio-visual samples for joint pretraining, the CAV-MAE way (Gong et al., ICLR 2023).

CAV-MAE pairs each video clip with the log-mel fbank of the audio playing during it: on
AudioSet / VGGSound every clip is 10 s and it takes the whole 10 s of audio with frames drawn
from the same 10 s. Our videos have any length and ``VideoDecoder`` cuts short clips (16
frames x stride 4 span 61 frames, 2.5 s at 24 fps), so the audio window (``audio_seconds``, by
default the frontend's own input: 1024 frames = 10.255 s) is *centred on the clip*: the clip's
span [first / fps, (last + 1) / fps) in video time and the window share their midpoint. Where
the window reaches before the recording's start or past its end it holds silence (zero
samples, fed through the frontend like any other: their frames sit at the log floor, unlike
the frontend's own end padding of fbank frames with ``pad_value``), so it stays centred and
its frames keep their time; a window cropped to the recording would slide audio against frames.

Alignment: the shard builder records in ``json["audio"]["offset"]`` where the FLAC's sample 0
sits in video time (seconds from the video stream's start, which is where the loader counts
frame 0 from); older shards lack it and mean 0. Video time ``t`` is FLAC second ``t - offset``.

Only what a clip needs is decoded: the frames by ``VideoDecoder`` (its seek, limits and crops),
the window's samples by a soundfile seek. A sample without an audio entry still trains: its
``fbank`` is zeros and ``has_audio`` False, for the loss to leave out. Items, per clip::

    "video"        float32 [3, T, S, S]   as VideoDecoder
    "fbank"        float32 [T_a, F]       as AudioDecoder (the frontend's frames and mel bins)
    "has_audio"    bool []                a 0-d tensor, so ``collate`` stacks it to bool [B]
    "clip_start"   float64 []             seconds in video time where the clip begins
    "audio_start"  float64 []             seconds in video time where the window begins (< 0 when
                                          it reaches before the video)
    "label"        str | None
"""

from __future__ import annotations

import random

import torch

from modalmae.data.audio import MAX_WINDOW_VALUES, read_span
from modalmae.data.video import VideoDecoder, probe_pyav, video_field
from modalmae.formats.schema import AUDIO_FORMATS
from modalmae.tokenizers.fbank import AudioFrontend


def audio_entry(sample: dict) -> str | None:
    """The sample's audio entry (``flac`` from ``--extract-audio``), or None when it has none."""
    return next((fmt for fmt in AUDIO_FORMATS if fmt in sample), None)


def centred_window(first: int, last: int, *, fps: float, seconds: float) -> tuple[float, float]:
    """(clip_start, audio_start) in seconds of video time: the window of ``seconds`` centred on
    frames [first, last], which span [first / fps, (last + 1) / fps)."""
    clip_start, clip_end = first / fps, (last + 1) / fps
    return clip_start, (clip_start + clip_end) / 2 - seconds / 2


class AVDecoder:
    """Raw video shard sample -> K items {"video", "fbank", "has_audio", "clip_start",
    "audio_start", "label"}, one per clip the VideoDecoder cuts; picklable for workers."""

    def __init__(
        self, *, video: VideoDecoder, frontend: AudioFrontend, audio_seconds: float | None = None, train: bool = True,
        max_window_values: int = MAX_WINDOW_VALUES,
    ) -> None:
        self.video, self.frontend, self.train, self.max_window_values = video, frontend, train, max_window_values
        # The frontend's exact input length: anything shorter is padded in the fbank domain by
        # the frontend, anything longer cropped, either of which would un-centre the window.
        self.audio_seconds = audio_seconds if audio_seconds is not None else frontend.num_samples() / frontend.sample_rate
        if self.audio_seconds <= 0:
            raise ValueError(f"audio_seconds must be positive, not {self.audio_seconds}")
        # The clips (random or centred, augmented or not) are the VideoDecoder's choice: two
        # flags that could disagree would make an evaluation quietly draw random clips.
        if video.train != train:
            raise ValueError(f"AVDecoder(train={train}) needs a VideoDecoder(train={train}), not train={video.train}")

    def __call__(self, sample: dict, rng: random.Random) -> list[dict]:
        meta, clips = self.video.cut(sample, rng)
        fps = meta.get("fps") or probe_pyav(sample[video_field(sample)])[1]
        entry = audio_entry(sample)
        offset = float((meta.get("audio") or {}).get("offset", 0.0))
        items = []
        for indices, video in clips:
            clip_start, audio_start = centred_window(indices[0], indices[-1], fps=fps, seconds=self.audio_seconds)
            if entry is None:
                fbank = torch.zeros(self.frontend.num_frames, self.frontend.num_mel_bins)  # [T_a, F]
            else:
                wave, rate = read_span(sample[entry], start=audio_start - offset, seconds=self.audio_seconds, max_values=self.max_window_values)  # [C, N]
                fbank = self.frontend(torch.from_numpy(wave), rate)  # [T_a, F]
            items.append({
                "video": video, "fbank": fbank, "has_audio": torch.tensor(entry is not None),
                "clip_start": torch.tensor(clip_start, dtype=torch.float64),
                "audio_start": torch.tensor(audio_start, dtype=torch.float64),
                "label": meta.get("label"),
            })
        return items
