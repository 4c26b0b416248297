"""A joint audio+video training step (MultiModalMAE, CAV-MAE layout) next to the two
single-modality steps (MaskedAutoencoder) at the same token counts. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/joint_step.py                      # tiny, 2 clips, 5 rounds
    .venv/bin/python benchmarks/joint_step.py --model base --rounds 3 [--threads N]     # ViT-B, CAV-MAE: 11 specific + 1 shared

Every variant is one fp32 step on fixed random inputs: forward, ``loss.backward()``, AdamW. The
joint model's tokens are the audio's (1024 x 128 fbank: 512 patches) then the video's
(16 x 224 x 224: 8 x 14 x 14 = 1568 tubes), each masked by its own ratio (random / tube masking,
``concat_masks``), so each single-modality model sees exactly the visible and masked tokens of
its half. The variants alternate in rounds (audio, video, joint, audio, video, joint, ...): this
machine's speed drifts, so ratios are taken within a round and their median and range printed.

Reading the ratios: joint / (audio + video) compares one joint step with the two single steps
run one after the other. The specific blocks cost the same in both; the shared blocks and the
whole decoder attend over La + Lv tokens at once, so their attention grows with (La + Lv)^2
rather than La^2 + Lv^2. A ratio < 1 means one joint step is cheaper than two separate ones
(fewer launches, one optimizer step); > 1 is the price of cross-modal attention.

Run it on an otherwise idle machine: another process using the same cores (a test run) slows
every torch step here many times over (3.7 s instead of 57 ms per audio step on 2 cores).

Measured on 2026-11-29, 2 CPU cores, torch 2.13 CPU, defaults (``--model tiny``):
    variant                          ms/step: median  (min - max)   tokens visible / total per sample
    audio                               55.4  (   54.6 -    57.1)     128 /   512
    video                              299.5  (  293.6 -   302.1)     392 /  1568
    joint (3 specific + 1 shared)      421.8  (  415.7 -   433.1)     520 /  2080
    joint / (audio + video)  1.20  ( 1.17 -  1.21);  joint / audio 7.58 (7.37 - 7.84);  joint / video 1.43 (1.39 - 1.43)
ViT-B (``--model base --rounds 3``, MAE's 8-block decoder): audio 1567 ms, video 5918 ms, joint
(11 specific + 1 shared) 9101 ms per step; joint / (audio + video) 1.21 (1.10 - 1.24).
Most of the tiny joint step's extra ~70 ms is its decoder: 2 blocks over 2080 tokens cost ~45 ms more
than over 512 and 1568 apart (cross-modal attention, which is the method).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modalmae.masking import concat_masks, random_masking, tube_masking
from modalmae.model import PRESETS, MaskedAutoencoder
from modalmae.model.multimodal import Group, MultiModalMAE
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes


def trainer(model: torch.nn.Module, forward):
    """A step: ``forward(model, generator)`` gives the output; backward and an AdamW update."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        forward(model, g).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def variants(args) -> dict[str, tuple]:
    """name -> (step, visible tokens, total tokens) per sample."""
    cfg = PRESETS[args.model]()
    specific = cfg.encoder_depth - 1 if args.specific_depth is None else args.specific_depth
    audio_tok = lambda: SpectrogramPatches(embed_dim=cfg.encoder_dim, num_frames=args.audio_frames)
    video_tok = lambda: VideoTubes(embed_dim=cfg.encoder_dim, num_frames=args.num_frames, image_size=args.input_size)
    b, ra, rv = args.batch_size, args.audio_mask_ratio, args.video_mask_ratio
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(b, args.audio_frames, 128, generator=gen)
    video = torch.randn(b, 3, args.num_frames, args.input_size, args.input_size, generator=gen)
    la, vt = audio_tok().num_tokens, video_tok()
    lv, grid = vt.num_tokens, vt.grid
    audio_masks = lambda g: random_masking(b, la, ra, generator=g)
    video_masks = lambda g: tube_masking(b, grid, rv, generator=g)
    ka, kv = audio_masks(gen).ids_keep.shape[1], video_masks(gen).ids_keep.shape[1]  # visible tokens per sample
    torch.manual_seed(0)
    out = {
        "audio": (trainer(MaskedAutoencoder(audio_tok(), cfg), lambda m, g: m(audio, audio_masks(g))), ka, la),
        "video": (trainer(MaskedAutoencoder(video_tok(), cfg), lambda m, g: m(video, video_masks(g))), kv, lv),
    }
    joint = MultiModalMAE({"audio": audio_tok(), "video": video_tok()}, cfg, specific_depth=specific)
    forward = lambda m, g: m(Group({"audio": audio, "video": video}, concat_masks([audio_masks(g), video_masks(g)])))
    out[f"joint ({specific} specific + {cfg.encoder_depth - specific} shared)"] = (trainer(joint, forward), ka + kv, la + lv)
    return out


def fmt(xs: list[float], scale: float = 1.0, spec: str = "7.1f") -> str:
    return f"{scale * statistics.median(xs):{spec}}  ({scale * min(xs):{spec}} - {scale * max(xs):{spec}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "small", "base"), default="tiny")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each variant (alternating) before the rounds")
    parser.add_argument("--audio-frames", type=int, default=1024, help="fbank frames (x 128 bins, 16 x 16 patches)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--audio-mask-ratio", type=float, default=0.75)
    parser.add_argument("--video-mask-ratio", type=float, default=0.75)
    parser.add_argument("--specific-depth", type=int, default=None, help="modality-specific blocks of the joint encoder (default: depth - 1, CAV-MAE)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = variants(args)
    for _ in range(args.warmup):
        for step, _, _ in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (step, _, _) in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    audio, video, joint = (times[name] for name in steps)
    print(f"{args.model}, batch {args.batch_size}, audio {args.audio_frames} x 128 (mask {args.audio_mask_ratio}), video {args.num_frames} x "
          f"{args.input_size}^2 (mask {args.video_mask_ratio}), fp32, {torch.get_num_threads()} threads, {args.rounds} rounds alternating")
    print(f"  {'variant':32s} {'ms/step: median  (min - max)':30s} tokens visible / total per sample")
    for name, (_, vis, total) in steps.items():
        print(f"  {name:32s} {fmt(times[name], 1000):30s} {vis:5d} / {total:5d}")
    print("ratios within each round, median (min - max):")
    print(f"  joint / (audio + video) {fmt([j / (a + v) for a, v, j in zip(audio, video, joint)], spec='5.2f')}"
          "   < 1: one joint step is cheaper than the two single steps one after the other")
    print(f"  joint / audio           {fmt([j / a for a, j in zip(audio, joint)], spec='5.2f')}")
    print(f"  joint / video           {fmt([j / v for v, j in zip(video, joint)], spec='5.2f')}")
    print("  (the shared blocks and the decoder attend over La + Lv tokens together: quadratic in the sum)")


if __name__ == "__main__":
    main()
