"""The audio modality of the shard builder: which files, how they are checked, what is stored.

Follows the Audio-MAE data setup: one clip per sample, decoded later into a Kaldi fbank by
``modalmae.data.audio``, which reads samples with soundfile only. So:

- files libsndfile reads (wav, flac, ogg, opus, mp3) are decoded in full to prove they are
  intact, and stored as their original bytes;
- other containers (mp4, mkv, webm, m4a, ...), and sndfile-type files whose codec libsndfile
  lacks, go through PyAV; their first audio track is stored as 16-bit FLAC at its own rate and
  channel count;
- ``Options(transcode=True)`` stores every sample as mono 16-bit FLAC at one sample rate
  (downmix by averaging the channels, resampling with FFmpeg's swresample through PyAV).

``Options(validate="header")`` (``--validate header``) trusts the content of files stored as
their original bytes: libsndfile's header gives the rate, channels and frame count (for mp3,
ogg and opus the header's count, which decoding may miss by a packet), and only what the header
alone tells is checked (a WAV data chunk longer than the file, no samples). Files stored as FLAC
are decoded in full either way, since the FLAC is made from their samples.

FLAC made here is the same bytes in any process, on any number of cores, from the same input
with the same libraries: libFLAC (through libsndfile) encodes on one thread, FFmpeg's decoders
run with one thread and ``bitexact``. Its json records those libraries (``encoder``), since
another version of them may write other bytes (libFLAC's vendor string is in the file). The
CPU's instruction set may change them too: FFmpeg's float decoders (AAC, MP3, Vorbis, Opus)
and its resampler take SIMD paths that round differently (measured on x86-64, forcing FFmpeg's
SSE4.2, AVX, AVX2 and AVX-512 levels; MP2 gave the same samples at each). libFLAC's own CPU
dispatch could not be varied here.

Decoding streams in blocks, so a long recording never sits in memory as float samples. A NaN or
infinite sample (a float WAV can hold them) is caught as the blocks stream by and skips the
file: one would make every loss NaN from the step that draws it.
The builder (``modalmae.shards.build``) calls ``prepare`` once per file, in a worker process.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from av.codec.context import Flags as CodecFlags

from modalmae.flags import arg, positive_int
from modalmae.shards.build import ShardBuilder
from modalmae.shards.types import Sample, Skip, validate_option

NAME = "audio"
# The one list of what counts as audio input: files libsndfile should read (kept as they are)
# and containers FFmpeg reads (their first audio track stored as FLAC).
SNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
CONTAINER_EXTENSIONS = frozenset({
    ".mp4", ".m4a", ".m4b", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mkv", ".mka", ".webm", ".avi", ".mpg", ".mpeg",
    ".vob", ".ts", ".mts", ".m2ts", ".ogv", ".flv", ".wmv", ".asf", ".wma", ".mxf", ".nut",
    ".aac", ".ac3", ".eac3", ".mp2", ".amr", ".aif", ".aiff", ".aifc", ".caf", ".au", ".w64", ".wv", ".ape", ".dts",
})
EXTENSIONS = SNDFILE_EXTENSIONS | CONTAINER_EXTENSIONS

BLOCK_FRAMES = 1 << 16
# Lossy codecs report a length from headers that decoding can miss by up to a packet.
PACKET_SLACK = {"mp3": 1152, "ogg": 2048, "opus": 2048}
UNKNOWN_LENGTH = 1 << 62  # libsndfile's "frames" for streams that do not state a length
INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"})  # libsndfile's names


@dataclass(frozen=True)
class Options:
    """wav, flac, ogg, opus and mp3 are stored as they are, the audio track of other containers
    (mp4, mkv, webm, m4a, ...) as FLAC."""

    transcode: bool = arg(False, "store every sample as mono 16-bit FLAC at --sample-rate instead of the original bytes (smaller shards, no resampling while training)")
    sample_rate: int = arg(16000, "sample rate of audio --transcode and of video --extract-audio (Audio-MAE: 16000)", type=positive_int, metavar="HZ")
    validate: str = validate_option()


class Unusable(ValueError):
    """The file is not usable audio; the message is the skip reason."""


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


def stored_format(info) -> str | None:
    """The schema.AUDIO_FORMATS name for what libsndfile found in the bytes (not what the file
    name says), or None when the loader should get FLAC instead (AIFF in a .wav, say)."""
    if info.format == "OGG":
        return "opus" if info.subtype == "OPUS" else "ogg"
    return {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "MP3": "mp3"}.get(info.format)


def sndfile_blocks(data: bytes, fmt: str | None, *, dtype: str = "float32") -> Iterator[tuple[np.ndarray, int]]:
    """Every sample of a libsndfile-readable file as ([n, C] ``dtype``, rate) blocks.

    Raises ``Unusable`` when the file holds less audio than its header promises.
    """
    missing = wav_data_shortfall(data)
    if missing:
        raise Unusable(f"truncated: the WAV header promises {missing} more bytes of audio than the file holds")
    with sf.SoundFile(io.BytesIO(data)) as f:
        declared, rate, decoded, error = f.frames, f.samplerate, 0, ""
        while True:
            # read(), not blocks(): blocks() counts what it asked for, so it pads a short file.
            try:
                block = f.read(BLOCK_FRAMES, dtype=dtype, always_2d=True)  # [n, C]
            except sf.LibsndfileError as e:  # e.g. FLAC "lost sync" where the bytes stop
                if decoded >= declared:
                    raise
                error = f" (libsndfile: {e.error_string.strip().rstrip('.')})"
                break
            if not len(block):
                break
            decoded += block.shape[0]
            yield block, rate
    if declared < UNKNOWN_LENGTH and declared - decoded > PACKET_SLACK.get(fmt, 0):
        raise Unusable(f"truncated: the header says {declared} frames, decoding stopped after {decoded}{error}")


def pin_codec(context) -> None:
    """One thread and ``bitexact`` for an FFmpeg codec whose output is (re-)encoded: its bytes
    then do not follow the machine's cores, and FFmpeg leaves out the fast paths it takes only
    when exactness is not asked for. The builder runs a process per core, so a thread each is
    what the machine has anyway."""
    context.thread_count = 1
    context.flags |= CodecFlags.bitexact


def ffmpeg_versions(*libraries: str) -> dict[str, str]:
    """PyAV's version and those of the FFmpeg ``libraries`` it bundles, as "major.minor.micro"."""
    found = av.library_versions
    return {"pyav": av.__version__, **{name: ".".join(map(str, found[name])) for name in libraries if name in found}}


def av_blocks(data: bytes) -> Iterator[tuple[np.ndarray, int]]:
    """Every sample of the first audio stream of anything FFmpeg opens, as ([n, C] float32, rate)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise Unusable("no audio stream")
        pin_codec(stream.codec_context)
        # Planar float at the stream's own rate and layout, whatever the codec's sample format.
        to_float = av.AudioResampler(format="fltp")
        for frame in container.decode(stream):
            for out in to_float.resample(frame):
                yield out.to_ndarray().T, out.sample_rate  # [n, C]
        for out in to_float.resample(None):
            yield out.to_ndarray().T, out.sample_rate


def flac_vendor(flac: bytes) -> str | None:
    """The vendor string of a FLAC file's VORBIS_COMMENT block ("reference libFLAC 1.4.3
    20230623"): the encoder that wrote it, in the file itself."""
    if flac[:4] != b"fLaC":
        return None
    pos = 4  # metadata blocks follow, each after a 1-byte last-flag/type and a 3-byte length
    while pos + 4 <= len(flac):
        last, kind, size = flac[pos] & 0x80, flac[pos] & 0x7F, int.from_bytes(flac[pos + 1 : pos + 4], "big")
        if kind == 4 and pos + 8 <= len(flac):
            length = int.from_bytes(flac[pos + 4 : pos + 8], "little")
            return flac[pos + 8 : pos + 8 + length].decode("utf-8", "replace")
        if last:
            break
        pos += 4 + size
    return None


def flac_encoder(flac: bytes) -> dict[str, str | None]:
    """What the json says about the libraries that made a FLAC entry from decoded samples
    (FFmpeg's decoders and resampler, libsndfile, libFLAC): other versions may write other bytes."""
    return {
        "name": "libFLAC", "version": flac_vendor(flac), "libsndfile": sf.__libsndfile_version__,
        **ffmpeg_versions("libavcodec", "libavformat", "libswresample"),
    }


def finite_blocks(blocks: Iterator[tuple[np.ndarray, int]]) -> Iterator[tuple[np.ndarray, int]]:
    """``blocks`` passed on until one holds a NaN or inf sample, then ``Unusable`` with the count
    over the rest of the file; no such block reaches an encoder or a resampler. Integer blocks
    are finite by their type and pass unchecked."""
    for block, rate in blocks:
        if block.dtype.kind == "f" and (bad := block.size - np.count_nonzero(np.isfinite(block))):
            bad += sum(rest.size - np.count_nonzero(np.isfinite(rest)) for rest, _ in blocks)
            raise Unusable(f"{bad} sample(s) are NaN or inf")
        yield block, rate


def _av_message(e: Exception) -> str:
    # FFmpegError's str() carries the errno and a file name ('<none>' for memory): keep the text.
    return getattr(e, "strerror", None) or str(e)


def open_blocks(data: bytes, suffix: str, *, stored: bool = False) -> tuple[Iterator[tuple[np.ndarray, int]], str | None]:
    """Blocks of ``data``, and the format to store its original bytes as (None: store FLAC).

    ``stored``: the blocks are only checked, the original bytes kept: integer PCM (a WAV's or a
    FLAC's) is then decoded to int16, every frame as libsndfile reads it, without the float
    conversion and finite check its type makes needless (a third of the time and memory
    traffic). Otherwise, and for float or lossy codecs, float32."""
    if suffix not in SNDFILE_EXTENSIONS:
        return av_blocks(data), None
    try:
        info = sf.info(io.BytesIO(data))
    except sf.LibsndfileError as e:
        # A codec libsndfile lacks (say mp3-in-wav, speex-in-ogg): FFmpeg may still read it.
        try:
            fallback = av_blocks(data)
            first = next(fallback, None)
        except (av.FFmpegError, Unusable) as av_error:
            raise Unusable(f"not decodable audio (libsndfile: {e.error_string.rstrip('.')}; PyAV: {_av_message(av_error)})") from e
        return _chain(first, fallback), None
    fmt = stored_format(info)
    integer = stored and fmt is not None and info.subtype in INTEGER_SUBTYPES
    return sndfile_blocks(data, fmt, dtype="int16" if integer else "float32"), fmt


def _chain(first, rest: Iterator) -> Iterator:
    if first is not None:
        yield first
        yield from rest


class FlacSink:
    """Blocks in, one 16-bit FLAC file out (in memory); created at the first block's rate."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.file: sf.SoundFile | None = None
        self.frames = 0

    def write(self, block: np.ndarray, rate: int) -> None:  # block [n, C]
        if self.file is None:
            self.file = sf.SoundFile(self.buffer, "w", samplerate=rate, channels=block.shape[1], format="FLAC", subtype="PCM_16")
        # libsndfile wraps out-of-range floats around when converting to integers: clip first.
        self.file.write(np.clip(block, -1.0, 1.0))
        self.frames += block.shape[0]

    def close(self) -> bytes:
        self.file.close()
        return self.buffer.getvalue()


def mono_resampled(blocks: Iterator[tuple[np.ndarray, int]], target: int) -> Iterator[tuple[np.ndarray, int]]:
    """[n, C] blocks at any rate -> [n', 1] blocks at ``target`` Hz (mean of channels, swresample)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    for block, rate in blocks:
        mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))[None]  # [1, n]
        frame = av.AudioFrame.from_ndarray(mono, format="flt", layout="mono")
        frame.sample_rate = rate
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1, 1), target
    for out in resampler.resample(None):  # the filter's tail
        yield out.to_ndarray().reshape(-1, 1), target


def header_meta(data: bytes, suffix: str) -> dict | None:
    """``--validate header``: (format, rate, channels, frames) of a file to be stored as its
    original bytes, from libsndfile's reading of the header, with the checks the header alone
    allows; None when the file needs decoding anyway (stored as FLAC, or a length unknown)."""
    if suffix not in SNDFILE_EXTENSIONS:
        return None  # its audio track becomes FLAC: decoded in full
    try:
        info = sf.info(io.BytesIO(data))
    except sf.LibsndfileError:
        return None  # the full path gives the reason, or reads it with FFmpeg as FLAC
    fmt = stored_format(info)
    if fmt is None or info.frames >= UNKNOWN_LENGTH:
        return None
    if missing := wav_data_shortfall(data):
        raise Unusable(f"truncated: the WAV header promises {missing} more bytes of audio than the file holds")
    if info.frames == 0 or info.samplerate < 1 or info.channels < 1:
        raise Unusable("no audio samples")
    return {"format": fmt, "sample_rate": int(info.samplerate), "channels": int(info.channels), "frames": int(info.frames)}


def prepare(path: Path, relpath: str, options: Options) -> Sample | Skip:
    """One source file -> a ``Sample`` ({format: bytes} and its json fields) or a ``Skip``."""
    data = path.read_bytes()
    if not data:
        return Skip(relpath, "empty file")
    if options.validate == "header" and not options.transcode:
        try:
            found = header_meta(data, path.suffix.lower())
        except Unusable as e:
            return Skip(relpath, str(e))
        if found is not None:
            meta = {"source": relpath, **found, "duration": round(found["frames"] / found["sample_rate"], 6)}
            return Sample(files={found["format"]: data}, meta=meta)
    try:
        blocks, fmt = open_blocks(data, path.suffix.lower(), stored=not options.transcode)
        blocks = finite_blocks(blocks)  # on the decoded samples, before resampling smears one NaN over many
        if options.transcode:
            blocks, fmt = mono_resampled(blocks, options.sample_rate), None
        rate = channels = frames = 0
        sink = None if fmt else FlacSink()
        for block, rate in blocks:
            channels, frames = block.shape[1], frames + block.shape[0]
            if sink is not None:
                sink.write(block, rate)
        if frames == 0:
            return Skip(relpath, "no audio samples")
    except Unusable as e:
        return Skip(relpath, str(e))
    except sf.LibsndfileError as e:  # errors after a good open: the stream itself is broken
        return Skip(relpath, f"not decodable audio (libsndfile: {e.error_string.rstrip('.')})")
    except av.FFmpegError as e:
        return Skip(relpath, f"not decodable audio (PyAV: {_av_message(e)})")
    files = {fmt: data} if fmt else {"flac": sink.close()}
    meta = {
        "source": relpath, "format": fmt or "flac", "sample_rate": int(rate), "channels": int(channels),
        "frames": int(frames), "duration": round(frames / rate, 6),
    }
    if not fmt:
        meta["encoder"] = flac_encoder(files["flac"])
    return Sample(files=files, meta=meta)


BUILDER = ShardBuilder(name=NAME, extensions=EXTENSIONS, options=Options, prepare=prepare)
