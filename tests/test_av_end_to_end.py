"""Audio-visual pretraining end to end on real clips (recipes/av_mae.py).

Four real recordings with sound (tests/data/av: Sintel, an indoor event, two GRID talkers) are
each cut in two: the first halves (and a clip without an audio track) are trained on, the
second halves are the held-out pairs of the retrieval evaluation. One short run must lower both
modalities' losses, train through the silent clip, and retrieve held-out audio from video and
video from audio better than chance and than untrained models of the same shape.
"""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import REPO, load_script

AV = REPO / "tests" / "data" / "av"
SILENT = REPO / "tests" / "data" / "video" / "carphone_pristine.mp4"  # no audio track
CLIPS = ["sintel_2s.mp4", "event_h264_aac.mp4", "grid_bbaf2n.mpg", "grid_lbbc2a.mpg"]
SIZES = [
    "--model", "tiny", "--num-frames", "4", "--sampling-rate", "2", "--input-size", "64", "--audio-frames", "128",
    "--num-mel-bins", "64", "--audio-mask-ratio", "0.5", "--video-mask-ratio", "0.5",
]
TRAIN = [
    *SIZES, "--batch-size", "5", "--max-steps", "80", "--log-every", "20", "--eval-every", "40", "--warmup-steps", "5",
    "--lr", "2e-3", "--contrastive-weight", "1", "--workers", "1", "--no-progress",
]


def halves(source, first, second, *, short_side=96):
    """Re-encode ``source`` as its first and second half (H.264 at ``short_side`` px + AAC)."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate).limit_denominator(1000)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    with av.open(str(source)) as container:
        audio = container.streams.audio[0]
        sample_rate = audio.rate
        to_float = av.AudioResampler(format="fltp", layout="stereo", rate=sample_rate)
        wave = np.concatenate([g.to_ndarray() for f in container.decode(audio) for g in to_float.resample(f)], axis=1)
    height, width = frames[0].shape[:2]
    scale = short_side / min(height, width)
    size = (round(width * scale) // 2 * 2, round(height * scale) // 2 * 2)
    for part, out in enumerate((first, second)):
        lo, hi = len(frames) * part // 2, len(frames) * (part + 1) // 2
        with av.open(str(out), "w", format="mp4") as sink:
            video = sink.add_stream("libx264", rate=rate)
            video.width, video.height, video.pix_fmt = *size, "yuv420p"
            sound = sink.add_stream("aac", rate=sample_rate)
            for i, frame in enumerate(frames[lo:hi]):
                picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(width=size[0], height=size[1], format="yuv420p")
                picture.pts = i
                sink.mux(video.encode(picture))
            sink.mux(video.encode(None))
            span = wave[:, int(lo / rate * sample_rate) : int(hi / rate * sample_rate)]
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(span, dtype=np.float32), format="fltp", layout="stereo")
            block.sample_rate, block.pts = sample_rate, 0
            sink.mux(sound.encode(block))
            sink.mux(sound.encode(None))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    (root / "train").mkdir()
    (root / "held_out").mkdir()
    for name in CLIPS:
        stem = name.split(".")[0]
        halves(AV / name, root / "train" / f"{stem}.mp4", root / "held_out" / f"{stem}.mp4")
    (root / "train" / SILENT.name).write_bytes(SILENT.read_bytes())
    build = load_script("pipelines/build_shards.py")
    for split in ("train", "held_out"):
        assert build.main(["--modality", "video", "--extract-audio", "--input", str(root / split), "--output", str(root / f"shards-{split}"), "--workers", "1", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def run(corpus):
    out = corpus / "run"
    recipe = load_script("recipes/av_mae.py")
    assert recipe.main(["--shards", str(corpus / "shards-train"), "--eval-shards", str(corpus / "shards-held_out"), "--output", str(out), *TRAIN]) == 0
    return out


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_both_modalities_learn_and_a_silent_clip_trains(run):
    train = [r for r in lines(run) if "loss" in r]
    assert all(r["nonfinite_steps"] == 0 and r["skipped"] == 0 for r in train)  # the clip without sound is not a NaN, nor skipped
    for key in ("loss_audio", "loss_video", "contrastive"):
        first, last = train[0][key], train[-1][key]
        assert last < first * 0.95, f"{key} did not fall: {first:.4f} -> {last:.4f}"
    assert (run / "reconstruction.png").stat().st_size > 0 and (run / "reconstruction_audio.png").is_file() and (run / "reconstruction_video.png").is_file()


def test_retrieval_beats_chance_and_untrained_models(corpus, run):
    """recall@1 both ways over the 4 held-out pairs, against 5 untrained models (other seeds)."""
    final = [r for r in lines(run) if "a2v_r1" in r][-1]
    assert final["retrieval_pairs"] == len(CLIPS) and final["step"] == 80
    trained = (final["a2v_r1"] + final["v2a_r1"]) / 2

    from modalmae.data.stream import ShardStream, make_loader
    from modalmae.data.shards import resolve_shards
    from modalmae.train.config import parse_config
    from modalmae.train.joint import retrieval

    recipe = load_script("recipes/av_mae.py")
    cfg = parse_config(recipe.AVMAEConfig, ["--shards", str(corpus / "shards-train"), *SIZES])
    held_out = resolve_shards(corpus / "shards-held_out")
    untrained = []
    for seed in range(5):
        torch.manual_seed(seed)
        job = recipe.build(cfg)
        loader = make_loader(ShardStream(held_out, job.eval_decoder, epochs=1, shuffle_buffer=1, shuffle_shards=False), batch_size=4, num_workers=0)
        figures = retrieval(job.model, loader, ("audio", "video"), "cpu")
        untrained.append((figures["a2v_r1"] + figures["v2a_r1"]) / 2)
    chance = 1 / len(CLIPS)
    baseline = float(np.mean(untrained))
    print(f"held-out recall@1: trained {trained:.3f}, untrained {baseline:.3f} (seeds: {untrained}), chance {chance:.3f}")
    assert trained >= chance + 0.25 and trained >= baseline + 0.25, (trained, untrained, chance)


def test_each_modality_encoder_comes_out_of_the_joint_model(corpus, run, tmp_path):
    extract = load_script("pipelines/extract_features.py")
    from modalmae.checkpoint import load_encoder, load_pretrained

    joint, config = load_pretrained(run / "model")
    assert config["parts"] == "multimodal" and joint.specific_depth == 3  # tiny: 4 blocks, CAV-MAE's all-but-the-last
    for modality in ("audio", "video"):
        assert extract.main(["--checkpoint", str(run / "model"), "--shards", str(corpus / "shards-held_out"), "--modality", modality,
                             "--output", str(tmp_path / f"{modality}.npz"), "--workers", "0", "--quiet"]) == 0
        saved = np.load(tmp_path / f"{modality}.npz")
        assert saved["features"].shape == (len(CLIPS), 192) and np.isfinite(saved["features"]).all()
    encoder, _ = load_encoder(run / "model", modality="video")
    assert encoder.config.modality_embed and len(encoder.transformer.blocks) == 4
    with pytest.raises(SystemExit, match="name the modality"):
        extract.main(["--checkpoint", str(run / "model"), "--shards", str(corpus / "shards-held_out"), "--output", str(tmp_path / "x.npz")])


def test_clips_without_any_sound_train_on_video(corpus, tmp_path):
    """Every sample silent: no audio loss to count (null in the metrics), no contrastive pair,
    the video still learns, nothing is NaN."""
    (tmp_path / "silent").mkdir()
    (tmp_path / "silent" / SILENT.name).write_bytes(SILENT.read_bytes())
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "video", "--extract-audio", "--input", str(tmp_path / "silent"), "--output", str(tmp_path / "shards"), "--workers", "1", "--quiet"]) == 0
    recipe = load_script("recipes/av_mae.py")
    assert recipe.main(["--shards", str(tmp_path / "shards"), "--output", str(tmp_path / "run"), *SIZES, "--batch-size", "2",
                        "--max-steps", "4", "--log-every", "2", "--workers", "0", "--no-progress"]) == 0
    records = lines(tmp_path / "run")
    assert all(r["loss_audio"] is None and r["contrastive"] == 0.0 and np.isfinite(r["loss_video"]) for r in records)
    assert all(r["nonfinite_steps"] == 0 for r in records)

