"""The one place that documents what is written to shards and what a batch holds.

Shards (written by ``pipelines/build_shards.py``)
-------------------------------------------------
A shard is a plain POSIX tar ``shard-000000.tar`` holding WebDataset samples: all files of one
sample share a key (the file name up to its first dot) and sit next to each other. Readers take
only regular files named ``<key>.<ext>`` (``MEMBER_NAME``: a ``sample_key``, no folder, no
``..``); any other member is skipped and is no sample.

Audio sample (modality ``"audio"``)::

    <key>.<fmt>   the audio bytes; <fmt> is one of AUDIO_FORMATS. The original file's bytes, or
                  (``--transcode``, or for containers such as mp4) a FLAC of the audio track.
    <key>.json    {"source": relative path of the raw file,
                   "format": <fmt>, "sample_rate": int, "channels": int, "frames": int,
                   "duration": seconds (float),
                   "encoder": (only when the entry is a FLAC made here) {"name": "libFLAC",
                              "version": the FLAC's vendor string, "libsndfile", "pyav",
                              "libavcodec", "libavformat", "libswresample": versions},
                   "label": str (only when labels were given: CSV or parent folder)}
                  With ``--validate header`` "frames" is the header's count (wav, flac: exact;
                  mp3, ogg, opus: may differ from decoding by up to a packet).

Video sample (modality ``"video"``)::

    <key>.<fmt>   the video bytes; <fmt> is one of VIDEO_FORMATS, named by the container the
                  file holds (mp4, mov, 3gp, mkv, webm, avi, mpg, ts, ogv, flv, wmv, mxf, nut),
                  not by its file name. The original file, or an H.264 MP4 when re-encoded.
    <key>.flac    (only with ``--extract-audio`` and an audio track) 16 kHz mono FLAC
    <key>.json    {"source", "format", "frames": frames that decode (``--validate header``:
                   video packets holding data, the same count for common codecs), "fps", "width",
                   "height", "duration", "codec", "source_codec", "has_audio", "transcoded",
                   "encoder": (only when transcoded) {"name": "libx264", "version": "core <n>",
                              "pyav", "libavcodec", "libavformat", "libswscale": versions},
                   "partial": true and "partial_reason" (only for files that decode part-way),
                   "audio": {"format", "sample_rate", "channels", "offset": seconds of video time
                             at the FLAC's sample 0, 0 when absent (older shards),
                             "encoder": as an audio sample's} (only with the flac entry),
                   "label" (only when labels were given)}
                  Re-encoded entries (H.264, FLAC) are the same bytes from the same input and
                  the same "encoder" versions, in any process on any number of cores (x264
                  checked alike from SSSE3 to AVX-512; other CPU architectures may differ).

Point-cloud sample (modality ``"points"``)::

    <key>.npy     float32 [N, 3 + C]: x y z first, then the columns the json names (normals
                  nx ny nz, colours red green blue in [0, 1], intensities, ...); meshes are
                  sampled on their surface (xyz only). Saved without pickle.
    <key>.json    {"source", "format", "num_points", "columns": ["x", "y", "z", ...],
                   "bounds": {"min": [x, y, z], "max": [x, y, z]}, "from_mesh": bool,
                   "mesh_faces": int (meshes only), "label" (only when labels were given)}

MRI sample (modality ``"mri"``), one per subject::

    <key>.<sequence>.nii     one entry per sequence, the NIfTI bytes as they were (``.nii.gz``
    <key>.<sequence>.nii.gz  when the source was gzipped; stored as is, never re-compressed)
    <key>.json    {"source": the subject's relative path (or CSV name), "subject": its name,
                   "present": [sequence names, sorted],
                   "sequences": {name: {"source", "shape": [X, Y, Z(, T)], "spacing": [mm x3],
                                        "orientation": axis codes as stored (e.g. "LAS"),
                                        "dtype", "compressed": bool}},
                   "label" (only when labels were given)}

Image sample (modality ``"image"``)::

    <key>.<fmt>   the original file's bytes; <fmt> is one of IMAGE_FORMATS, named by what the
                  bytes are, not by the file's suffix (a camera's MPO is a jpg). A multi-frame
                  file (gif, tif, webp) stands for its first frame.
    <key>.json    {"source", "format": <fmt>, "width", "height", "mode": Pillow's mode ("RGB",
                   "L", "RGBA", "P", "I;16", "F", ...), "n_frames" (only when more than one),
                   "label" (only when labels were given)}

Keys are derived from the relative source path (``sample_key``), so rebuilding the same folder
gives the same keys in the same order.

``manifest.json`` next to the shards, written last (a folder without one is an unfinished build),
merged from the shards' stats records ``shard-NNNNNN.stats.json`` (``modalmae.shards.plan``);
shard ``i`` holds the usable files of the build plan's ``i``-th group, so the shards listed may
skip a number (a group none of whose files was usable has no tar). The manifest holds nothing
that depends on how or where the build ran: a resumed build and a clean one write the same::

    {"format_version": 1, "modality": "audio" | "video" | "points" | "mri" | "image", "num_samples": int, "total_bytes": int,
     "shards": [{"name": "shard-000000.tar", "num_samples": int, "bytes": int,
                 "sha256": hex digest of the shard file (verified when streamed; older manifests lack it)}, ...],
     "skipped": [{"path": relative path, "reason": str}, ...],
     "warnings": [{"path": relative path, "warning": str}, ...],  (kept with a caveat)
     "ignored_files": int (files of kinds the modality does not read), "ignored_by_suffix": {suffix: count},
     "options": {the build options}, "created_by": "modalmae <version>"}

Batches (produced by ``modalmae.data``)
---------------------------------------
Every batch of a ``ShardStream`` (any modality) holds where its items came from::

    "__key__"      list[str]          sample keys
    "__url__"      list[str]          the shard each sample came from
    "__epoch__"    list[int]          the pass over the shard set the sample belongs to
    "__index__"    list[int]          the sample's place in its worker's part of that epoch
    "__worker__"   list[int]          the loader worker (slot) that produced it
    "__source__"   list[int]          which shard set, when several are mixed (else 0)
    "__pad__"      list[bool]         True for the padding that evens out the ranks' epochs
    "num_skipped"  int                corrupt samples the producing worker skipped since its
                                      previous batch (summed into the training metrics)

Audio (``AudioDecoder`` + ``collate``)::

    "fbank"        float32 [B, T, F]  normalized log-mel filterbank (T frames, F mel bins)
    "label"        list[str | None]   label from the sample json, None when absent

Video (``VideoDecoder`` + ``collate``): the same keys with ``"video"`` instead of ``"fbank"``::

    "video"        float32 [B, 3, T, S, S]  ImageNet-normalized clips; with repeated
                                            augmentation K consecutive rows come from one video

With ``VideoDecoder(motion=True)`` (``video_mae.py --masking motion``), also::

    "motion"       float32 [B, T', H', W', 2] each token's displacement (dx right, dy down, in
                                            tokens) from its time slice to the next, estimated on the
                                            output clip (``modalmae.data.motion``); the last slice 0

Audio-visual (``AVDecoder`` + ``collate``): the video keys plus::

    "fbank"        float32 [B, T, F]        the audio window centred on each clip (zeros where it
                                            lies outside the recording; all zeros without audio)
    "has_audio"    bool [B]                 False when the sample has no audio entry
    "clip_start"   float64 [B]              seconds in video time where the clip begins
    "audio_start"  float64 [B]              seconds in video time where the audio window begins

Points (``PointDecoder`` + ``collate``): the same keys with, instead of ``"fbank"``::

    "points"       float32 [B, G, 1 + k, 3] packed groups: each group's centre, then its k
                                            points relative to it (PointGroups' input)
    "cloud"        float32 [B, N, 3]        the sampled, normalized, augmented cloud

MRI (``MRIDecoder`` + ``collate``): the same keys with, instead of ``"fbank"``::

    "volume"       float32 [B, S, X, Y, Z]  the configured sequences in RAS at the target spacing,
                                            cropped around the foreground, z-scored over non-zero
                                            voxels; zeros for a sequence the subject lacks
    "present"      bool [B, S]              which sequences the subject has

Image (``ImageDecoder`` + ``collate``): the same keys with ``"image"`` instead of ``"fbank"``::

    "image"        float32 [B, 3, S, S]     ImageNet-normalized RGB: MAE's random resized crop
                                            and flip in training, resize and centre crop otherwise
"""

from __future__ import annotations

import hashlib
import re

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"
AUDIO_FORMATS = ("flac", "wav", "ogg", "mp3", "opus")
# Video entries by container (shards.video.entry_name decides from what FFmpeg finds in a file).
VIDEO_FORMATS = ("mp4", "mov", "3gp", "mkv", "webm", "avi", "mpg", "ts", "ogv", "flv", "wmv", "mxf", "nut")
IMAGE_FORMATS = ("jpg", "png", "webp", "tif", "bmp", "gif")
# Images declaring more pixels are refused before decoding: Pillow's own decompression-bomb
# limit (2 x PIL.Image.MAX_IMAGE_PIXELS), above which Pillow will not open a file anyway.
MAX_IMAGE_PIXELS = 178_956_970
# Limits the builder (flags of the same names) and the loaders (keyword arguments) share.
MAX_FRAME_PIXELS = 3840 * 2160  # video: 4K UHD, 25 MB a decoded RGB frame
MAX_FRAMES = 108_000  # video: an hour at 30 fps (the loader: frames decoded for one sample)
MAX_POINTS = 10_000_000  # a dense scan; Point-MAE trains on 1024 of them

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# A shard member that is a sample's file: a key as sample_key makes it, then an extension of
# dot-separated parts (an MRI sequence name may hold spaces; no slash, backslash, control
# character or empty part).
MEMBER_NAME = re.compile(r"(?P<key>[A-Za-z0-9_-]+)\.(?P<ext>[^./\\\x00-\x1f]+(?:\.[^./\\\x00-\x1f]+)*)")


def sample_key(relative_path: str) -> str:
    """Deterministic WebDataset key for a source file: readable stem + hash of the full path.

    WebDataset splits keys at the first dot of a member name, so dots and slashes are replaced;
    the hash keeps two paths that sanitize alike (``a/b.wav`` and ``a_b.wav``) distinct.
    """
    stem = _UNSAFE.sub("_", relative_path.rsplit(".", 1)[0]).strip("_")[-80:] or "sample"
    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"
