"""Turn a folder of raw media into WebDataset tar shards plus a manifest.json.

Every file is checked (decoded in full) in parallel worker processes; files that cannot be used
are skipped and listed with their reason in the manifest, and the run still succeeds. Shards are
written under a temporary name and renamed when complete; rebuilding the same folder gives
byte-identical shards. The library behind it is ``modalmae.shards``; the shard format is
documented in ``modalmae/formats/schema.py``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from modalmae.shards import NoInputError, audio, build_shards, default_workers, mri, points, read_labels, video

# name -> (modality module, its Options from the parsed flags). A new modality is one line here.
MODALITIES = {
    "audio": (audio, lambda args: audio.Options(transcode=args.transcode, sample_rate=args.sample_rate)),
    "video": (video, lambda args: video.Options(
        partial=args.partial, short_side=args.short_side, keyframe_interval=args.keyframe_interval,
        crf=args.crf, extract_audio=args.extract_audio, audio_sample_rate=args.sample_rate,
    )),
    "points": (points, lambda args: points.Options(mesh_points=args.mesh_points, min_points=args.min_points)),
    "mri": (mri, lambda args: mri.Options(
        subjects_csv=None if args.subjects_csv is None else str(args.subjects_csv), default_sequence=args.default_sequence,
    )),
}

EPILOG = """examples:
  python pipelines/build_shards.py --modality audio --input /data/speech
      -> shards/speech/shard-000000.tar ... and shards/speech/manifest.json
  python pipelines/build_shards.py --modality audio --input /data/clips --output shards/clips \\
      --transcode --label-from-parent --max-size 500M --workers 8
  python pipelines/build_shards.py --modality video --input /data/kinetics/train --label-from-parent \\
      --short-side 320 --keyframe-interval 16 --extract-audio
  python pipelines/build_shards.py --modality points --input /data/scans --mesh-points 8192
  python pipelines/build_shards.py --modality mri --input /data/BraTS2020_TrainingData --label-from-parent

exit status: 0 when shards were written (even if some files were skipped), 1 when no usable
file was found, 2 on bad arguments, 130 when interrupted (finished shards are kept; rerun)."""

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """'1000000', '1e9', '500M', '2G', '64k' (powers of 1000), '512Mi' / '512MiB' (of 1024) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]i?)?b?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1e9, 500M or 2G)")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte: {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_shards.py", description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--modality", required=True, choices=list(MODALITIES), help="what the folder holds; decides which files are read and how they are checked")
    p.add_argument("--input", required=True, type=Path, metavar="DIR", help="folder of raw files, searched recursively in sorted order; hidden files and folders are left out")
    p.add_argument("--output", type=Path, metavar="DIR", help="folder for shard-NNNNNN.tar and manifest.json; created if needed, shards of an earlier build there are replaced (default: shards/<input folder name>)")
    p.add_argument("--max-count", type=positive_int, default=1000, metavar="N", help="at most N samples per shard (default: 1000)")
    p.add_argument("--max-size", type=parse_size, default=10**9, metavar="BYTES", help="at most this many bytes per shard: 1e9, 500M, 2G (k/M/G/T are powers of 1000, Ki/Mi/Gi of 1024); a sample larger than this gets a shard of its own (default: 1e9)")
    p.add_argument("--workers", type=positive_int, metavar="N", help=f"processes that decode and check files in parallel; 1 runs everything in this process (default: all CPUs, {default_workers()} here)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, metavar="CSV", help="CSV with columns path,label (path relative to --input; a header row is optional); stored as \"label\" in each sample's json; files missing from it get no label")
    labels.add_argument("--label-from-parent", action="store_true", help="label each sample with the name of the folder it is in")
    group = p.add_argument_group("audio")
    group.add_argument("--transcode", action="store_true", help="store every sample as mono 16-bit FLAC at --sample-rate instead of the original bytes (smaller shards, no resampling while training); without it, wav/flac/ogg/opus/mp3 are stored as they are and the audio track of other containers as FLAC")
    group.add_argument("--sample-rate", type=positive_int, default=16000, metavar="HZ", help="sample rate for --transcode, and for video's --extract-audio (default: 16000, Audio-MAE's)")
    group = p.add_argument_group("video")
    group.add_argument("--partial", choices=("keep", "skip"), default="keep", help="files that decode only part-way: keep them up to the last good frame (the json says so) or skip them; reported in the manifest either way (default: keep)")
    group.add_argument("--short-side", type=positive_int, metavar="PIXELS", help="re-encode as H.264 with the short side scaled to this (VideoMAE uses 320 for Kinetics); default: store the original bytes")
    group.add_argument("--keyframe-interval", type=positive_int, metavar="FRAMES", help="re-encode as H.264 with a keyframe every N frames, so clip decoding seeks close to its first frame")
    group.add_argument("--crf", type=int, default=23, help="x264 quality when re-encoding, lower is better and bigger (default: 23)")
    group.add_argument("--extract-audio", action="store_true", help="also store each video's first audio track as a 16 kHz mono FLAC entry of the same sample (for audio-visual training later)")
    group = p.add_argument_group("points")
    group.add_argument("--mesh-points", type=positive_int, default=8192, metavar="N", help="meshes (.off .obj .stl, .ply with faces) become N points sampled on their surface, by area (default: 8192)")
    group.add_argument("--min-points", type=positive_int, default=32, metavar="N", help="skip clouds with fewer points (default: 32, one Point-MAE group)")
    group = p.add_argument_group("mri (one sample per subject: <subject>/<subject>_<sequence>.nii.gz, <subject>/<sequence>.nii.gz, or --subjects-csv)")
    group.add_argument("--subjects-csv", type=Path, metavar="CSV", help="CSV with columns subject,sequence,path (path relative to --input) instead of the folder layout")
    group.add_argument("--default-sequence", default="t1", metavar="NAME", help="sequence name of a lone .nii file at the top of --input (default: t1)")
    return p


def print_summary(manifest: dict, output: Path) -> None:
    shards, skipped = manifest["shards"], manifest["skipped"]
    print(f"{manifest['num_samples']} samples in {len(shards)} shard(s), {human_bytes(manifest['total_bytes'])}")
    if manifest["ignored_files"]:
        print(f"{manifest['ignored_files']} file(s) with other extensions ignored")
    if manifest["removed_stale"]:
        print(f"removed {len(manifest['removed_stale'])} stale file(s) of an earlier build: {', '.join(manifest['removed_stale'][:5])}{' ...' if len(manifest['removed_stale']) > 5 else ''}")
    if manifest.get("warnings"):
        print(f"{len(manifest['warnings'])} file(s) kept with a warning, e.g. {manifest['warnings'][0]['path']}: {manifest['warnings'][0]['warning']}")
    if skipped:
        print(f"{len(skipped)} file(s) skipped{' (the first 10)' if len(skipped) > 10 else ''}:")
        for s in skipped[:10]:
            print(f"  {s['path']}: {s['reason']}")
        print(f"  all of them with their reasons: {output / 'manifest.json'}")
    print(f"output: {output}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.input.is_dir():
        parser.error(f"--input {args.input}: {'not a directory' if args.input.exists() else 'no such directory'}")
    if args.labels is not None:
        try:
            read_labels(args.labels)  # fail here, with exit status 2, before any decoding
        except (OSError, ValueError, UnicodeDecodeError) as e:
            parser.error(f"--labels {args.labels}: {e}")
    if args.modality == "mri" and args.subjects_csv is not None:
        try:
            mri.read_subjects_csv(args.subjects_csv, args.input)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            parser.error(f"--subjects-csv {args.subjects_csv}: {e}")
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s: %(message)s")
    output = args.output or Path("shards") / args.input.resolve().name
    module, options_from_args = MODALITIES[args.modality]

    try:
        manifest = build_shards(
            modality=module, input_dir=args.input, output_dir=output, options=options_from_args(args),
            max_count=args.max_count, max_size=args.max_size, workers=args.workers, labels=args.labels,
            label_from_parent=args.label_from_parent, progress=not args.quiet,
        )
    except NoInputError as e:
        print(f"error: {e}; nothing written to {output}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished shards in {output} are kept but there is no manifest; rerun to complete", file=sys.stderr)
        return 130
    print_summary(manifest, output)
    if manifest["num_samples"] == 0:
        print(f"error: none of the {len(manifest['skipped'])} {args.modality} file(s) in {args.input} was usable; reasons in {output / 'manifest.json'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
