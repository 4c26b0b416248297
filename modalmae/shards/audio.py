"""The audio modality of the shard builder: which files, how they are checked, what is stored.

Files libsndfile reads (wav, flac, ogg, opus, mp3) are decoded in full to prove they are
intact and stored as their original bytes. Other containers (mp4, mkv, webm, m4a, ...) go
through PyAV and their first audio track is stored as FLAC, so the loader needs only
soundfile. ``--transcode`` stores every sample as mono 16-bit FLAC at one sample rate.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from modalmae.shards.types import Sample, Skip

SNDFILE_FORMATS = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "opus", ".mp3": "mp3"}
CONTAINERS = {".mp4", ".m4a", ".m4v", ".mov", ".mkv", ".mka", ".webm", ".avi", ".aac", ".wma", ".3gp", ".mpg", ".mpeg", ".ts"}
EXTENSIONS = frozenset(SNDFILE_FORMATS) | CONTAINERS
# Lossy codecs report a frame count from headers that decoding can miss by up to one packet.
PACKET_SLACK = {"mp3": 1152, "ogg": 2048, "opus": 2048}


@dataclass(frozen=True)
class AudioOptions:
    transcode: bool = False
    sample_rate: int = 16000


def wav_data_shortfall(data: bytes) -> int:
    """Bytes missing from a RIFF/WAVE file's data chunk (0 when intact or not a plain WAV).

    libsndfile silently clamps a truncated WAV to the bytes present, so the header is the only
    witness of a cut-off recording.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"data":
            return 0 if size == 0xFFFFFFFF else max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)
    return 0


class Truncated(ValueError):
    """The file holds less audio than its header declares."""


def decode_sndfile(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode everything; raise ValueError when the file is shorter than it says."""
    missing = wav_data_shortfall(data) if fmt == "wav" else 0
    if missing:
        raise Truncated(f"truncated: the WAV header promises {missing} more bytes of audio than the file holds")
    with sf.SoundFile(io.BytesIO(data)) as f:
        declared, rate = f.frames, f.samplerate
        wave = f.read(dtype="float32", always_2d=True)  # [N, C]
    if declared - wave.shape[0] > PACKET_SLACK.get(fmt, 0):
        raise Truncated(f"truncated: header says {declared} frames, decoded {wave.shape[0]}")
    return wave, rate


def decode_container(data: bytes) -> tuple[np.ndarray, int]:
    """First audio track of anything PyAV opens -> float32 [N, C]."""
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise LookupError("no audio stream")
        stream = container.streams.audio[0]
        # Decode to planar float at the stream's own rate and layout: one array per frame.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # [C, n]
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        raise ValueError("the audio stream holds no decodable samples")
    return np.concatenate(chunks, axis=1).T.astype(np.float32), stream.rate


def encode_flac(wave: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def to_mono_rate(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """[N, C] -> [N', 1] mono at ``target`` Hz (our torch sinc resampler, as in the loader)."""
    import torch

    from modalmae.tokenizers.fbank import resample

    mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=1)))
    return resample(mono, orig_freq=rate, new_freq=target).numpy()[:, None]


def prepare(path: Path, relpath: str, options: AudioOptions) -> Sample | Skip:
    data = path.read_bytes()
    if not data:
        return Skip(relpath, "empty file")
    fmt = SNDFILE_FORMATS.get(path.suffix.lower())
    try:
        if fmt is not None:
            wave, rate = decode_sndfile(data, fmt)
        else:
            wave, rate = decode_container(data)
            fmt, data = "flac", None  # containers are stored as their audio track
    except (LookupError, Truncated) as e:
        return Skip(relpath, str(e).strip("'\""))
    except sf.LibsndfileError as e:
        return Skip(relpath, f"not decodable audio (libsndfile: {e.error_string})")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason to skip, not to stop
        return Skip(relpath, f"not decodable audio ({type(e).__name__}: {e})")
    if wave.shape[0] == 0:
        return Skip(relpath, "no audio samples")
    if options.transcode:
        wave, rate = to_mono_rate(wave, rate, options.sample_rate), options.sample_rate
        fmt, data = "flac", None
    if data is None:
        data = encode_flac(wave, rate)
    meta = {
        "source": relpath, "format": fmt, "sample_rate": int(rate), "channels": int(wave.shape[1]),
        "frames": int(wave.shape[0]), "duration": round(wave.shape[0] / rate, 6),
    }
    return Sample(files={fmt: data}, meta=meta)
