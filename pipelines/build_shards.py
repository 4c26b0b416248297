"""Turn a folder of raw media into WebDataset tar shards plus a manifest.json.

Every file is checked (decoded in full) in parallel worker processes; files that cannot be used
are skipped and listed with their reason in the manifest, and the run still succeeds. Shards are
written under a temporary name and renamed when complete; rebuilding the same folder gives
byte-identical shards.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from modalmae.shards.audio import AudioOptions
from modalmae.shards.build import MODALITIES, build_shards, read_labels

EPILOG = """examples:
  python pipelines/build_shards.py --modality audio --input /data/speech --output shards/speech
  python pipelines/build_shards.py --modality audio --input /data/clips --transcode --label-from-parent --max-size 500M

exit status: 0 when shards were written (even if some files were skipped), 1 when no usable file
was found, 2 on bad arguments. See modalmae/data/schema.py for what the shards hold."""


def parse_size(text: str) -> int:
    """'1000000', '1e9', '500M', '2G', '64k' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1e9, 500M or 2G)")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--modality", required=True, choices=sorted(MODALITIES), help="what the folder holds")
    p.add_argument("--input", required=True, type=Path, help="folder of raw files, searched recursively (hidden files are ignored)")
    p.add_argument("--output", type=Path, help="folder for shard-NNNNNN.tar and manifest.json (default: shards/<input folder name>)")
    p.add_argument("--max-count", type=positive_int, default=1000, help="most samples per shard (default: 1000)")
    p.add_argument("--max-size", type=parse_size, default=10**9, help="most bytes per shard: 1e9, or with a binary suffix 500M, 2G (K/M/G = 1024, 1024^2, 1024^3) (default: 1e9)")
    p.add_argument("--workers", type=positive_int, help="parallel processes checking files (default: all cores)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, help="CSV of 'path,label' rows, paths relative to --input; stored as \"label\" in each sample's json")
    labels.add_argument("--label-from-parent", action="store_true", help="label each sample with the name of its parent folder")
    audio = p.add_argument_group("audio")
    audio.add_argument("--transcode", action="store_true", help="store every sample as mono 16-bit FLAC at --sample-rate instead of the original bytes (smaller shards, no resampling while training)")
    audio.add_argument("--sample-rate", type=positive_int, default=16000, help="sample rate of --transcode (default: 16000, Audio-MAE's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.input.is_dir():
        parser.error(f"--input {args.input}: not a directory")
    output = args.output or Path("shards") / args.input.resolve().name
    labels = None
    if args.labels:
        try:
            labels = read_labels(args.labels)
        except (OSError, ValueError) as e:
            parser.error(f"--labels: {e}")
    options = AudioOptions(transcode=args.transcode, sample_rate=args.sample_rate)

    manifest = build_shards(
        modality=args.modality, input_dir=args.input, output_dir=output, max_count=args.max_count,
        max_size=args.max_size, workers=args.workers, labels=labels, label_from_parent=args.label_from_parent,
        options=options, progress=not args.quiet,
    )

    shards, skipped = manifest["shards"], manifest["skipped"]
    print(f"{manifest['num_samples']} samples in {len(shards)} shard(s), {manifest['total_bytes'] / 1e6:.1f} MB -> {output}")
    if manifest["ignored_files"]:
        print(f"{manifest['ignored_files']} file(s) with other extensions ignored")
    if manifest["removed_stale"]:
        print(f"removed {len(manifest['removed_stale'])} shard(s) left by an earlier build")
    if skipped:
        print(f"{len(skipped)} file(s) skipped:")
        for s in skipped[:10]:
            print(f"  {s['path']}: {s['reason']}")
        if len(skipped) > 10:
            print(f"  ... see {output / 'manifest.json'} for all")
    if not shards:
        print(f"error: no usable {args.modality} file found in {args.input}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
