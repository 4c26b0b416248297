"""The video modality of the shard builder: probe, validate, optionally transcode, extract audio.

Every file is opened with PyAV and decoded in full once, which both proves it and counts its
frames (headers can be wrong). With ``validate="header"`` (``--validate header``, for corpora
known to be good) the video stream is only demuxed, not decoded: its packets with data are
counted (one per frame: the count decoding gives on all 11 real clips tried, H.264, MPEG-4
Part 2, MPEG-1 and VP8; packets that show no picture, as VP8's hidden alt-ref frames may be
stored, would count high, which the loader absorbs by repeating the last frame) and a
container cut short still shows, but a picture that does not decode is left for the loader
to find. A file that stops decoding part-way (or, with ``header``, demuxing) is, by
``Options.partial``:

- ``keep`` (default): stored as it is, with ``frames`` set to the frames that decode, so
  clip sampling never reaches the broken tail; the json says ``"partial": true``;
- ``skip``: left out, with the reason in the manifest.

Transcoding is opt-in (``short_side`` and/or ``keyframe_interval``): H.264 in MP4, the short side
scaled to ``short_side`` (VideoMAE uses 320 for Kinetics), a keyframe every
``keyframe_interval`` frames (short intervals make the loader's seeks cheap). Re-encoding decodes
every frame, so it is checked in full whatever ``validate`` says. Its bytes depend only on the
input and the library versions, not on the process, the machine's cores or thread scheduling:
decoder, scaler and x264 run on one thread each (the builder runs a process per core), with
FFmpeg's ``bitexact`` flags, x264 without macroblock-tree ratecontrol (see ``transcode``), and
the MP4 carries no FFmpeg version string. Checked on x86-64: FFmpeg's decoding and scaling give
the same pixels with its SIMD off or at any level, x264 the same bytes from SSSE3 to AVX-512
(its C and SSE2-only paths differ); other architectures are unchecked. Another x264, FFmpeg or
PyAV may encode differently, so the json's ``encoder`` names them. ``extract_audio``
adds the first audio track as a 16 kHz mono FLAC entry of the same sample, so audio-visual
training needs no re-sharding (a track with a NaN or inf sample is left out, with a warning);
``audio.offset`` in the json is where the FLAC's sample 0 sits in video time (seconds from the
video stream's start), which ``modalmae.data.av`` aligns clips and audio windows by.

Bounded before decoding: a frame larger than ``max_frame_pixels`` (from the stream's width and
height; every decoded frame is held to it too, since a stream may change size mid-way) or a
file declaring more than ``max_frames`` frames is skipped before a frame is decoded, and
decoding stops, skipping the file, once more than ``max_frames`` frames have decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import Interpolation, VideoReformatter

from modalmae.flags import arg, positive_int
from modalmae.formats.schema import MAX_FRAME_PIXELS, MAX_FRAMES
from modalmae.shards.audio import FlacSink, Unusable, av_blocks, ffmpeg_versions, finite_blocks, flac_encoder, mono_resampled, pin_codec
from modalmae.shards.build import ShardBuilder
from modalmae.shards.types import Sample, Skip, validate_option

NAME = "video"
# The names users give the containers FFmpeg reads (what a file holds is decided by probing it).
EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m1v", ".m2v",
    ".vob", ".ts", ".mts", ".m2ts", ".ogv", ".ogg", ".flv", ".wmv", ".asf", ".mxf", ".nut", ".divx",
})
# FFmpeg's demuxer name -> the entry the original bytes are stored under (formats.schema.VIDEO_FORMATS).
# The ISO family and Matroska keep the suffix's name where it says more (mov, 3gp, webm).
CONTAINERS = {"avi": "avi", "mpeg": "mpg", "mpegvideo": "mpg", "mpegts": "ts", "ogg": "ogv", "flv": "flv", "asf": "wmv", "mxf": "mxf", "nut": "nut"}
ISO_SUFFIXES = {".mov": "mov", ".qt": "mov", ".3gp": "3gp", ".3g2": "3gp"}
# Scaling for re-encoding: swscale's default bilinear, with the flags that make its output the
# same on every CPU (its fast SIMD paths round differently), on one thread.
SCALING = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
X264_PARAMS = "mbtree=0"  # see transcode


@dataclass(frozen=True)
class Options:
    """Every file is decoded in full once; the original bytes are stored unless re-encoded."""

    partial: str = arg("keep", "files that decode only part-way: keep them up to the last good frame (the json says so) or skip them; reported in the manifest either way", choices=("keep", "skip"))
    short_side: int | None = arg(None, "re-encode as H.264 with the short side scaled to this (VideoMAE uses 320 for Kinetics); default: store the original bytes", type=positive_int, metavar="PIXELS")
    keyframe_interval: int | None = arg(None, "re-encode as H.264 with a keyframe every N frames, so clip decoding seeks close to its first frame", type=positive_int, metavar="FRAMES")
    crf: int = arg(23, "x264 quality when re-encoding, lower is better and bigger")
    extract_audio: bool = arg(False, "also store each video's first audio track as a mono FLAC entry of the same sample, at --sample-rate (for audio-visual training later)")
    sample_rate: int = arg(16000, "sample rate of audio --transcode and of video --extract-audio (Audio-MAE: 16000)", type=positive_int, metavar="HZ")
    max_frame_pixels: int = arg(MAX_FRAME_PIXELS, "skip videos whose frames have more pixels (width x height; 3840 x 2160 = 4K), refused from the stream header before decoding", type=positive_int, metavar="N")
    max_frames: int = arg(MAX_FRAMES, "skip videos of more frames (108000: an hour at 30 fps), refused from the header's count before decoding or once more decode", type=positive_int, metavar="N")
    validate: str = validate_option()

    @property
    def transcode(self) -> bool:
        return self.short_side is not None or self.keyframe_interval is not None


def _message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def entry_name(container_format: str, suffix: str) -> str:
    """The entry a file's bytes are stored under, from what FFmpeg found in it."""
    names = container_format.split(",")  # e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    if "mp4" in names:
        return ISO_SUFFIXES.get(suffix, "mp4")
    if "matroska" in names:
        return "webm" if suffix == ".webm" else "mkv"
    if names[0] in CONTAINERS:
        return CONTAINERS[names[0]]
    raise Unusable(f"a {container_format} stream, not a video container (FFmpeg read it as such)")


def check_frame_size(width: int, height: int, max_pixels: int, what: str = "frames") -> None:
    """Refuse frames above ``max_pixels`` (an 8192 x 8192 RGB frame is 200 MB decoded)."""
    if width * height > max_pixels:
        raise Unusable(f"too large: {what} of {width} x {height} = {width * height} pixels, more than --max-frame-pixels {max_pixels}")


def probe(data: bytes, *, depth: str = "full", max_pixels: int = MAX_FRAME_PIXELS, max_frames: int = MAX_FRAMES) -> dict:
    """Header facts and the count of frames (and the error that stopped the count); ``Unusable``
    above the limits, from the header before decoding where it tells. ``depth="full"`` counts the
    frames that decode, ``"header"`` the video packets the container holds, decoding none."""
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise Unusable("no video stream" + (" (audio only)" if container.streams.audio else ""))
        stream = container.streams.video[0]
        if stream.codec_context.width < 1 or stream.codec_context.height < 1:
            raise Unusable("video stream without a picture size")
        check_frame_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
        if (stream.frames or 0) > max_frames:
            raise Unusable(f"too long: the header declares {stream.frames} frames, more than --max-frames {max_frames}")
        rate = stream.average_rate or stream.guessed_rate
        info = {
            "container": container.format.name,
            "fps": float(rate) if rate else None, "declared_frames": int(stream.frames or 0),
            "width": stream.codec_context.width, "height": stream.codec_context.height,
            "codec": stream.codec_context.name, "has_audio": bool(container.streams.audio),
        }
        decoded, error = 0, None
        try:
            if depth == "full":
                for frame in container.decode(stream):
                    check_frame_size(frame.width, frame.height, max_pixels, what=f"frame {decoded}")
                    decoded += 1
                    if decoded > max_frames:
                        raise Unusable(f"too long: more than --max-frames {max_frames} frames decode")
            else:
                for packet in container.demux(stream):
                    decoded += packet.size > 0  # the flush packet, and AVI's dropped-frame markers, hold no frame
                    if decoded > max_frames:
                        raise Unusable(f"too long: the stream holds more than --max-frames {max_frames} frames")
        except av.FFmpegError as e:
            error = _message(e)
    info.update(decoded_frames=decoded, error=error)
    return info


def x264_core(encoded: bytes) -> str | None:
    """x264's build ("core 165") from the SEI it writes into the stream it encodes."""
    start = encoded.find(b"x264 - core ")
    return encoded[start + 7 : encoded.find(b" ", start + 12)].decode("ascii", "replace") if start >= 0 else None


def transcode(data: bytes, *, short_side: int | None, keyframe_interval: int | None, crf: int, max_frames: int) -> tuple[bytes, int, int, int]:
    """Re-encode as H.264 MP4 -> (bytes, frames, width, height); stops at ``max_frames``.

    The same input gives the same bytes in any process on any number of cores (see the module
    docstring). Left to itself, x264 takes a thread per core and slices each frame among them,
    so the bytes followed the machine's cores and, through its threaded lookahead, the run."""
    out_buffer = io.BytesIO()
    # fflags=bitexact: no "Lavf<version>" encoder tag in the MP4 (x264's own SEI names x264).
    with av.open(io.BytesIO(data)) as source, av.open(out_buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as sink:
        stream = source.streams.video[0]
        pin_codec(stream.codec_context)
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(100000)
        width, height = stream.codec_context.width, stream.codec_context.height
        if short_side:
            scale = short_side / min(width, height)
            width, height = round(width * scale), round(height * scale)
        width, height = width + width % 2, height + height % 2  # yuv420p needs even sides
        encoder = sink.add_stream("libx264", rate=rate)
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        pin_codec(encoder.codec_context)  # one x264 thread: no slices per core, no threaded lookahead
        # mbtree=0: x264's macroblock-tree ratecontrol reads uninitialised stack memory (valgrind,
        # x264 core 165 in PyAV 18.1's wheels, with or without its asm), so even on one thread its
        # bytes changed with what the process had run before. Without it the same crf spends bits
        # differently: on 7 real clips at 320 px, 0.76x to 1.93x the bytes (-1.6 to +1.9 dB Y-PSNR),
        # 0.94x in all.
        encoder.options = {"crf": str(crf), "preset": "veryfast", "x264-params": X264_PARAMS}
        if keyframe_interval:
            encoder.codec_context.gop_size = keyframe_interval
            encoder.options = {**encoder.options, "keyint_min": str(keyframe_interval), "sc_threshold": "0"}
        written, scaler = 0, VideoReformatter()  # one scaler for all frames: its context is reused
        try:
            for frame in source.decode(stream):
                if written >= max_frames:
                    break
                frame = scaler.reformat(frame, width=width, height=height, format="yuv420p", interpolation=SCALING, threads=1)
                frame.pts, frame.time_base = written, 1 / rate
                sink.mux(encoder.encode(frame))
                written += 1
        except av.FFmpegError:
            pass  # a partial file: keep what decoded (the probe already counted it)
        sink.mux(encoder.encode(None))
    return out_buffer.getvalue(), written, width, height


def extract_audio(data: bytes, sample_rate: int) -> bytes | None:
    """The first audio track as mono FLAC at ``sample_rate`` (None when it has no samples);
    ``Unusable`` when there is no audio stream or a sample is NaN or inf."""
    sink = FlacSink()
    for block, rate in mono_resampled(finite_blocks(av_blocks(data)), sample_rate):
        sink.write(block, rate)
    return sink.close() if sink.frames else None


def _seconds(value, time_base) -> float:
    return float(value * time_base) if value is not None and time_base is not None else 0.0


def audio_offset(data: bytes) -> float:
    """Seconds from the video stream's start (the loader's frame 0) to the first decoded sample
    of the first audio track (the FLAC's sample 0): that frame's timestamp, not the stream's
    ``start_time``, since a decoder may drop leading samples (Vorbis' first packet gives none)."""
    with av.open(io.BytesIO(data)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        first = _seconds(audio.start_time, audio.time_base)
        for frame in container.decode(audio):
            if frame.samples:
                first = _seconds(frame.pts, frame.time_base) if frame.pts is not None else first
                break
        return round(first - _seconds(video.start_time, video.time_base), 6)


def prepare(path: Path, relpath: str, options: Options) -> Sample | Skip:
    data = path.read_bytes()
    if not data:
        return Skip(relpath, "empty file")
    # Re-encoding decodes every frame anyway: the probe then proves them first, as in full.
    depth = "full" if options.transcode else options.validate
    try:
        info = probe(data, depth=depth, max_pixels=options.max_frame_pixels, max_frames=options.max_frames)
    except Unusable as e:
        return Skip(relpath, str(e))
    except av.FFmpegError as e:
        return Skip(relpath, f"not decodable video (PyAV: {_message(e)})")
    decoded, declared = info["decoded_frames"], info["declared_frames"]
    full = depth == "full"
    if decoded == 0:
        return Skip(relpath, f"not decodable video: no frame {'decodes' if full else 'in the stream'} ({info['error'] or 'empty stream'})")
    partial = info["error"] is not None or (declared and decoded < declared - 1)
    why = f"{'decodes' if full else 'holds'} only {decoded} of {declared or '?'} frames" + (f" ({info['error']})" if info["error"] else "")
    if partial and options.partial == "skip":
        return Skip(relpath, f"partial: {why}")

    try:
        fmt = entry_name(info["container"], path.suffix.lower())
    except Unusable as e:
        return Skip(relpath, str(e))
    width, height, stored, encoder = info["width"], info["height"], data, None
    if options.transcode:
        stored, decoded, width, height = transcode(
            data, short_side=options.short_side, keyframe_interval=options.keyframe_interval,
            crf=options.crf, max_frames=decoded,
        )
        fmt = "mp4"
        encoder = {"name": "libx264", "version": x264_core(stored), **ffmpeg_versions("libavcodec", "libavformat", "libswscale")}
    fps = info["fps"]
    meta = {
        "source": relpath, "format": fmt, "frames": decoded, "fps": fps, "width": width, "height": height,
        "duration": round(decoded / fps, 6) if fps else None, "codec": "h264" if options.transcode else info["codec"],
        "source_codec": info["codec"], "has_audio": info["has_audio"], "transcoded": options.transcode,
    }
    if encoder is not None:
        meta["encoder"] = encoder
    warnings = []
    if partial:
        meta.update(partial=True, partial_reason=why)
        warnings.append(f"partial: {why}, kept")
    files = {fmt: stored}
    if options.extract_audio and info["has_audio"]:
        try:  # a bad audio track costs the sample its audio, not its video
            audio = extract_audio(data, options.sample_rate)
            offset = audio_offset(data) if audio is not None else None
        except Unusable as e:
            audio = None
            warnings.append(f"audio track left out: {e}")
        except av.FFmpegError as e:
            audio = None
            warnings.append(f"audio track left out: not decodable (PyAV: {_message(e)})")
        if audio is not None:
            files["flac"] = audio
            meta["audio"] = {"format": "flac", "sample_rate": options.sample_rate, "channels": 1, "offset": offset, "encoder": flac_encoder(audio)}
    return Sample(files=files, meta=meta, warning="; ".join(warnings) or None)


BUILDER = ShardBuilder(name=NAME, extensions=EXTENSIONS, options=Options, prepare=prepare)
