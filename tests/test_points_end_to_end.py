"""Tiny end-to-end Point-MAE run: real scans -> shards -> pretraining -> checkpoint -> features."""

import json
import shutil

import numpy as np
import torch

from conftest import DATA, load_script
from modalmae.checkpoint import load_encoder

ARGS = [
    "--model", "tiny", "--num-points", "512", "--num-groups", "32", "--group-size", "16", "--batch-size", "4",
    "--lr", "1e-3", "--warmup-steps", "3", "--log-every", "1", "--save-every", "100", "--workers", "1", "--no-progress",
]


def test_point_mae_runs_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("kitten.xyz", "bunny_zipper.ply"):
        shutil.copy(DATA / "points" / name, raw / name)
    np.save(raw / "blob.npy", np.random.default_rng(0).normal(size=(2000, 3)).astype(np.float32))
    np.save(raw / "flat.npy", np.zeros((100, 3), np.float32))  # degenerate: skipped, not fatal
    shards = tmp_path / "shards"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "points", "--input", str(raw), "--output", str(shards), "--max-count", "1", "--workers", "1", "--quiet"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["num_samples"] == 3 and [s["path"] for s in manifest["skipped"]] == ["flat.npy"]

    recipe = load_script("recipes/point_mae.py")
    run = tmp_path / "run"
    assert recipe.main(["--shards", str(shards), "--output", str(run), "--max-steps", "30", "--masking", "block", *ARGS]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < 0.5 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    assert (run / "reconstruction.png").stat().st_size > 10_000

    encoder, config = load_encoder(run / "model")
    assert config["tokenizer"]["class"] == "PointGroups"
    assert encoder.eval().pooled(torch.randn(2, 512, 3)).shape == (2, 192)
