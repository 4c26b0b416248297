"""Video path throughput. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/video_throughput.py [--media DIR] [--skip-train]

1. Windowed decoding (seek to the keyframe before the clip, decode its span) against the naive
   route (decode every frame, then pick 16), per sample video; target >= 3x on 10 s clips.
2. The loader (ShardStream + DataLoader, 1 and 2 workers) against the bare decode + crop of the
   same clips in this process; target within ~10 % for one worker.
3. Training steps of the tiny and base models with and without VideoMAE V2 decoder masking,
   next to transformers' VideoMAEForPreTraining at the same config when it is installed;
   target: our base step with decoder masking >= 1.3x transformers'.
Measurements alternate in rounds and the median round is printed: this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pipelines"))

from build_shards import main as build_shards  # noqa: E402

from modalmae.data.shards import iter_shard, resolve_shards  # noqa: E402
from modalmae.data.stream import ShardStream, make_loader  # noqa: E402
from modalmae.data.video import VideoDecoder, clip_indices, decode_pyav, probe_pyav  # noqa: E402
from modalmae.masking import running_cell_predict, tube_masking  # noqa: E402
from modalmae.model import VIDEOMAE_DECODERS, MaskedAutoencoder, mae_base, mae_tiny  # noqa: E402
from modalmae.tokenizers.video import VideoTubes  # noqa: E402


def decode_every_frame(data: bytes) -> np.ndarray:
    """The naive route the windowed decode is compared against: every frame, in order."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])

def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def windowed_vs_naive(media: Path, rounds: int) -> None:
    print("decode 16 frames at stride 4: windowed vs every frame (ms per clip)")
    for path in sorted(media.glob("*.mp4")):
        data = path.read_bytes()
        frames, fps = probe_pyav(data)
        rng = random.Random(0)
        clips = [clip_indices(frames, num_frames=16, stride=4, rng=rng) for _ in range(rounds)]
        window = statistics.median(timed(lambda c=c: decode_pyav(data, c)) for c in clips)
        naive = statistics.median(timed(lambda c=c: decode_every_frame(data)[c]) for c in clips[:3])
        print(f"  {path.name:28s} {frames / fps:5.1f} s: windowed {1000 * window:7.1f}   naive {1000 * naive:7.1f}   ratio {naive / window:5.1f}x")


def loader_vs_bare(media: Path, root: Path, *, copies: int, rounds: int, batches: int, batch_size: int, crop: int) -> None:
    raw = root / "raw"
    for i in range(copies):
        for f in sorted(media.glob("*.mp4")):
            (raw / f"copy{i}").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, raw / f"copy{i}" / f.name)
    out = root / "shards"
    build_shards(["--modality", "video", "--input", str(raw), "--output", str(out), "--max-count", "2", "--quiet"])
    shards = resolve_shards(out)
    decode = VideoDecoder(crop_size=crop)
    samples = [s for url in shards.urls for s in iter_shard(url)]
    clips = batches * batch_size

    def bare() -> float:
        torch.set_num_threads(1)
        rng = random.Random(0)
        return clips / timed(lambda: [decode(samples[i % len(samples)], rng) for i in range(clips)])

    def loader(workers: int) -> float:
        it = iter(make_loader(ShardStream(shards, decode, shuffle_buffer=4), batch_size=batch_size, num_workers=workers))
        for _ in range(workers):
            next(it)  # start-up and the first prefetch are not timed
        return clips / timed(lambda: [next(it) for _ in range(batches)])

    results = [(bare(), loader(1), loader(2)) for _ in range(rounds)]
    b, one, two = sorted(results, key=lambda r: r[1] / r[0])[len(results) // 2]
    print(f"loader on {len(samples)} videos, 16 x {crop} x {crop} clips (median of {rounds} rounds)")
    print(f"  bare decode + crop (1 thread): {b:6.2f} clips/s")
    print(f"  loader, 1 worker:              {one:6.2f} clips/s  (overhead {100 * (b / one - 1):+.1f} %)")
    print(f"  loader, 2 workers:             {two:6.2f} clips/s  ({two / one:.2f}x one worker)")


def video_config(size: str):
    return {"tiny": mae_tiny, "base": mae_base}[size](**VIDEOMAE_DECODERS.get(size, {}))


def ours_step(size: str, *, batch: int, decoder_mask: float):
    cfg = video_config(size)
    model = MaskedAutoencoder(VideoTubes(embed_dim=cfg.encoder_dim), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 16, 224, 224)
    g = torch.Generator().manual_seed(0)

    def step():
        masks = tube_masking(batch, model.tokenizer.grid, 0.9, generator=g)
        if decoder_mask:
            masks = masks.with_decoder_masking(running_cell_predict(masks, model.tokenizer.grid, decoder_mask, generator=g))
        model(x, masks).loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def transformers_step(size: str, *, batch: int):
    import transformers

    cfg = video_config(size)
    config = transformers.VideoMAEConfig(
        hidden_size=cfg.encoder_dim, num_hidden_layers=cfg.encoder_depth, num_attention_heads=cfg.encoder_heads,
        intermediate_size=4 * cfg.encoder_dim, decoder_hidden_size=cfg.decoder_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_heads, decoder_intermediate_size=4 * cfg.decoder_dim, use_mean_pooling=False,
        attn_implementation="sdpa",
    )
    model = transformers.VideoMAEForPreTraining(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 16, 3, 224, 224)
    g = torch.Generator().manual_seed(0)

    def step():
        masks = tube_masking(batch, (8, 14, 14), 0.9, generator=g)
        model(x, bool_masked_pos=masks.mask.bool()).loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def train_steps(rounds: int) -> None:
    torch.set_num_threads(2)
    try:
        import transformers  # noqa: F401

        have_reference = True
    except ImportError:
        have_reference = False
    print("training step, 16 x 224 x 224, tube masking 0.9, fp32, 2 threads (clips/s, median of rounds)")
    for size, batch in (("tiny", 4), ("base", 2)):
        variants = {"ours": ours_step(size, batch=batch, decoder_mask=0.0), "ours + V2 decoder masking 0.5": ours_step(size, batch=batch, decoder_mask=0.5)}
        if have_reference:
            variants["transformers VideoMAEForPreTraining"] = transformers_step(size, batch=batch)
        for step in variants.values():
            step()  # warm-up
        times = {name: statistics.median(timed(step) for _ in range(rounds)) for name, step in variants.items()}
        for name, t in times.items():
            ratio = ""
            if have_reference and not name.startswith("transformers"):
                ratio = f"  ({times['transformers VideoMAEForPreTraining'] / t:.2f}x transformers)"
            print(f"  {size:4s} batch {batch}  {name:36s} {batch / t:6.2f} clips/s{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media" / "video")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--skip-train", action="store_true", help="only the data figures")
    args = parser.parse_args()
    if not args.media.is_dir():
        parser.error(f"--media {args.media}: not a folder of sample videos")
    windowed_vs_naive(args.media, args.rounds * 3)
    with tempfile.TemporaryDirectory() as tmp:
        loader_vs_bare(args.media, Path(tmp), copies=args.copies, rounds=args.rounds, batches=args.batches, batch_size=args.batch_size, crop=args.crop)
    if not args.skip_train:
        train_steps(args.rounds)


if __name__ == "__main__":
    main()
