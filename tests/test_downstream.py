"""Downstream use: a linear probe and a fine-tune on real speech whose labels can be derived
(which recording each short window was cut from), judged on held-out windows."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import AUDIO, load_script
from modalmae.checkpoint import load_encoder, save_pretrained
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.tokenizers import SpectrogramPatches
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.train.downstream import Classifier, layer_decay_groups, split_of

SOURCES = ["arctic_a0007", "sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0920"]
FRAMES = 32  # 0.32 s windows


def write_windows(raw, *, per_source: int | None = None) -> None:
    """0.33 s windows every 0.16 s of three recordings (the first ``per_source`` of each), in
    folders of ``raw`` named after the recording."""
    for name in SOURCES:
        wave, sr = sf.read(AUDIO / f"{name}.wav", dtype="float32")
        (raw / name).mkdir()
        size, hop = int(0.33 * sr), int(0.16 * sr)
        for i, start in enumerate(range(0, len(wave) - size, hop)[:per_source]):
            sf.write(raw / name / f"w{i:03d}.wav", wave[start : start + size], sr)


def save_random_encoder(folder):
    """An untrained tiny Audio-MAE saved to ``folder``: its pooled fbank patches already carry the recording."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES, num_mel_bins=128), mae_tiny())
    return save_pretrained(model, folder, extra={"frontend": AudioFrontend(num_frames=FRAMES).config()})


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """The windows of the three recordings as labelled audio shards."""
    raw = tmp_path_factory.mktemp("windows")
    write_windows(raw)
    out = tmp_path_factory.mktemp("shards") / "windows"
    build = load_script("pipelines/build_shards.py")
    args = ["--modality", "audio", "--input", str(raw), "--output", str(out), "--label-from-parent", "--max-count", "40", "--workers", "1", "--quiet"]
    assert build.main(args) == 0
    return out


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    return save_random_encoder(tmp_path_factory.mktemp("model") / "model")


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_split_is_stable_and_disjoint():
    keys = [f"clip{i}" for i in range(2000)]
    first = [split_of(k, val_fraction=0.2) for k in keys]
    assert first == [split_of(k, val_fraction=0.2) for k in keys]
    assert 0.17 < first.count("val") / len(keys) < 0.23
    assert first != [split_of(k, val_fraction=0.2, seed=1) for k in keys]


def test_linear_probe_beats_chance_on_held_out_windows(windows, random_encoder, tmp_path):
    probe = load_script("recipes/linear_probe.py")
    run = tmp_path / "probe"
    args = ["--checkpoint", str(random_encoder), "--shards", str(windows), "--output", str(run), "--val-fraction", "0.3", "--workers", "1", "--no-progress"]
    assert probe.main(args) == 0
    result = read_metrics(run)[-1]
    assert result["split"] == "val" and result["num_classes"] == 3 and result["num_val"] >= 15
    assert result["accuracy"] > result["chance"] + 0.15, result
    assert json.loads((run / "classes.json").read_text()) == sorted(SOURCES)


def test_layer_decay_scales_deeper_blocks_less():
    encoder = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES, num_mel_bins=128), mae_tiny()).encoder
    groups = layer_decay_groups(Classifier(encoder, 3), weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = encoder.config.encoder_depth  # 4
    assert scale[id(encoder.tokenizer.proj.weight)] == 0.5 ** (depth + 1)
    assert scale[id(encoder.transformer.blocks[0].attn.qkv.weight)] == 0.5**depth
    assert scale[id(encoder.transformer.blocks[-1].mlp.fc2.weight)] == 0.5
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(encoder.transformer.blocks[0].norm1.weight)] == 0.0 and decay[id(encoder.transformer.blocks[0].attn.qkv.weight)] == 0.05


def test_finetune_learns_resumes_and_saves_a_reloadable_encoder(windows, random_encoder, tmp_path):
    finetune = load_script("recipes/finetune.py")
    run = tmp_path / "ft"
    args = [
        "--checkpoint", str(random_encoder), "--shards", str(windows), "--output", str(run), "--val-fraction", "0.3",
        "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "10", "--eval-every", "60", "--save-every", "60",
        "--log-every", "10", "--workers", "1", "--no-progress",
    ]
    assert finetune.main([*args, "--max-steps", "120"]) == 0
    metrics = read_metrics(run)
    evals = [m for m in metrics if "val_accuracy" in m]
    assert [m["step"] for m in evals] == [60, 120]
    assert all(m["val_samples"] >= 15 and 0 < m["chance"] < 1 and 0 <= m["val_accuracy"] <= 1 for m in evals)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.7 * losses[0], losses  # an untrained encoder on 70 windows: it fits them
    encoder, config = load_encoder(run / "model")
    assert config["parts"] == "encoder" and config["extra"]["classes"] == sorted(SOURCES)
    original, _ = load_encoder(random_encoder)
    x = torch.randn(1, FRAMES, 128)
    assert not torch.allclose(encoder.pooled(x), original.pooled(x))  # fine-tuning moved the encoder
    classifier = finetune.load_classifier(run)
    assert classifier(x).shape == (1, 3) and np.isfinite(classifier(x).detach().numpy()).all()
    # the pretraining loop's checkpoints: a longer run resumes from the last one
    assert finetune.main([*args, "--max-steps", "130", "--resume", "latest"]) == 0
    later = read_metrics(run)[len(metrics):]
    assert [m["step"] for m in later if "loss" in m] == [130] and [m["step"] for m in later if "val_accuracy" in m] == [130]


def test_finetune_masking_drops_tokens_in_training_only():
    encoder = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=FRAMES, num_mel_bins=128), mae_tiny()).encoder
    model = Classifier(encoder, 3, mask_ratio=0.5)
    seen = []
    encoder.transformer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    x = torch.randn(2, FRAMES, 128)
    model.train()(x, torch.Generator().manual_seed(0))
    model.eval()(x)
    assert seen == [encoder.tokenizer.num_tokens // 2, encoder.tokenizer.num_tokens]


def test_unreadable_checkpoint_is_one_line(tmp_path):
    probe = load_script("recipes/linear_probe.py")
    with pytest.raises(SystemExit, match="no such model folder"):
        probe.main(["--checkpoint", str(tmp_path / "missing"), "--shards", str(tmp_path), "--output", str(tmp_path / "out")])
