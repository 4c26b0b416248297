"""--mixed-precision auto, the shipped accelerate configs, fused AdamW, and a bf16 run tracking fp32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from modalmae.train import precision
from modalmae.train.precision import adamw, cpu_bf16_flag, resolve_precision

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "pipelines"))
sys.path.insert(0, str(REPO / "recipes"))

X86_FLAGS = "fpu vme de pse tsc msr sse sse2 avx avx2 avx512f avx512bw avx512vl"


def cpuinfo(folder: Path, text: str) -> str:
    folder.mkdir()
    (folder / "cpuinfo").write_text(text)
    return str(folder / "cpuinfo")


def test_the_bf16_flag_is_read_from_cpuinfo(tmp_path):
    assert cpu_bf16_flag(cpuinfo(tmp_path / "cpx", f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_bf16\n")) == "avx512_bf16"
    assert cpu_bf16_flag(cpuinfo(tmp_path / "spr", f"flags\t\t: {X86_FLAGS} amx_tile amx_bf16 avx512_bf16\n")) == "amx_bf16"
    assert cpu_bf16_flag(cpuinfo(tmp_path / "arm", "Features\t: fp asimd sve bf16 i8mm\n")) == "bf16"
    assert cpu_bf16_flag(cpuinfo(tmp_path / "skx", f"flags\t\t: {X86_FLAGS}\n")) is None
    assert cpu_bf16_flag(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flag, expected", [("amx_bf16", "bf16"), ("bf16", "bf16"), ("avx512_bf16", "no"), (None, "no")])
def test_auto_picks_bf16_where_it_is_faster(monkeypatch, flag, expected):
    """AMX and Arm's BF16 multiply bf16 matrices faster than fp32; AVX512-BF16 alone does not
    (0.65x on the test machine), so it keeps fp32, and says why."""
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: flag)
    chosen = resolve_precision("auto", "cpu", env={})
    assert chosen.name == expected
    assert (flag or "no bf16") in chosen.reason
    # An explicit choice is taken as is, whatever the hardware.
    assert resolve_precision("no", "cpu", env={}).name == "no"
    assert resolve_precision("bf16", "cpu", env={}).name == "bf16"


def test_auto_follows_a_launcher_that_asks_for_a_precision(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    assert resolve_precision("auto", "cpu", env={"ACCELERATE_MIXED_PRECISION": "bf16"}).name == "bf16"
    assert resolve_precision("auto", "cpu", env={"ACCELERATE_MIXED_PRECISION": "fp16"}).name == "fp16"
    # accelerate's default 'no' cannot be told apart from unset: the hardware decides.
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: "amx_bf16")
    assert resolve_precision("auto", "cpu", env={"ACCELERATE_MIXED_PRECISION": "no"}).name == "bf16"
    with pytest.raises(ValueError, match="--mixed-precision 'fp8'"):
        resolve_precision("fp8", "cpu", env={})


@pytest.mark.parametrize("config", sorted((REPO / "recipes" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_leave_the_precision_to_auto(config, monkeypatch):
    """What `accelerate launch --config_file C` puts in ACCELERATE_MIXED_PRECISION lets auto
    choose: bf16 where the hardware multiplies bf16 faster, fp32 where it does not."""
    env = {"ACCELERATE_MIXED_PRECISION": str(load_config_from_file(str(config)).mixed_precision)}
    for flag, expected in (("amx_bf16", "bf16"), ("avx512_bf16", "no"), (None, "no")):
        monkeypatch.setattr(precision, "cpu_bf16_flag", lambda flag=flag: flag)
        assert resolve_precision("auto", "cpu", env=env).name == expected, config.name


def test_fused_adamw_where_possible_and_the_same_update():
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(w) for w in weights]

    def run(optimizer_of):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = optimizer_of([{"params": params[:1], "weight_decay": 0.05}, {"params": params[1:], "weight_decay": 0.0}])
        for _ in range(5):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        return optimizer, params

    fused, got = run(lambda groups: adamw(groups, lr=1e-2, betas=(0.9, 0.95)))
    assert fused.defaults["fused"] is True
    _, want = run(lambda groups: torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        assert not torch.equal(a, torch.zeros_like(a))
    # float64 parameters have no fused kernel here: the loop, not an error.
    assert not adamw([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=1e-3).defaults["fused"]


def test_a_bf16_run_tracks_fp32_on_real_audio(tmp_path, capsys):
    """The same 24 steps on real speech in fp32 and in bf16 autocast: every step's loss within
    2 % of fp32's (measured: under 0.1 %), the curve falls alike, and each run says and records
    the precision it trained in."""
    import audio_mae
    import build_shards

    shards = tmp_path / "shards"
    assert build_shards.main(["--modality", "audio", "--input", str(REPO / "tests" / "data" / "audio"), "--output", str(shards), "--workers", "1", "--quiet"]) == 0
    losses = {}
    for mode in ("no", "bf16"):
        run = tmp_path / mode
        args = [
            "--shards", str(shards), "--output", str(run), "--max-steps", "24", "--model", "tiny", "--num-frames", "256",
            "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "3", "--log-every", "1", "--save-every", "100",
            "--workers", "1", "--no-progress", "--mixed-precision", mode,
        ]
        assert audio_mae.main(args) == 0
        printed = capsys.readouterr().out
        assert f"precision: {'fp32' if mode == 'no' else 'bf16 autocast'}" in printed
        assert json.loads((run / "config.json").read_text())["resolved_precision"] == mode
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = torch.tensor([line["loss"] for line in lines if "loss" in line])
    fp32, bf16 = losses["no"], losses["bf16"]
    assert len(fp32) == len(bf16) == 24
    relative = ((bf16 - fp32).abs() / fp32).max().item()
    assert relative < 0.02, f"bf16 departs from fp32 by {relative:.2%}"
    assert bf16[-4:].mean() < 0.85 * bf16[:4].mean() and fp32[-4:].mean() < 0.85 * fp32[:4].mean()
    assert not torch.equal(fp32, bf16)  # bf16 really ran
