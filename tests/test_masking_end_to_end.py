"""The newer masking methods and DMAE through real pretraining runs: ratios over steps and per
sample on speech (the ratio in force is logged and a resumed run continues the schedule),
motion-guided masks on real clips with sound-free video, ColorMAE masks on photos, and a
distilled run whose feature loss falls while the teacher is left as it was and the saved model
is the student alone."""

import json

import pytest

from conftest import DATA, load_script

ARGS = ["--model", "tiny", "--num-frames", "128", "--batch-size", "4", "--workers", "1", "--no-progress", "--lr", "1e-3", "--warmup-steps", "2"]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_schedule_is_logged_and_resumes_where_it_stopped(shards, tmp_path):
    recipe = load_script("recipes/audio_mae.py")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    common = [*ARGS, "--shards", str(shards), "--mask-ratio", "linear:0.5:0.9", "--max-steps", "5", "--log-every", "1", "--save-every", "2"]
    assert recipe.main([*common, "--output", str(whole)]) == 0
    ratios = [r["mask_ratio"] for r in records(whole)]
    assert ratios == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])  # step 1 .. 5 of a linear schedule
    # Resume from the step-4 checkpoint of that run into another folder: steps 5 only, at 0.9.
    assert recipe.main([*common, "--output", str(resumed), "--resume", str(whole / "checkpoints" / "step_0000004")]) == 0
    again = records(resumed)
    assert [r["step"] for r in again] == [5] and again[0]["mask_ratio"] == pytest.approx(0.9)
    assert again[0]["loss"] == pytest.approx(records(whole)[-1]["loss"], rel=1e-5)  # the same step, the same masks


def test_per_sample_ratios_train(shards, tmp_path):
    recipe = load_script("recipes/audio_mae.py")
    assert recipe.main([*ARGS, "--shards", str(shards), "--output", str(tmp_path), "--mask-ratio", "uniform:0.3:0.9", "--max-steps", "4", "--log-every", "2"]) == 0
    lines = records(tmp_path)
    assert all(0.3 <= r["mask_ratio"] < 0.9 and r["nonfinite_steps"] == 0 for r in lines)
    assert len({round(r["mask_ratio"], 6) for r in lines}) == 2  # drawn anew each step
    with pytest.raises(SystemExit):
        recipe.main([*ARGS, "--shards", str(shards), "--output", str(tmp_path / "x"), "--mask-ratio", "linear:0.5"])


def test_distillation_feature_loss_falls_and_the_teacher_stays(shards, tmp_path):
    from modalmae.checkpoint import load_pretrained, state_digest

    recipe = load_script("recipes/audio_mae.py")
    assert recipe.main([*ARGS, "--shards", str(shards), "--output", str(tmp_path / "teacher"), "--max-steps", "2", "--log-every", "2"]) == 0
    teacher_before = state_digest(load_pretrained(tmp_path / "teacher" / "model")[0])
    student = tmp_path / "student"
    assert recipe.main([
        *ARGS, "--shards", str(shards), "--output", str(student), "--max-steps", "16", "--log-every", "4", "--seed", "1",
        "--teacher", str(tmp_path / "teacher" / "model"), "--distill-layer", "3",
    ]) == 0
    lines = records(student)
    assert lines[-1]["feature_loss"] < 0.8 * lines[0]["feature_loss"], [r["feature_loss"] for r in lines]
    assert all(r["loss"] == pytest.approx(r["pixel_loss"] + r["feature_loss"], rel=1e-4) for r in lines)  # weight 1
    assert state_digest(load_pretrained(tmp_path / "teacher" / "model")[0]) == teacher_before
    model, config = load_pretrained(student / "model")  # the student alone, as any other run's model
    assert config["parts"] == "mae" and not any(k.startswith(("teacher", "distillation")) for k in model.state_dict())
    with pytest.raises(SystemExit, match="--teacher"):
        recipe.main([*ARGS, "--shards", str(shards), "--output", str(tmp_path / "bad"), "--teacher", str(tmp_path / "nowhere")])


@pytest.mark.parametrize("recipe,data,flags", [
    ("video_mae", "av", ["--num-frames", "8", "--input-size", "64", "--masking", "motion", "--mask-ratio", "0.75"]),
    ("video_mae", "av", ["--num-frames", "8", "--input-size", "64", "--masking", "color", "--noise-per-frame", "--mask-ratio", "uniform:0.5:0.9"]),
    ("image_mae", "images", ["--input-size", "64", "--masking", "color", "--noise-color", "blue"]),
])
def test_recipes_train_with_each_masking(recipe, data, flags, tmp_path):
    modality = "video" if recipe == "video_mae" else "image"
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", modality, "--input", str(DATA / data), "--output", str(tmp_path / "shards"), "--workers", "1", "--quiet"]) == 0
    run = tmp_path / "run"
    args = ["--model", "tiny", "--batch-size", "2", "--workers", "1", "--no-progress", "--max-steps", "2", "--log-every", "1"]
    assert load_script(f"recipes/{recipe}.py").main(["--shards", str(tmp_path / "shards"), "--output", str(run), *args, *flags]) == 0
    lines = records(run)
    assert len(lines) == 2 and all(r["nonfinite_steps"] == 0 and r["loss"] > 0 for r in lines)
    assert (run / "reconstruction.png").stat().st_size > 0
