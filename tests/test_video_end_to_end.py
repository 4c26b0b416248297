"""Tiny end-to-end video run: real clips -> shards -> VideoMAE (V2 decoder masking) -> checkpoint."""

import json
import shutil

import torch

from conftest import DATA, load_script
from modalmae.checkpoint import load_pretrained

ARGS = [
    "--model", "tiny", "--num-frames", "8", "--sampling-rate", "2", "--input-size", "64", "--batch-size", "2",
    "--lr", "1e-3", "--warmup-steps", "3", "--log-every", "1", "--save-every", "100", "--workers", "1", "--no-progress",
]


def test_video_pretraining_runs_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    for name in ("a", "b", "c"):
        (raw / name).mkdir(parents=True)
        shutil.copy(DATA / "video" / "carphone_pristine.mp4", raw / name / "clip.mp4")
    (raw / "broken.mp4").write_bytes(b"\x00" * 1000)
    shards = tmp_path / "shards"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "video", "--input", str(raw), "--output", str(shards), "--max-count", "1", "--workers", "1", "--quiet", "--label-from-parent"]) == 0
    assert json.loads((shards / "manifest.json").read_text())["num_samples"] == 3

    recipe = load_script("recipes/video_mae.py")
    run = tmp_path / "run"
    assert recipe.main(["--shards", str(shards), "--output", str(run), "--max-steps", "30", "--decoder-mask-ratio", "0.5", "--repeated-aug", "2", *ARGS]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < 0.95 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    assert (run / "reconstruction.png").stat().st_size > 10_000

    model, config = load_pretrained(run / "model")
    assert config["tokenizer"]["class"] == "VideoTubes" and model.tokenizer.grid == (4, 4, 4)
    feats = model.encoder.pooled(torch.zeros(1, 3, 8, 64, 64))
    assert feats.shape == (1, 192)
