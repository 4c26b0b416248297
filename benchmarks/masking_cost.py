"""What the masking strategies and DMAE's distillation cost. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/masking_cost.py [--batch-size 32] [--rounds 7] [--model tiny]

1. Drawing one batch of masks with each strategy, next to random masking of the same token grid
   (VideoMAE's 8 x 14 x 14 tubes; images' 14 x 14 patches): tubes, ColorMAE's noise (fresh and
   from a bank), MGMAE's motion-guided masks (given the motion field; estimating the motion is
   the loader's cost, see the motion module), per-sample ratios, and a ratio schedule.
2. One training step of a video MAE with per-sample ratios (padded batches, masked attention)
   next to one ratio for all at the same mean ratio.
3. One DMAE step (the student, plus the frozen teacher on the visible tokens up to its layer,
   plus the projection) next to a plain step of the same student.

Variants alternate within each round and ratios are taken within a round; the median and the
range over rounds are printed: this machine's speed drifts from minute to minute.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from modalmae.masking import random_masking, tube_masking
from modalmae.masking.color import NoiseBank, color_masking
from modalmae.masking.schedule import MaskRatio
from modalmae.model import PRESETS, VIDEOMAE_DECODERS, MaskedAutoencoder
from modalmae.model.distill import Distillation, DistilledMAE, Teacher, default_layer
from modalmae.tokenizers.video import VideoTubes


def rounds_of(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, the variants alternating within every round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str, unit: str = "ms") -> None:
    scale = 1e3
    print(f"  {'variant':34s} {unit}: median  (min - max)    / {baseline}: median  (min - max)")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline])]
        print(
            f"  {name:34s} {statistics.median(values) * scale:9.2f}  ({min(values) * scale:8.2f} - {max(values) * scale:8.2f})"
            f"    {statistics.median(ratios):6.2f}  ({min(ratios):5.2f} - {max(ratios):5.2f})"
        )


def masking_cost(batch: int, rounds: int) -> None:
    grid, image = (8, 14, 14), (14, 14)
    gen = torch.Generator().manual_seed(0)
    bank = NoiseBank("green", size=256, count=16, seed=0)
    per_sample = MaskRatio("uniform:0.5:0.9")
    schedule = MaskRatio("cosine:0.5:0.9")
    variants = {
        "random (video grid)": lambda: random_masking(batch, 1568, 0.9, generator=gen),
        "tube": lambda: tube_masking(batch, grid, 0.9, generator=gen),
        "color green, tubes": lambda: color_masking(batch, grid, 0.9, color="green", generator=gen),
        "color green, per frame": lambda: color_masking(batch, grid, 0.9, color="green", generator=gen, per_frame=True),
        "color green from a bank, tubes": lambda: color_masking(batch, grid, 0.9, color=bank, generator=gen),
        "tube, ratio per sample": lambda: tube_masking(batch, grid, per_sample.draw(batch, 1, 100, generator=gen), generator=gen),
        "tube, cosine schedule (step 50)": lambda: tube_masking(batch, grid, schedule.draw(batch, 50, 100, generator=gen), generator=gen),
    }
    try:
        from modalmae.masking.motion import motion_guided_masking

        motion = torch.randn(batch, *grid, 2, generator=torch.Generator().manual_seed(1))  # [B, T', H', W', 2] in tokens
        variants["motion-guided (MGMAE)"] = lambda: motion_guided_masking(motion, 0.9, generator=gen)
    except ImportError:
        pass
    image_variants = {
        "random (image grid)": lambda: random_masking(batch, 196, 0.75, generator=gen),
        "color red": lambda: color_masking(batch, image, 0.75, color="red", generator=gen),
        "color blue": lambda: color_masking(batch, image, 0.75, color="blue", generator=gen),
        "color green": lambda: color_masking(batch, image, 0.75, color="green", generator=gen),
        "color purple": lambda: color_masking(batch, image, 0.75, color="purple", generator=gen),
    }
    print(f"1. masks for a batch of {batch}, video tubes {grid} at 0.9")
    report(rounds_of(variants, rounds), "random (video grid)")
    print(f"   ... image patches {image} at 0.75")
    report(rounds_of(image_variants, rounds), "random (image grid)")


def video_model(size: str, frames: int, image: int) -> MaskedAutoencoder:
    cfg = PRESETS[size](**VIDEOMAE_DECODERS.get(size, {}))
    return MaskedAutoencoder(VideoTubes(embed_dim=cfg.encoder_dim, num_frames=frames, image_size=image), cfg)


def step_of(model: torch.nn.Module, x: torch.Tensor, draw: Callable[[torch.Generator], object]) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        out = model(x, draw(gen))
        loss = out[0].loss + out[1] if isinstance(out, tuple) else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def training_cost(size: str, batch: int, frames: int, image: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = video_model(size, frames, image)
    grid, length = model.tokenizer.grid, model.tokenizer.num_tokens
    x = torch.randn(batch, 3, frames, image, image)
    ratios = MaskRatio("uniform:0.8:0.98")
    print(f"2. {size} video MAE step, batch {batch}, {frames} x {image}^2 ({length} tubes): one ratio (0.9) vs one per sample (uniform 0.8-0.98)")
    report(rounds_of({
        "tube 0.9 for all": step_of(model, x, lambda g: tube_masking(batch, grid, 0.9, generator=g)),
        "tube, per-sample ratios": step_of(copy.deepcopy(model), x, lambda g: tube_masking(batch, grid, ratios.draw(batch, 1, 1, generator=g), generator=g)),
    }, rounds), "tube 0.9 for all")

    teacher_model = video_model(size, frames, image)
    depth = model.config.encoder_depth
    layer = default_layer(depth)
    student = copy.deepcopy(model)
    distilled = DistilledMAE(student, Distillation(Teacher(teacher_model.encoder, layer=layer), student=student, student_layer=layer))
    print(f"3. DMAE: the same student with a frozen teacher of its size matched at block {layer} of {depth}")
    report(rounds_of({
        "plain step": step_of(model, x, lambda g: tube_masking(batch, grid, 0.9, generator=g)),
        "distilled step": step_of(distilled, x, lambda g: tube_masking(batch, grid, 0.9, generator=g)),
    }, rounds), "plain step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="masks drawn per batch in part 1")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"), help="model of parts 2 and 3")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    masking_cost(args.batch_size, args.rounds)
    training_cost(args.model, args.train_batch, args.frames, args.image_size, args.rounds)


if __name__ == "__main__":
    main()
