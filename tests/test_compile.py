"""--compile: every pretraining recipe trains compiled (torch.compile, inductor), reports what
compiling cost, and learns what the eager run learns.

The audio recipe runs by default (about a minute of compiling on 2 cores without inductor's
cache); the other recipes are `-m slow`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, load_script

COMMON = ["--model", "tiny", "--lr", "1e-3", "--warmup-steps", "1", "--log-every", "1", "--save-every", "100", "--workers", "1", "--no-progress"]


def build(tmp_path: Path, modality: str, files: list[Path]) -> Path:
    raw, out = tmp_path / "raw", tmp_path / "shards"
    raw.mkdir()
    for f in files:
        shutil.copy(f, raw / f.name)
    assert load_script("pipelines/build_shards.py").main(["--modality", modality, "--input", str(raw), "--output", str(out), "--workers", "1", "--quiet"]) == 0
    return out


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_both(tmp_path: Path, capsys, recipe: str, args: list[str], steps: int) -> tuple[Path, Path, str]:
    module = load_script(f"recipes/{recipe}.py")
    runs = {}
    for name in ("eager", "compiled"):
        runs[name] = tmp_path / name
        flags = ["--output", str(runs[name]), "--max-steps", str(steps), "--mixed-precision", "no", *COMMON, *args]
        assert module.main(flags + (["--compile"] if name == "compiled" else [])) == 0
    return runs["eager"], runs["compiled"], capsys.readouterr().out


def test_compiled_audio_pretraining_matches_eager(tmp_path, capsys):
    shards = build(tmp_path, "audio", sorted((DATA / "audio").glob("sense_and_sensibility_*.wav")))
    eager, compiled, printed = train_both(tmp_path, capsys, "audio_mae", ["--shards", str(shards), "--num-frames", "128", "--batch-size", "2"], steps=3)
    assert "torch.compile: the first step took" in printed and printed.count("torch.compile:") == 1
    assert json.loads((compiled / "config.json").read_text())["compile"] is True
    # The same data, masks and initial weights: the same losses to float rounding (inductor
    # fuses and reorders), step by step, and the same weights in the same names.
    assert len(losses(compiled)) == 3
    torch.testing.assert_close(torch.tensor(losses(compiled)), torch.tensor(losses(eager)), rtol=1e-4, atol=1e-5)
    want, got = (load_file(str(run / "model" / "model.safetensors")) for run in (eager, compiled))
    assert got.keys() == want.keys() and not any("_orig_mod" in k for k in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4)


SLOW_RECIPES = {
    "video_mae": ("video", [DATA / "video" / "carphone_pristine.mp4"], ["--num-frames", "8", "--sampling-rate", "2", "--input-size", "64", "--batch-size", "1"]),
    "point_mae": ("points", [DATA / "points" / "kitten.xyz", DATA / "points" / "bunny_zipper.ply"],
                  ["--num-points", "512", "--num-groups", "32", "--group-size", "16", "--batch-size", "2"]),
    "image_mae": ("image", [DATA / "images" / "camera.png", DATA / "images" / "chelsea.png"], ["--input-size", "32", "--patch-size", "8", "--batch-size", "2"]),
    "mri_mae": ("mri", [DATA / "mri" / "anatomical.nii"], ["--crop", "32", "--patch-size", "8", "--batch-size", "1", "--spacing", "3"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(SLOW_RECIPES))
def test_every_recipe_trains_compiled(tmp_path, capsys, recipe):
    modality, files, args = SLOW_RECIPES[recipe]
    shards = build(tmp_path, modality, files)
    eager, compiled, printed = train_both(tmp_path, capsys, recipe, ["--shards", str(shards), *args], steps=2)
    assert "torch.compile: the first step took" in printed
    torch.testing.assert_close(torch.tensor(losses(compiled)), torch.tensor(losses(eager)), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_the_joint_recipe_trains_compiled(tmp_path, capsys):
    """multi_mae: one forward over two corpora (audio, images), compiled with graph breaks where
    the joint model sizes its tensors from counts."""
    (tmp_path / "a").mkdir()
    (tmp_path / "i").mkdir()
    speech = build(tmp_path / "a", "audio", sorted((DATA / "audio").glob("sense_and_sensibility_*.wav")))
    photos = build(tmp_path / "i", "image", [DATA / "images" / "camera.png", DATA / "images" / "chelsea.png"])
    args = [
        "--shards", f"audio={speech}", f"image={photos}", "--batch-size", "3", "--weights", "audio=2",
        "--recipe-flags", "audio=--num-frames 64", "image=--input-size 32 --patch-size 16",
    ]
    eager, compiled, printed = train_both(tmp_path, capsys, "multi_mae", args, steps=2)
    assert "torch.compile: the first step took" in printed
    torch.testing.assert_close(torch.tensor(losses(compiled)), torch.tensor(losses(eager)), rtol=1e-3, atol=1e-4)
