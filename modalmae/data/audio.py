"""Audio samples from shards: decode the bytes, crop a random window, compute the fbank.

Only the samples a window needs are decoded: soundfile seeks inside the in-memory file (wav,
flac, ogg, mp3) to a random start and reads ``AudioFrontend.num_samples()`` samples (scaled for
the file's own rate when it is resampled afterwards). Audio-MAE's AudioSet clips are 10 s, so it
takes the first 1024 frames; on longer recordings a random window is the natural extension.
"""

from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import soundfile as sf
import torch

from modalmae.formats.schema import AUDIO_FORMATS
from modalmae.tokenizers.fbank import AudioFrontend

# A window's samples x channels: 10.24 s of 8 channels at 384 kHz fit (128 MB as float32).
MAX_WINDOW_VALUES = 1 << 25


def audio_field(sample: dict) -> str:
    for fmt in AUDIO_FORMATS:
        if fmt in sample:
            return fmt
    raise ValueError(f"no audio entry (one of {', '.join(AUDIO_FORMATS)}) among {sorted(k for k in sample if not k.startswith('__'))}")


def read_window(data: bytes, *, seconds: float, rng: random.Random | None) -> tuple[np.ndarray, int]:
    """Decode ``seconds`` of audio from a random start (or the start, when rng is None).

    Returns float32 [channels, samples] and the file's sample rate. Shorter files come back
    whole; the frontend pads them. A NaN or inf sample in the window is a ValueError (the
    stream skips the sample), not a NaN loss.
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        want = math.ceil(seconds * f.samplerate)
        start = 0
        if rng is not None and f.frames > want:
            start = rng.randrange(f.frames - want + 1)
            f.seek(start)
        wave = f.read(min(want, f.frames - start), dtype="float32", always_2d=True)
        if wave.shape[0] == 0:
            raise ValueError("no audio samples decoded")
        return _finite(wave).T, f.samplerate


def read_span(data: bytes, *, start: float, seconds: float, max_values: int = MAX_WINDOW_VALUES) -> tuple[np.ndarray, int]:
    """Decode the window [start, start + seconds) seconds of the file, where ``start`` may be
    negative and the window may run past the end: those parts are zeros (silence), so the
    window keeps its place. Only the samples inside the recording are decoded.

    Returns float32 [channels, ceil(seconds * rate)] and the file's sample rate; NaN or inf
    in the window is a ValueError, as in ``read_window``, and so is a window of more than
    ``max_values`` samples x channels (the zeros are sized by the header's rate, not the data).
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        want, first = math.ceil(seconds * f.samplerate), round(start * f.samplerate)
        if want * f.channels > max_values:
            raise ValueError(f"too large: {seconds} s at {f.samplerate} Hz x {f.channels} channels is more than max_values {max_values} samples")
        wave = np.zeros((want, f.channels), dtype=np.float32)  # [N, C]
        lo, hi = max(first, 0), min(first + want, f.frames)
        if hi > lo:
            f.seek(lo)
            got = _finite(f.read(hi - lo, dtype="float32", always_2d=True))
            wave[lo - first : lo - first + got.shape[0]] = got
        return wave.T, f.samplerate


def _finite(wave: np.ndarray) -> np.ndarray:
    # One NaN would make every loss NaN from the step that draws it: the stream skips the sample.
    if bad := wave.size - np.count_nonzero(np.isfinite(wave)):
        raise ValueError(f"{bad} sample(s) in the window are NaN or inf")
    return wave


class AudioDecoder:
    """Raw shard sample -> {"fbank": [T, F], "label": str | None}; picklable for workers."""

    def __init__(self, frontend: AudioFrontend, *, random_crop: bool = True) -> None:
        self.frontend = frontend
        self.random_crop = random_crop
        self.seconds = frontend.num_samples() / frontend.sample_rate

    @classmethod
    def from_checkpoint(cls, config: dict, *, train: bool) -> AudioDecoder:
        """The decoder a model folder's config.json implies: the filterbank it was trained with
        (``extra.frontend``), a random window in training, the first one otherwise."""
        frontend = config.get("extra", {}).get("frontend")
        if frontend is None:
            raise ValueError("this audio checkpoint does not record its filterbank settings (extra.frontend)")
        return cls(AudioFrontend(**frontend), random_crop=train)

    def __call__(self, sample: dict, rng: random.Random) -> dict:
        wave, sr = read_window(sample[audio_field(sample)], seconds=self.seconds, rng=rng if self.random_crop else None)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        return {"fbank": self.frontend(torch.from_numpy(wave), sr), "label": meta.get("label")}
