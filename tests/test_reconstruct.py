"""pipelines/reconstruct.py draws a picture from any saved checkpoint, audio or video."""

import json

from conftest import AUDIO, DATA, load_script
from modalmae.checkpoint import save_pretrained
from modalmae.model import MaskedAutoencoder, mae_tiny
from modalmae.tokenizers.fbank import AudioFrontend
from modalmae.tokenizers.points import PointGroups
from modalmae.tokenizers.spectrogram import SpectrogramPatches
from modalmae.tokenizers.video import VideoTubes

reconstruct = load_script("pipelines/reconstruct.py")


def test_audio_checkpoint_from_a_raw_file(tmp_path):
    model = MaskedAutoencoder(SpectrogramPatches(embed_dim=192, num_frames=256), mae_tiny())
    save_pretrained(model, tmp_path / "model", extra={"frontend": AudioFrontend(num_frames=256).config()})
    out = tmp_path / "a.png"
    assert reconstruct.main(["--checkpoint", str(tmp_path / "model"), "--file", str(AUDIO / "arctic_a0007.wav"), "--output", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_video_checkpoint_from_a_raw_file(tmp_path):
    model = MaskedAutoencoder(VideoTubes(embed_dim=192, num_frames=8, image_size=64), mae_tiny())
    save_pretrained(model, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["tokenizer"]["class"] == "VideoTubes"
    out = tmp_path / "v.png"
    args = ["--checkpoint", str(tmp_path / "model"), "--file", str(DATA / "video" / "carphone_pristine.mp4"), "--output", str(out)]
    assert reconstruct.main(args) == 0
    assert out.stat().st_size > 10_000


def test_points_checkpoint_from_a_npy_file(tmp_path):
    import numpy as np

    model = MaskedAutoencoder(PointGroups(embed_dim=192, num_groups=16, group_size=8), mae_tiny(norm_pix_loss=False))
    save_pretrained(model, tmp_path / "model")
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32))
    out = tmp_path / "p.png"
    assert reconstruct.main(["--checkpoint", str(tmp_path / "model"), "--file", str(cloud), "--output", str(out)]) == 0
    assert out.stat().st_size > 10_000
