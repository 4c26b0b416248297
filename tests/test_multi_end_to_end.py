"""Mixed corpora in one run (recipes/multi_mae.py): speech and photos train one shared encoder,
every step holding both; resumes continue each corpus's data exactly; two real CPU processes
end with identical weights (and so do two processes of audio-visual training, whose contrastive
negatives cross processes)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import AUDIO, REPO, load_script

IMAGES = REPO / "tests" / "data" / "images"
AV = REPO / "tests" / "data" / "av"
ARGS = [
    "--model", "tiny", "--batch-size", "3", "--weights", "audio=2", "--lr", "1e-3", "--warmup-steps", "1", "--log-every", "1",
    "--save-every", "2", "--no-progress", "--log-keys",
    "--recipe-flags", "audio=--num-frames 64", "image=--input-size 32 --patch-size 16",
]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "audio", "--input", str(AUDIO), "--output", str(root / "speech"), "--max-count", "4", "--workers", "1", "--quiet"]) == 0
    assert build.main(["--modality", "image", "--input", str(IMAGES), "--output", str(root / "photos"), "--workers", "1", "--quiet"]) == 0
    assert build.main(["--modality", "video", "--extract-audio", "--input", str(AV), "--output", str(root / "av"), "--workers", "1", "--quiet"]) == 0
    return root


def shards(corpora):
    return ["--shards", f"audio={corpora / 'speech'}", f"image={corpora / 'photos'}"]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def keys(run, name):
    return [(rec["step"], item[2]) for line in (run / "keys" / f"rank0_{name}.jsonl").read_text().splitlines() for rec in [json.loads(line)] for item in rec["items"]]


def test_every_step_holds_every_corpus_and_resume_continues_each(corpora, tmp_path):
    recipe = load_script("recipes/multi_mae.py")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert recipe.main([*shards(corpora), "--output", str(whole), "--max-steps", "4", "--workers", "1", *ARGS]) == 0
    lines = records(whole)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(r["loss_audio"] > 0 and r["loss_image"] > 0 for r in lines)  # both modalities in every step
    assert lines[-1]["sources"] == {str(corpora / "speech"): 8, str(corpora / "photos"): 4}  # batch 3 = 2 speech + 1 photo
    assert recipe.main([*shards(corpora), "--output", str(split), "--max-steps", "2", "--workers", "1", *ARGS]) == 0
    checkpoint = split / "checkpoints" / "step_0000002"
    assert (checkpoint / "data_rank0_audio.json").is_file() and (checkpoint / "data_rank0_image.json").is_file()
    assert recipe.main([*shards(corpora), "--output", str(split), "--max-steps", "4", "--workers", "1", "--resume", "latest", *ARGS]) == 0
    for name in ("audio", "image"):
        assert keys(split, name) == keys(whole, name)  # the resumed run read what the whole run read, step by step
    assert [r["step"] for r in records(split)] == [1, 2, 3, 4]
    from modalmae.checkpoint import load_encoder

    encoder, config = load_encoder(whole / "model", modality="image")
    assert config["tokenizer"]["class"] == "ImagePatches" and config["joint"]["modalities"] == ["audio", "image"]


def test_flags_name_modalities_that_exist(corpora, tmp_path):
    recipe = load_script("recipes/multi_mae.py")
    with pytest.raises(SystemExit, match="MODALITY=SHARDS"):
        recipe.main(["--shards", str(corpora / "speech"), "--output", str(tmp_path), "--model", "tiny"])
    with pytest.raises(SystemExit, match="--recipe-flags for video: no --shards of that modality"):
        recipe.main([*shards(corpora), "--output", str(tmp_path), "--model", "tiny", "--recipe-flags", "video=--num-frames 8"])
    with pytest.raises(SystemExit, match="these are audio shards"):
        recipe.main(["--shards", f"image={corpora / 'speech'}", "--output", str(tmp_path), "--model", "tiny"])


def launch(script, run, *args):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "configs" / "cpu_2proc.yaml"),
        str(REPO / "recipes" / script), "--output", str(run), *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
def test_two_processes_mixing_modalities_end_with_identical_weights(corpora, tmp_path):
    ranks = launch("multi_mae.py", tmp_path / "run", *shards(corpora), "--max-steps", "3", "--workers", "1", *ARGS)
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"] and ranks[0]["steps"] == 3
    assert records(tmp_path / "run")[-1]["loss_image"] is not None


@pytest.mark.distributed
def test_two_processes_of_audio_visual_training_end_with_identical_weights(corpora, tmp_path):
    ranks = launch(
        "av_mae.py", tmp_path / "run", "--shards", str(corpora / "av"), "--model", "tiny", "--num-frames", "4", "--input-size", "32",
        "--audio-frames", "64", "--num-mel-bins", "32", "--batch-size", "2", "--max-steps", "3", "--log-every", "1",
        "--workers", "1", "--no-progress", "--contrastive-weight", "1",
    )
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    assert all(r["contrastive"] > 0 for r in records(tmp_path / "run"))


def test_batches_are_shared_out_by_weight_with_a_sample_of_each():
    split = load_script("recipes/multi_mae.py").split_batch
    assert split(8, {"audio": 2, "video": 1, "points": 1, "image": 1}) == {"audio": 3, "video": 2, "points": 2, "image": 1}
    assert split(4, {"a": 100, "b": 1, "c": 1}) == {"a": 2, "b": 1, "c": 1}  # every corpus in every step
    assert split(10, {"a": 1, "b": 1}) == {"a": 5, "b": 5}
    with pytest.raises(SystemExit, match="cannot hold a sample of each of 3"):
        split(2, {"a": 1, "b": 1, "c": 1})
