"""The planned, resumable build: shard i from the i-th group of files, stats records, reruns
that keep finished shards, kill -9 at any moment, worker crashes, output URLs, and the Ray
engine giving the same bytes as the local one."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import AUDIO, REPO
from modalmae.modalities import MODALITIES
from modalmae.shards import Sample, ShardBuilder, build_shards
from modalmae.shards.plan import plan_groups
from modalmae.shards.writer import TarShard, _tarfile_header, encode_sample, member_header, tar_info

HERE = Path(__file__).parent


@dataclasses.dataclass
class Options:
    upper: bool = False  # changes every sample's content
    delay: float = 0.0  # seconds per file
    crash_on: str = ""  # a file name whose prepare kills the process
    crash_once_marker: str = ""  # with crash_on: kill the process only if this file does not exist yet (then create it)


def prepare(path, relpath, options):
    if options.crash_on and Path(relpath).name == options.crash_on:
        marker = Path(options.crash_once_marker) if options.crash_once_marker else None
        if marker is None or not marker.exists():
            if marker is not None:
                marker.touch()
            os._exit(3)  # as a segfault in a native decoder would
    time.sleep(options.delay)
    data = path.read_bytes()
    return Sample(files={"bin": data.upper() if options.upper else data}, meta={"source": relpath})


BYTES = ShardBuilder(name="bytes", extensions=frozenset({".bin"}), options=Options, prepare=prepare)


def make_input(root: Path, n: int = 9) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"f{i:02d}.bin").write_bytes(b"sample %d " % i * (50 + 40 * i))
    return root


def build(root, out, **kwargs):
    kwargs = {"max_count": 2, "workers": 1, "progress": False, **kwargs}
    return build_shards(builder=BYTES, input_dir=root, output_dir=out, **kwargs)


def tars(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out).glob("shard-*.tar*"))}


def stamps(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each shard: unchanged when a rerun leaves it alone."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(Path(out).glob("shard-*.tar"))}


def test_tar_shard_bytes_are_what_tarfile_writes(tmp_path):
    samples = [("a-1", {"bin": b"x" * 700, "json": b"{}"}), ("b" * 120 + "-\u00e9", {"bin": b"", "json": b"{}"})]  # a PAX name
    shard = TarShard(tmp_path / "ours.tar")
    for key, files in samples:
        shard.add(encode_sample(key, files))
    shard.finish()
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tar_info(f"{key}.{ext}", len(data))
                try:
                    info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
                    tar.format = tarfile.USTAR_FORMAT
                except ValueError:
                    tar.format = tarfile.PAX_FORMAT
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == reference.getvalue()


@given(
    name=st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF, blacklist_categories=("Cs",)), min_size=1, max_size=120),
    size=st.one_of(st.integers(0, 2**20), st.integers(8**11 - 2, 8**11 + 2)),
)
def test_member_headers_are_tarfiles_for_any_name_and_size(name, size):
    assert member_header(name, size) == _tarfile_header(name, size)


def test_plan_groups_cut_by_count_and_input_bytes():
    assert plan_groups([1] * 5, max_count=2, max_size=100) == [range(0, 2), range(2, 4), range(4, 5)]
    assert plan_groups([40, 40, 40, 10, 200, 5], max_count=10, max_size=90) == [range(0, 2), range(2, 4), range(4, 5), range(5, 6)]
    assert plan_groups([], max_count=3, max_size=10) == []
    with pytest.raises(ValueError):
        plan_groups([1], max_count=0, max_size=10)


def test_a_skipped_file_moves_no_other_shard(tmp_path):
    root = make_input(tmp_path / "in")
    full = build(root, tmp_path / "a")
    (root / "f02.bin").write_bytes(b"")  # still a candidate: it keeps its place in the plan

    def fussy(path, relpath, options):
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        return prepare(path, relpath, options)

    manifest = build_shards(
        builder=dataclasses.replace(BYTES, prepare=fussy), input_dir=root, output_dir=tmp_path / "b", max_count=2, workers=1, progress=False,
    )
    names = [f"shard-{i:06d}.tar" for i in range(5)]  # f00 f01 | f02 f03 | f04 f05 | f06 f07 | f08
    assert [s["name"] for s in full["shards"]] == names
    assert [(s["name"], s["num_samples"]) for s in manifest["shards"]] == list(zip(names, [2, 1, 2, 2, 1]))
    assert manifest["skipped"] == [{"path": "f02.bin", "reason": "ValueError: empty file"}]
    a, b = tars(tmp_path / "a"), tars(tmp_path / "b")
    assert [name for name in names if a[name] != b[name]] == ["shard-000001.tar"]


def test_rerun_keeps_finished_shards_and_writes_what_changed(tmp_path):
    root, out = make_input(tmp_path / "in"), tmp_path / "out"
    first = build(root, out)
    record = json.loads((out / "shard-000001.stats.json").read_text())
    assert (record["num_samples"], record["files"], record["skipped"]) == (2, 2, [])
    assert record["sha256"] == first["shards"][1]["sha256"] and set(record["seconds"]) == {"prepare", "write"}
    before = stamps(out)

    again = build(root, out)
    assert (again["build"]["shards_reused"], again["build"]["shards_written"]) == (5, 0)
    assert stamps(out) == before and {k: v for k, v in again.items() if k != "build"} == {k: v for k, v in first.items() if k != "build"}

    (root / "f04.bin").write_bytes(b"changed")  # shard 2 holds f04, f05
    changed = build(root, out)
    assert changed["build"]["shards_written"] == 1
    after = stamps(out)
    assert [name for name in before if after[name] != before[name]] == ["shard-000002.tar"]

    upper = build(root, out, options=Options(upper=True))  # an option that changes the content
    assert upper["build"]["shards_written"] == 5 and upper["shards"] != changed["shards"]
    assert build(root, out, options=Options(upper=True), overwrite=True)["build"]["shards_written"] == 5
    build(root, tmp_path / "clean", options=Options(upper=True))
    assert tars(out) == tars(tmp_path / "clean")


def test_a_damaged_shard_or_record_is_written_again(tmp_path):
    root, out = make_input(tmp_path / "in"), tmp_path / "out"
    build(root, out)
    clean = tars(out)
    (out / "shard-000001.tar").write_bytes(b"cut short")
    (out / "shard-000003.stats.json").write_text("{not json")
    rerun = build(root, out)
    assert rerun["build"]["shards_written"] == 2 and tars(out) == clean


def test_a_worker_crash_skips_only_that_file(tmp_path):
    root = make_input(tmp_path / "in")
    manifest = build(root, tmp_path / "out", workers=2, options=Options(crash_on="f03.bin"))
    assert [s["path"] for s in manifest["skipped"]] == ["f03.bin"]
    assert "worker process died" in manifest["skipped"][0]["reason"]
    assert manifest["num_samples"] == 8
    # every other shard is the one a build without the crash writes
    build(root, tmp_path / "plain")
    assert {k: v for k, v in tars(tmp_path / "out").items() if k != "shard-000001.tar"} == {
        k: v for k, v in tars(tmp_path / "plain").items() if k != "shard-000001.tar"
    }


def test_fewer_shards_than_workers_still_use_every_worker(tmp_path):
    # One shard, two workers: its files are prepared by both, in order, and it is written here;
    # a file that kills its worker is still the only one skipped.
    root = make_input(tmp_path / "in")
    crashed = build(root, tmp_path / "out", max_count=100, workers=2, options=Options(crash_on="f03.bin"))
    assert [s["path"] for s in crashed["skipped"]] == ["f03.bin"] and "worker process died" in crashed["skipped"][0]["reason"]
    assert [s["num_samples"] for s in crashed["shards"]] == [8]
    parallel = build(root, tmp_path / "parallel", max_count=100, workers=2)
    build(root, tmp_path / "serial", max_count=100, workers=1)
    assert parallel["build"]["files_prepared"] == 9 and tars(tmp_path / "parallel") == tars(tmp_path / "serial")


def _processes_with(marker: str) -> list[str]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(environ.parent.name)
        except OSError:
            pass
    return found


def _subprocess_build(out: Path, root: Path, engine: str, marker: str, delay: float) -> subprocess.Popen:
    script = (
        "import sys; from test_build_plan import BYTES, Options; from modalmae.shards import build_shards\n"
        "if __name__ == '__main__':\n"
        f"    build_shards(builder=BYTES, input_dir={str(root)!r}, output_dir={str(out)!r}, max_count=2, workers=2,\n"
        f"                 progress=False, engine={engine!r}, options=Options(delay={delay}))\n"
    )
    env = {**os.environ, "MODALMAE_TEST_MARK": marker, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), str(REPO)])}
    path = out.parent / f"build_{engine}.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after_first_record(process: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*.stats.json")):
        assert process.poll() is None, "the build ended before it could be killed"
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
def test_kill_9_leaves_no_process_behind_and_the_rerun_ends_identical(tmp_path):
    root, out, marker = make_input(tmp_path / "in", 12), tmp_path / "out", f"modalmae-{uuid.uuid4()}"
    process = _subprocess_build(out, root, "local", marker, delay=0.15)
    _kill_after_first_record(process, out)
    deadline = time.monotonic() + 10
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind by the killed build: {left}"
    assert not (out / "manifest.json").exists()
    finished = {p.name.replace(".stats.json", ".tar") for p in out.glob("*.stats.json")}
    kept = {name: stamp for name, stamp in stamps(out).items() if name in finished}
    assert kept

    rerun = build(root, out, workers=2, options=Options(delay=0.15))  # the same build: the same options
    clean = build(root, tmp_path / "clean", options=Options(delay=0.15))
    assert rerun["build"]["shards_reused"] == len(kept) and {n: s for n, s in stamps(out).items() if n in kept} == kept
    assert tars(out) == tars(tmp_path / "clean") and not list(out.glob("*.tmp"))
    assert (out / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()
    assert rerun["num_samples"] == clean["num_samples"] == 12


def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path):
    root = make_input(tmp_path / "in", 4)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from test_build_plan import BYTES\nfrom modalmae.shards import build_shards\n"
        f"build_shards(builder=BYTES, input_dir={str(root)!r}, output_dir={str(tmp_path / 'out')!r}, max_count=2, workers=2, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), str(REPO)])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "WorkersDidNotStart" in done.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_output_to_a_url_through_fsspec(tmp_path):
    pytest.importorskip("fsspec")
    root = make_input(tmp_path / "in")
    local = build(root, tmp_path / "local")
    remote = build(root, (tmp_path / "remote").as_uri(), workers=2)  # file:///...: the fsspec path, staged uploads
    assert tars(tmp_path / "remote") == tars(tmp_path / "local") and remote["shards"] == local["shards"]
    assert json.loads((tmp_path / "remote" / "manifest.json").read_text())["shards"] == local["shards"]
    assert not list((tmp_path / "remote").glob("*.tmp"))
    assert build(root, (tmp_path / "remote").as_uri())["build"]["shards_reused"] == 5


# --- Ray (a local Ray on 2 CPUs, started once for these tests) -------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # Ray's workers are processes of their own: they find this test module through PYTHONPATH.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), str(REPO)] + ([saved] if saved else []))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def test_ray_and_local_engines_give_identical_shards_of_real_media(tmp_path, local_ray):
    for modality, folder in (("audio", AUDIO), ("points", AUDIO.parent / "points")):
        builder = MODALITIES[modality].builder
        local = build_shards(builder=builder, input_dir=folder, output_dir=tmp_path / modality / "local", max_count=2, workers=2, progress=False)
        ray = build_shards(builder=builder, input_dir=folder, output_dir=tmp_path / modality / "ray", max_count=2, engine="ray", progress=False)
        assert local["num_samples"] >= 2 and len(local["shards"]) >= 1
        assert ray["shards"] == local["shards"]  # names, counts, bytes, sha256
        assert tars(tmp_path / modality / "ray") == tars(tmp_path / modality / "local")
        assert (tmp_path / modality / "ray" / "manifest.json").read_bytes() == (tmp_path / modality / "local" / "manifest.json").read_bytes()


def test_ray_retries_a_task_whose_worker_dies_once(tmp_path, local_ray):
    root = make_input(tmp_path / "in")
    once = Options(crash_on="f03.bin", crash_once_marker=str(tmp_path / "crashed-once"))
    manifest = build(root, tmp_path / "out", engine="ray", options=once, retries=1)
    assert (tmp_path / "crashed-once").exists()  # it did die once
    assert manifest["skipped"] == [] and manifest["num_samples"] == 9
    build(root, tmp_path / "clean")
    assert tars(tmp_path / "out") == tars(tmp_path / "clean")


def test_ray_skips_a_file_that_kills_its_worker_every_time(tmp_path, local_ray):
    root = make_input(tmp_path / "in")
    manifest = build(root, tmp_path / "out", engine="ray", options=Options(crash_on="f03.bin"), retries=1)
    assert [s["path"] for s in manifest["skipped"]] == ["f03.bin"] and "worker process died" in manifest["skipped"][0]["reason"]
    assert manifest["num_samples"] == 8


def _listing(folder: Path) -> list[tuple[str, int]] | None:
    """(name, size) of every file in ``folder``; None when one moved while it was listed."""
    try:
        return sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    except FileNotFoundError:
        return None


def test_ray_build_killed_midway_and_rerun_keeps_finished_shards(tmp_path, local_ray):
    root, out, marker = make_input(tmp_path / "in", 12), tmp_path / "out", f"modalmae-{uuid.uuid4()}"
    process = _subprocess_build(out, root, "ray", marker, delay=0.3)
    _kill_after_first_record(process, out, timeout=180)
    # The killed driver's tasks run in the cluster's workers, not under it: one already running
    # may still finish its shard (or be cancelled) a moment later. Wait for the folder to settle:
    # the same files, sizes included, two seconds apart.
    listing, deadline = None, time.monotonic() + 60
    while (now := _listing(out)) is None or now != listing:
        assert time.monotonic() < deadline, f"the output folder did not settle after the kill: {now}"
        listing = now
        time.sleep(2.0)
    finished = {p.name.replace(".stats.json", ".tar") for p in out.glob("*.stats.json")}
    kept = {name: stamp for name, stamp in stamps(out).items() if name in finished}
    rerun = build(root, out, engine="ray", options=Options(delay=0.3))
    assert rerun["build"]["shards_reused"] == len(kept) >= 1 and {n: s for n, s in stamps(out).items() if n in kept} == kept
    build(root, tmp_path / "clean", options=Options(delay=0.3))
    assert tars(out) == tars(tmp_path / "clean")
    assert (out / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()
