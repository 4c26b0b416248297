"""Images join through the modality registry alone: real photos -> shards -> MAE pretraining ->
checkpoint -> features -> a linear probe -> reconstruction pictures."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, load_script
from modalmae.checkpoint import load_encoder, load_pretrained
from modalmae.data.image import ImageDecoder
from modalmae.data.shards import iter_shard, resolve_shards

ARGS = [
    "--model", "tiny", "--input-size", "32", "--patch-size", "8", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "3",
    "--log-every", "1", "--save-every", "100", "--workers", "1", "--no-progress",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Tiles of two real photographs, one folder (label) each, in several formats, and two broken files."""
    raw = tmp_path_factory.mktemp("raw")
    for label, name, tile in (("cat", "chelsea.png", 75), ("cameraman", "camera.png", 128)):
        (raw / label).mkdir()
        photo = Image.open(DATA / "images" / name)
        for i in range(photo.width // tile):
            for j in range(photo.height // tile):
                crop = photo.crop((i * tile, j * tile, (i + 1) * tile, (j + 1) * tile))
                crop.save(raw / label / f"{i}_{j}.{'jpg' if (i + j) % 2 else 'png'}")
    (raw / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 300)
    (raw / "cat" / "empty.png").write_bytes(b"")
    shards = tmp_path_factory.mktemp("shards") / "photos"
    build = load_script("pipelines/build_shards.py")
    args = ["--modality", "image", "--input", str(raw), "--output", str(shards), "--max-count", "8", "--workers", "1", "--quiet", "--label-from-parent"]
    assert build.main(args) == 0
    return shards


def test_image_shards_pretraining_features_probe_and_pictures(photos, tmp_path):
    manifest = json.loads((photos / "manifest.json").read_text())
    assert manifest["modality"] == "image" and manifest["num_samples"] == 6 * 4 + 4 * 4
    assert {s["path"] for s in manifest["skipped"]} == {"cat/broken.jpg", "cat/empty.png"}

    recipe = load_script("recipes/image_mae.py")
    run = tmp_path / "run"
    assert recipe.main(["--shards", str(photos), "--output", str(run), "--max-steps", "40", *ARGS]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(m["loss"] for m in metrics[:5]) / 5, sum(m["loss"] for m in metrics[-5:]) / 5
    assert last < 0.9 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    assert (run / "reconstruction.png").stat().st_size > 10_000

    model, config = load_pretrained(run / "model")
    assert config["modality"] == "image" and model.tokenizer.grid == (4, 4) and config["extra"]["image"]["min_scale"] == 0.2

    # Features of every photo tile: the encoder's pooled output on its evaluation crop.
    extract = load_script("pipelines/extract_features.py")
    feats = tmp_path / "feats.npz"
    assert extract.main(["--checkpoint", str(run / "model"), "--shards", str(photos), "--output", str(feats), "--quiet", "--workers", "1"]) == 0
    table = np.load(feats)
    assert table["features"].shape == (40, 192) and set(table["labels"]) == {"cat", "cameraman"}
    sample = next(iter_shard(resolve_shards(photos).urls[0]))
    encoder, _ = load_encoder(run / "model")
    direct = encoder.pooled(ImageDecoder(image_size=32, train=False)(sample, random.Random(0))["image"][None])
    row = list(table["keys"]).index(sample["__key__"])
    assert np.allclose(table["features"][row], direct[0].detach().numpy(), atol=1e-5)

    # A linear probe on the frozen features tells the two photographs' tiles apart.
    probe = load_script("recipes/linear_probe.py")
    args = ["--checkpoint", str(run / "model"), "--shards", str(photos), "--output", str(tmp_path / "probe"), "--val-fraction", "0.4", "--workers", "1", "--no-progress"]
    assert probe.main(args) == 0
    result = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["num_classes"] == 2 and result["accuracy"] > result["chance"], result

    # Pictures from the shards and from a raw file, with the modality's own masking.
    reconstruct = load_script("pipelines/reconstruct.py")
    for source in (["--shards", str(photos)], ["--file", str(DATA / "images" / "chelsea.png")]):
        out = tmp_path / f"{source[0][2:]}.png"
        assert reconstruct.main(["--checkpoint", str(run / "model"), *source, "--output", str(out)]) == 0
        assert out.stat().st_size > 10_000


def test_a_recipe_refuses_shards_of_another_modality(photos, tmp_path):
    recipe = load_script("recipes/audio_mae.py")
    with pytest.raises(SystemExit, match="these are image shards .* this run reads audio shards"):
        recipe.main(["--shards", str(photos), "--output", str(tmp_path / "run"), "--model", "tiny", "--max-steps", "1"])
    build = load_script("pipelines/build_shards.py")
    assert build.main(["--modality", "points", "--input", str(DATA / "points"), "--output", str(photos), "--quiet", "--workers", "1"]) == 1
    assert json.loads((photos / "manifest.json").read_text())["modality"] == "image"  # nothing replaced
