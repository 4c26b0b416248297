"""Turn a folder of raw media into WebDataset tar shards plus a manifest.json.

The shards are planned before anything is decoded (shard i holds the usable files of the i-th
group of --max-count files), then written in parallel, each by one worker: local processes, or
Ray tasks on a cluster (--engine ray). Every file is checked; files that cannot be used are
skipped and listed with their reason in the manifest, and the run still succeeds. Each shard is
written under a temporary name and renamed when complete, then a small stats record next to it;
rerunning the same command keeps the shards already done and writes the rest, and ends with
shards byte-identical to a clean build. The library behind it is ``modalmae.shards``; the shard
format is documented in ``modalmae/formats/schema.py``.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from pathlib import Path

from modalmae.flags import add_flags, from_flags, positive_int
from modalmae.modalities import MODALITIES
from modalmae.shards import (
    ENGINES, BuildError, NoInputError, OutputInUseError, WorkersDidNotStart, build_shards, default_workers, read_labels,
)

EPILOG = """examples:
  python pipelines/build_shards.py --modality audio --input /data/speech
      -> shards/speech/shard-000000.tar ... and shards/speech/manifest.json
  python pipelines/build_shards.py --modality audio --input /data/clips --output shards/clips \\
      --transcode --label-from-parent --max-size 500M --workers 8
  python pipelines/build_shards.py --modality video --input /data/kinetics/train --label-from-parent \\
      --short-side 320 --keyframe-interval 16 --extract-audio
  python pipelines/build_shards.py --modality points --input /data/scans --mesh-points 8192
  python pipelines/build_shards.py --modality mri --input /data/BraTS2020_TrainingData --label-from-parent
  python pipelines/build_shards.py --modality image --input /data/imagenet/train --label-from-parent
  python pipelines/build_shards.py --modality video --input /shared/raw/clips --output s3://bucket/clips \
      --engine ray --ray-address auto

exit status: 0 when shards were written (even if some files were skipped), 1 when no usable
file was found or a shard could not be written, 2 on bad arguments, 130 when interrupted
(finished shards are kept: rerun the same command to continue)."""

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
    p.add_argument("--output", metavar="DIR", help="folder for shard-NNNNNN.tar, their stats records and manifest.json, or an object-store URL (s3://bucket/prefix, gs://...; needs fsspec and its backend); created if needed; shards of an earlier build of the same command are kept, other shards there are replaced (default: shards/<input folder name>)")
    p.add_argument("--max-count", type=positive_int, default=1000, metavar="N", help="each shard is planned from N input files (default: 1000); it holds those of them that are usable")
    p.add_argument("--max-size", type=parse_size, default=10**9, metavar="BYTES", help="and from at most this many bytes of input files: 1e9, 500M, 2G (k/M/G/T are powers of 1000, Ki/Mi/Gi of 1024); a file larger than this gets a shard of its own; shards of re-encoded or converted media differ in size from their inputs (default: 1e9)")
    p.add_argument("--workers", type=positive_int, metavar="N", help=f"shards written in parallel, one process each; 1 runs everything in this process; with --engine ray and no --ray-address, the CPUs of the local Ray (default: all CPUs, {default_workers()} here)")
    p.add_argument("--engine", choices=ENGINES, default="local", help="local: worker processes on this machine; ray: one Ray task per shard, on the cluster at --ray-address or a Ray started here (pip install 'modalmae[ray]') (default: local)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="with --engine ray: 'auto' (the cluster this machine belongs to, e.g. started by `ray start`) or ray://HEAD:10001 (default: start a local Ray)")
    p.add_argument("--overwrite", action="store_true", help="write every shard again, even those an earlier run of the same build finished")
    p.add_argument("--retries", type=int, default=2, metavar="N", help="times a shard task is retried when it fails (an output error, a lost worker) before the build stops (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=Path, metavar="CSV", help="CSV with columns path,label (path relative to --input; a header row is optional); stored as \"label\" in each sample's json; files missing from it get no label")
    labels.add_argument("--label-from-parent", action="store_true", help="label each sample with the name of the folder it is in")
    added: set[str] = set()  # a flag two modalities share (--sample-rate) is listed once
    for spec in MODALITIES.values():
        options = spec.builder.options
        group = p.add_argument_group(spec.name, inspect.cleandoc(options.__doc__ or "") or None)
        added.update(add_flags(group, options, skip=added))
    return p


def print_summary(manifest: dict, output: str) -> None:
    shards, skipped, build = manifest["shards"], manifest["skipped"], manifest["build"]
    print(f"{manifest['num_samples']} samples in {len(shards)} shard(s), {human_bytes(manifest['total_bytes'])}")
    if build["shards_reused"]:
        print(f"{build['shards_reused']} shard(s) finished by an earlier run of this build were kept, {build['shards_written']} written (--overwrite writes all)")
    if build["files_prepared"]:
        busy = build["prepare_seconds"] + build["write_seconds"]
        depth = manifest["options"].get("validate", "full")
        print(
            f"{build['files_prepared']} file(s) in {build['seconds']:.1f} s ({build['engine']} engine): checking ({depth}) took "
            f"{1000 * build['prepare_seconds'] / build['files_prepared']:.1f} ms a file, writing the tars "
            f"{100 * build['write_seconds'] / max(busy, 1e-9):.1f} % of the workers' time"
        )
    if manifest["ignored_files"]:
        counts = ", ".join(f"{n} {suffix}" for suffix, n in sorted(manifest["ignored_by_suffix"].items(), key=lambda kv: -kv[1])[:8])
        print(f"{manifest['ignored_files']} file(s) of kinds this modality does not read were ignored ({counts})")
    if stale := build["removed_stale"]:
        print(f"removed {len(stale)} stale file(s) of an earlier build: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}")
    if manifest.get("warnings"):
        print(f"{len(manifest['warnings'])} file(s) kept with a warning, e.g. {manifest['warnings'][0]['path']}: {manifest['warnings'][0]['warning']}")
    if skipped:
        print(f"{len(skipped)} file(s) skipped{' (the first 10)' if len(skipped) > 10 else ''}:")
        for s in skipped[:10]:
            print(f"  {s['path']}: {s['reason']}")
        print(f"  all of them with their reasons: {output}/manifest.json")
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
    builder = MODALITIES[args.modality].builder
    options = from_flags(builder.options, args)
    if builder.check is not None:
        try:
            builder.check(options, args.input)  # fail here, with exit status 2, before any decoding
        except (OSError, ValueError, UnicodeDecodeError) as e:
            parser.error(str(e))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s: %(message)s")
    output = args.output or str(Path("shards") / args.input.resolve().name)
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address needs --engine ray")

    try:
        manifest = build_shards(
            builder=builder, input_dir=args.input, output_dir=output, options=options,
            max_count=args.max_count, max_size=args.max_size, workers=args.workers, labels=args.labels,
            label_from_parent=args.label_from_parent, progress=not args.quiet, engine=args.engine,
            ray_address=args.ray_address, overwrite=args.overwrite, retries=args.retries,
        )
    except NoInputError as e:
        print(f"error: {e}; nothing written to {output}", file=sys.stderr)
        return 1
    except (OutputInUseError, BuildError, WorkersDidNotStart, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, BuildError):
            print(f"the finished shards in {output} are kept; rerun the same command to continue", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished shards in {output} are kept but there is no manifest; rerun to complete", file=sys.stderr)
        return 130
    print_summary(manifest, output)
    if manifest["num_samples"] == 0:
        print(f"error: none of the {len(manifest['skipped'])} {args.modality} file(s) in {args.input} was usable; reasons in {output}/manifest.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
