"""build_shards --modality points: real scans, arrays, PCD, meshes, and bad clouds among them."""

import hashlib
import io
import json
import shutil

import numpy as np
import plyfile
import pytest
import trimesh

from conftest import DATA, load_script, read_shards
from modalmae.formats.schema import sample_key

build = load_script("pipelines/build_shards.py")
KITTEN = np.loadtxt(DATA / "points" / "kitten.xyz")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    shutil.copy(DATA / "points" / "kitten.xyz", root / "kitten.xyz")
    shutil.copy(DATA / "points" / "bunny_zipper.ply", root / "bunny.ply")  # a range scan with faces
    rng = np.random.default_rng(0)
    np.save(root / "blob.npy", rng.normal(size=(500, 3)).astype(np.float32))
    np.savez(root / "pair.npz", xyz=rng.normal(size=(400, 3)), other=np.zeros(3))
    cube = trimesh.creation.box(extents=(1, 1, 1))
    cube.apply_translation((0.5, 0.5, 0.5))  # the unit cube [0, 1]^3
    cube.export(root / "cube.off")
    cube.export(root / "cube.obj")
    cube.export(root / "cube.stl")
    pts = rng.normal(size=(300, 3)).astype(np.float32)
    (root / "scan.pcd").write_text(
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {len(pts)}\nHEIGHT 1\nPOINTS {len(pts)}\nDATA ascii\n" + "\n".join(f"{x} {y} {z} 7" for x, y, z in pts)
    )
    vertex = np.array([tuple(p) + (200, 10, 0) for p in pts], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=False).write(str(root / "colour.ply"))
    # bad ones
    bad = np.ones((100, 3), np.float32)
    bad[5, 1] = np.nan
    np.save(root / "nan.npy", bad)
    (root / "empty.xyz").write_bytes(b"")
    np.save(root / "same.npy", np.ones((100, 3), np.float32))
    np.save(root / "tiny.npy", rng.normal(size=(10, 3)).astype(np.float32))
    (root / "garbage.txt").write_text("these are not numbers\n" * 5)
    np.savez(root / "wrong.npz", a=np.zeros(3), b=np.ones(4))
    return root, pts


def run(root, out, *extra):
    return build.main(["--modality", "points", "--input", str(root), "--output", str(out), "--quiet", "--workers", "1", *extra])


def samples(out):
    found = read_shards(out)[0]
    return {k: (np.load(io.BytesIO(v["npy"]), allow_pickle=False), json.loads(v["json"])) for k, v in found.items()}


def test_good_clouds_round_trip_and_bad_ones_are_skipped(raw, tmp_path):
    root, pts = raw
    out = tmp_path / "s"
    assert run(root, out, "--mesh-points", "1000") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"nan.npy", "empty.xyz", "same.npy", "tiny.npy", "garbage.txt", "wrong.npz"}
    assert "NaN" in reasons["nan.npy"] and reasons["empty.xyz"] == "empty file"
    assert "all points are equal" in reasons["same.npy"] and "fewer than --min-points 32" in reasons["tiny.npy"]
    assert "not whitespace-separated numbers" in reasons["garbage.txt"] and "no array named" in reasons["wrong.npz"]

    got = samples(out)
    kitten, meta = got[sample_key("kitten.xyz")]
    assert np.allclose(kitten, KITTEN, atol=1e-6) and meta["columns"] == ["x", "y", "z", "nx", "ny", "nz"]
    assert meta["num_points"] == 5210 and np.allclose(meta["bounds"]["min"], KITTEN[:, :3].min(0), atol=1e-5)
    blob, _ = got[sample_key("blob.npy")]
    assert np.array_equal(blob, np.load(root / "blob.npy"))
    pair, _ = got[sample_key("pair.npz")]
    assert np.allclose(pair, np.load(root / "pair.npz")["xyz"], atol=1e-6)
    pcd, meta = got[sample_key("scan.pcd")]
    assert np.allclose(pcd[:, :3], pts, atol=1e-5) and meta["columns"] == ["x", "y", "z", "intensity"] and (pcd[:, 3] == 7).all()
    colour, meta = got[sample_key("colour.ply")]
    assert meta["columns"] == ["x", "y", "z", "red", "green", "blue"] and np.allclose(colour[0, 3:], [200 / 255, 10 / 255, 0])
    for name in ("cube.off", "cube.obj", "cube.stl"):
        cloud, meta = got[sample_key(name)]
        assert cloud.shape == (1000, 3) and meta["from_mesh"] and meta["mesh_faces"] == 12
        on_face = (np.abs(cloud) < 1e-6) | (np.abs(cloud - 1) < 1e-6)
        assert on_face.any(axis=1).all() and ((cloud >= -1e-6) & (cloud <= 1 + 1e-6)).all()
        assert len(np.unique(cloud.round(6), axis=0)) == 1000
    bunny, meta = got[sample_key("bunny.ply")]
    assert meta["from_mesh"] and meta["mesh_faces"] == 3851 and bunny.shape == (1000, 3)


def test_rebuild_is_byte_identical(raw, tmp_path):
    root, _ = raw
    assert run(root, tmp_path / "a") == 0 and run(root, tmp_path / "b") == 0
    for shard in (tmp_path / "a").glob("*.tar"):
        assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256((tmp_path / "b" / shard.name).read_bytes()).digest()
