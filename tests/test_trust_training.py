"""A crash cannot wedge a run, a bad value cannot poison a model, a bad argument gets one line.

Real speech shards; the training loop of every recipe (modalmae.train.loop) under kill -9-like
interruptions, NaN batches, a file where the output folder should be, unreadable RNG state,
and checkpoints that are not what their config says.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import AUDIO, load_script
from modalmae.checkpoint import CheckpointError, load_encoder, save_pretrained
from modalmae.data.audio import AudioDecoder
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.modalities import MODALITIES
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.train.config import PretrainConfig, parse_config
from modalmae.train.loop import CHECKPOINTS, pretrain

FRAMES = 128
ARGS = [
    "--model", "tiny", "--num-frames", str(FRAMES), "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "2",
    "--log-every", "1", "--workers", "1", "--no-progress",
]


class Poisoned:
    """The audio decoder, with NaN in the fbank of the samples whose key contains ``marker``."""

    def __init__(self, marker: str) -> None:
        self.decode, self.marker = AudioDecoder(AudioFrontend(num_frames=FRAMES)), marker

    def __call__(self, sample, rng):
        item = self.decode(sample, rng)
        if self.marker in sample["__key__"]:
            item["fbank"][0, 0] = float("nan")
        return item


def pretrain_with(decode, shards, run, *extra):
    from accelerate import Accelerator

    cfg = parse_config(PretrainConfig, ["--shards", str(shards), "--output", str(run), "--model", "tiny", "--batch-size", "4",
                                        "--lr", "1e-3", "--warmup-steps", "2", "--log-every", "1", "--workers", "1", "--no-progress",
                                        "--log-keys", "--mask-ratio", "0.8", *extra])
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES), mae_tiny())
    spec = MODALITIES["audio"]
    return pretrain(
        cfg, accelerator=Accelerator(cpu=True), spec=spec, model=model, decode=decode,
        masking=lambda x, g, ratio, batch: spec.masking(model.tokenizer, x, ratio, g), save_extra={"frontend": AudioFrontend(num_frames=FRAMES).config()},
    )


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_nan_sample_skips_its_steps_and_never_reaches_the_weights(shards, tmp_path):
    run = tmp_path / "run"
    pretrain_with(Poisoned("arctic"), shards, run, "--max-steps", "12", "--save-every", "6")
    steps = read_lines(run / "keys" / "rank0.jsonl")
    poisoned = [s["step"] for s in steps if any("arctic" in key for _, _, key, _ in s["items"])]
    assert 0 < len(poisoned) < 12
    metrics = read_lines(run / "metrics.jsonl")
    assert metrics[-1]["nonfinite_steps"] == len(poisoned)
    assert [m["step"] for m in metrics if m["loss"] is None] == poisoned
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics if m["loss"] is not None)
    for weights in [run / "model" / "model.safetensors", *(run / CHECKPOINTS).glob("step_*/model.safetensors")]:
        assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values()), weights


def test_a_run_of_nan_steps_stops_with_a_clear_error(shards, tmp_path):
    with pytest.raises(RuntimeError, match="3 optimizer steps in a row .* NaN or infinite"):
        pretrain_with(Poisoned(""), shards, tmp_path / "run", "--max-steps", "12", "--max-nonfinite-steps", "3")
    assert not list((tmp_path / "run" / CHECKPOINTS).glob("step_*"))  # nothing saved holds NaN


def test_a_save_killed_half_way_is_passed_over_by_resume_latest(shards, tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    recipe = load_script("recipes/audio_mae.py")
    run = tmp_path / "run"
    real, calls = Accelerator.save_state, []

    def killed_at_the_second_save(self, output_dir, **kwargs):
        calls.append(output_dir)
        real(self, output_dir, **kwargs)
        if len(calls) == 2:
            (Path(output_dir) / "model.safetensors").unlink()  # the process dies while writing
            raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", killed_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        recipe.main(["--shards", str(shards), "--output", str(run), "--max-steps", "12", "--save-every", "4", *ARGS])
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["step_0000004", "step_0000008.tmp"]
    # An older-layout folder that never got its trainer_state.json is passed over too.
    shutil.copytree(run / CHECKPOINTS / "step_0000004", run / CHECKPOINTS / "step_0000006")
    (run / CHECKPOINTS / "step_0000006" / "trainer_state.json").unlink()
    monkeypatch.setattr(Accelerator, "save_state", real)
    capsys.readouterr()
    assert recipe.main(["--shards", str(shards), "--output", str(run), "--max-steps", "12", "--save-every", "4", "--resume", "latest", *ARGS]) == 0
    out = capsys.readouterr().out
    assert "passed over step_0000008.tmp" in out and "passed over step_0000006" in out
    assert f"resumed from {run / CHECKPOINTS / 'step_0000004'} at step 4" in out
    assert [m["step"] for m in read_lines(run / "metrics.jsonl")] == list(range(1, 13))  # 5..8 once, not twice
    assert not list((run / CHECKPOINTS).glob("*.tmp"))


def test_logs_after_the_last_checkpoint_are_not_repeated_and_rng_state_is_not_needed(shards, tmp_path, monkeypatch):
    from modalmae.train.loop import _Run

    recipe = load_script("recipes/audio_mae.py")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["--shards", str(shards), "--save-every", "5", "--max-steps", "10", "--log-keys", *ARGS]
    assert recipe.main([*args, "--output", str(whole)]) == 0
    real_step = _Run.step

    def killed_before_step_9(self, step, loss_fn):
        if step == 9:
            raise KeyboardInterrupt
        real_step(self, step, loss_fn)

    monkeypatch.setattr(_Run, "step", killed_before_step_9)
    with pytest.raises(KeyboardInterrupt):  # after step 8: the last checkpoint is step 5, the logs run to step 8
        recipe.main([*args, "--output", str(cut)])
    monkeypatch.setattr(_Run, "step", real_step)
    assert [m["step"] for m in read_lines(cut / "metrics.jsonl")] == list(range(1, 9))
    (cut / CHECKPOINTS / "step_0000005" / "random_states_0.pkl").write_bytes(b"not a pickle")  # Accelerate's RNG state: unreadable
    assert recipe.main([*args, "--output", str(cut), "--resume", "latest"]) == 0
    assert [m["step"] for m in read_lines(cut / "metrics.jsonl")] == list(range(1, 11))
    assert read_lines(cut / "keys" / "rank0.jsonl") == read_lines(whole / "keys" / "rank0.jsonl")
    weights = [load_file(str(run / "model" / "model.safetensors")) for run in (whole, cut)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_output_that_is_a_file_is_one_line(shards, tmp_path):
    recipe = load_script("recipes/audio_mae.py")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit, match="--output .*taken: exists and is not a folder"):
        recipe.main(["--shards", str(shards), "--output", str(tmp_path / "taken"), "--max-steps", "1", *ARGS])
    with pytest.raises(SystemExit, match="--output .*cannot be created"):
        recipe.main(["--shards", str(shards), "--output", str(tmp_path / "taken" / "run"), "--max-steps", "1", *ARGS])


def test_a_config_that_does_not_match_its_weights_is_refused_before_building(tmp_path):
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES), mae_tiny())
    folder = save_pretrained(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(encoder_dim=1 << 17, encoder_heads=64)  # 2^17 wide: 100+ GB if built
    config["tokenizer"]["config"]["embed_dim"] = 1 << 17
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="describe different models"):
        load_encoder(folder)


def test_reconstruct_given_a_file_it_cannot_read_says_so(tmp_path, capsys):
    reconstruct = load_script("pipelines/reconstruct.py")
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(SystemExit) as stop:
        reconstruct.main(["--checkpoint", str(bad), "--file", str(AUDIO / "arctic_a0007.wav")])
    assert stop.value.code == 2
    assert "weights.pth" in capsys.readouterr().err


def test_kill_9_mid_run_loses_no_log_line_and_the_rerun_finishes(shards, tmp_path):
    """A real SIGKILL at whatever moment the run is at (perhaps mid-save): the key log holds
    every step trained, and --resume latest finishes the run with each step logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "recipes" / "audio_mae.py"), "--shards", str(shards), "--output", str(run),
               "--save-every", "2", "--log-keys", *ARGS]
    process = subprocess.Popen([*command, "--max-steps", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 9) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    logged = [line["step"] for line in read_lines(run / "keys" / "rank0.jsonl")]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 9  # flushed step by step
    assert subprocess.run([*command, "--max-steps", str(len(logged) + 3), "--resume", "latest"], capture_output=True).returncode == 0
    final = len(logged) + 3
    assert [m["step"] for m in read_lines(metrics)] == list(range(1, final + 1))
    assert [line["step"] for line in read_lines(run / "keys" / "rank0.jsonl")] == list(range(1, final + 1))
