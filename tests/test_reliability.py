"""Faults and bad input: verbatim messages, one process per folder, full disks, broken checkpoints.

docs/reliability.md lists every case with the test here that shows it.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, SMALL, assert_clean, run_cli, sets, spawn_cli

from splat3d.errors import Splat3dError
from splat3d.io import fileio
from splat3d.io.fileio import AppendLog, FolderInUse, FolderLock, WriteFailed
from splat3d.run.checkpoint import list_checkpoints, load_checkpoint
from splat3d.run.config import build_config
from splat3d.run.trainer import RunInterrupted, resume_run, start_run

MARKUP = ["a[bold]b", "a[/]b", "[red]x[/red]"]


@pytest.fixture(scope="module")
def prior_dir(tiny_priors):
    return tiny_priors[("pixel", "epsilon")]


def steps_of(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if ".tmp" in p.name]


# ------------------------------------------------------------- verbatim text
@pytest.mark.parametrize("name", MARKUP)
def test_user_text_is_printed_verbatim(name, prior_dir, tmp_path, capsys, monkeypatch):
    weird = tmp_path / name
    missing = weird / "x.ply"
    commands = [
        ["info", missing],
        ["render", missing, "--orbit", 2, "--out", tmp_path / "r"],
        ["export", missing, "--out", tmp_path / "e.ply"],
        ["batch", weird / "p.txt", "--out", tmp_path / "b"],
    ]
    for command in commands:
        code, _, err = run_cli(capsys, *command)
        assert_clean(code, err, str(weird))
    # generate: a run folder with brackets that is in the way, and a prompt with markup in it
    weird.mkdir(parents=True)
    (weird / "scene.ply").write_bytes(b"keep")
    code, _, err = run_cli(capsys, "generate", name, "--model", prior_dir, "--out", weird)
    assert_clean(code, err, f"Run folder {weird} is not empty")
    code, _, err = run_cli(capsys, "generate", name, "--model", prior_dir / name, "--out", tmp_path / "new")
    assert_clean(code, err, str(prior_dir / name))
    # a batch line with markup-like keys and values
    jsonl = weird / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": name, name: 1}) + "\n")
    code, _, err = run_cli(capsys, "batch", jsonl, "--out", tmp_path / "b")
    assert_clean(code, err, f"{jsonl}:1 has unknown key(s) {name}")
    assert (weird / "scene.ply").read_bytes() == b"keep" and not (tmp_path / "new").exists()


def test_prompt_with_markup_runs_and_prints_verbatim(prior_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "generate", "[red]x[/red] in run[2]", "--model", prior_dir, "--steps", 2,
                             "--out", tmp_path / "run[2]", *sets(*SMALL))  # fmt: skip
    assert code == 0, err
    assert '"[red]x[/red] in run[2]"' in err and f"wrote {tmp_path / 'run[2]' / 'scene.ply'}" in out


def test_ray_hint_keeps_its_brackets(prior_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if Ray were not installed
    (tmp_path / "p.txt").write_text("a red cube\n")
    code, _, err = run_cli(capsys, "batch", tmp_path / "p.txt", "--out", tmp_path / "b", "--model", prior_dir, "--ray")
    assert_clean(code, err, "pip install 'splat3d[cluster]'")


# ------------------------------------------------------------- folder locks
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    (tmp_path / "run").mkdir()
    held = FolderLock(tmp_path / "run", "splat3d generate").acquire()
    with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()} \\(splat3d generate\\)"):
        FolderLock(tmp_path / "run").acquire()
    with pytest.raises(FolderInUse):
        FolderLock(tmp_path / "run").check_free()
    (tmp_path / "run" / FolderLock.NAME).write_text("")  # a holder that has locked but not yet said who it is
    with pytest.raises(FolderInUse, match="in use by process \\?; wait"):
        FolderLock(tmp_path / "run").acquire()
    held.release()
    assert not (tmp_path / "run" / FolderLock.NAME).exists(), "a clean release leaves no lock file"
    # A process that died left its lock file: the kernel dropped its flock, so it is taken over with a note.
    (tmp_path / "run" / FolderLock.NAME).write_text(json.dumps({"pid": 999999, "command": "splat3d generate"}))
    with pytest.warns(UserWarning, match="took over the lock .* from process 999999"):
        FolderLock(tmp_path / "run").acquire().release()
    # A folder the lock had to create is removed again if nothing else was written (bad input leaves no trace).
    FolderLock(tmp_path / "fresh").acquire().release()
    assert not (tmp_path / "fresh").exists()


def test_second_process_on_a_live_run_is_refused(prior_dir, tmp_path, capsys):
    batch = tmp_path / "batch"
    live = batch / "live"
    steps = 80
    args = ["generate", "a red cube", "--model", prior_dir, "--steps", steps, "--out", live, "--quiet"]
    proc = spawn_cli([*args, *sets(*SMALL, "output.checkpoint_every=2")], tmp_path)
    try:
        deadline = time.time() + 240
        while not list_checkpoints(live / "checkpoints"):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        pid = f"in use by process {proc.pid} (splat3d generate)"
        code, _, err = run_cli(capsys, "generate", "--resume", live)
        assert_clean(code, err, pid, "wait for it to finish")
        code, _, err = run_cli(capsys, "generate", "a blue cube", "--model", prior_dir, "--overwrite", "--out", live)
        assert_clean(code, err, pid, "choose another --out")
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red cube", "name": "live"}) + "\n")
        code, _, err = run_cli(capsys, "batch", tmp_path / "p.jsonl", "--out", batch, "--model", prior_dir)
        assert_clean(code, err, pid)
        # Readers need no lock: export takes the newest complete checkpoint of the live run.
        code, _, err = run_cli(capsys, "export", live, "--out", tmp_path / "mid-run.ply")
        assert code == 0 and (tmp_path / "mid-run.ply").stat().st_size > 0, err
        assert proc.poll() is None, "the live run must still be running, or the refusals prove nothing"
        assert sorted(p.name for p in batch.iterdir()) == ["live"], "a refused batch writes nothing"
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert steps_of(live) == list(range(1, steps + 1)), "the live run's metrics: every step once, in order"
    assert not (live / FolderLock.NAME).exists()


def test_prior_training_folder_in_use_is_refused(tmp_path, capsys):
    with FolderLock(tmp_path / "prior", "splat3d prior train"):
        code, _, err = run_cli(capsys, "prior", "train", "shapes", "--out", tmp_path / "prior", "--steps", 2)
    assert_clean(code, err, f"{tmp_path / 'prior'} is in use by process {os.getpid()} (splat3d prior train)")
    assert not (tmp_path / "prior").exists(), "nothing was written"


def test_sigkilled_run_resumes_over_its_stale_lock_bit_identically(prior_dir, tmp_path):
    args = ["generate", "a red cube", "--model", prior_dir, "--steps", 30, "--seed", 5, "--quiet",
            *sets(*SMALL, "output.checkpoint_every=2")]  # fmt: skip
    straight = subprocess.run([sys.executable, "-m", "splat3d_cli", *map(str, args), "--out", tmp_path / "a"],
                              capture_output=True, text=True)  # fmt: skip
    assert straight.returncode == 0, straight.stderr
    proc = spawn_cli([*args, "--out", tmp_path / "b"], tmp_path)
    while not list_checkpoints(tmp_path / "b" / "checkpoints"):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b" / "scene.ply").exists()
    assert json.loads((tmp_path / "b" / FolderLock.NAME).read_text())["pid"] == proc.pid, "the dead run's lock"
    resumed = subprocess.run([sys.executable, "-m", "splat3d_cli", "generate", "--resume", str(tmp_path / "b"),
                              "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of {tmp_path / 'b'} from process {proc.pid}" in " ".join(resumed.stderr.split())
    assert (tmp_path / "a" / "scene.ply").read_bytes() == (tmp_path / "b" / "scene.ply").read_bytes()
    assert steps_of(tmp_path / "b") == list(range(1, 31))


# --------------------------------------------------------- full disks, I/O errors
def open_run(prior_dir, out, steps=12):
    """start_run of a small run: use as ``with open_run(...) as trainer:``."""
    cfg = build_config(None, [*FAST, *SMALL], prompt__prompt="a blue sphere", model=str(prior_dir), steps=steps)
    return start_run(cfg, out)


@pytest.fixture(scope="module")
def uninterrupted(prior_dir, tmp_path_factory):
    """scene.ply of a 12-step run without faults, to compare resumed runs with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    with open_run(prior_dir, out) as trainer:
        trainer.run()
    return (out / "scene.ply").read_bytes()


@pytest.mark.parametrize(
    "target, error",
    [("step_000008.pt", errno.ENOSPC), ("preview.png", errno.EIO), ("scene.ply", errno.EROFS)],
    ids=["checkpoint-enospc", "preview-eio", "scene-erofs"],
)
def test_a_failed_write_stops_the_run_and_resume_finishes_it(prior_dir, tmp_path, monkeypatch, uninterrupted,
                                                             target, error):  # fmt: skip
    out = tmp_path / "run"
    fsync = fileio._fsync

    def failing_fsync(path, directory=False):  # the data went to the temporary file; flushing it fails
        if not directory and Path(path).name.startswith(f".{Path(target).stem}."):
            raise OSError(error, os.strerror(error))
        fsync(path, directory)

    monkeypatch.setattr(fileio, "_fsync", failing_fsync)
    with open_run(prior_dir, out) as trainer, pytest.raises(Splat3dError) as caught:
        trainer.run()
    message = str(caught.value)
    assert f"Cannot write {out}" in message and target in message and os.strerror(error) in message
    assert f"resume with: splat3d generate --resume {out}" in message and "\n" not in message
    assert no_temporary_files(out)
    newest = list_checkpoints(out / "checkpoints")[-1]
    assert load_checkpoint(newest)["step"] == (12 if target == "scene.ply" else 4), "the last good checkpoint"
    monkeypatch.setattr(fileio, "_fsync", fsync)
    with resume_run(out) as resumed:
        resumed.run()
    assert (out / "scene.ply").read_bytes() == uninterrupted
    assert steps_of(out) == list(range(1, 13))


def test_a_short_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    with AppendLog(path) as log:
        log.append('{"step": 1}')
        write = os.write
        monkeypatch.setattr(fileio.os, "write", lambda fd, data: write(fd, data[:5]))  # a disk that fills mid-line
        with pytest.raises(WriteFailed, match=f"Cannot write {path} \\(No space left on device\\)"):
            log.append('{"step": 2}')
        monkeypatch.setattr(fileio.os, "write", write)
        log.append('{"step": 3}')
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB tmpfs (needs root to mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_run_on_a_full_tmpfs_stops_cleanly_and_resumes(prior_dir, small_disk, tmp_path):
    out = small_disk / "run"
    args = ["generate", "a red cube", "--model", prior_dir, "--steps", 60, "--out", out, "--quiet"]
    proc = spawn_cli([*args, *sets(*SMALL, "output.checkpoint_every=2")], tmp_path)
    while len(list_checkpoints(out / "checkpoints")) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    filler = fill(small_disk)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    text = " ".join(stderr.split())
    assert "Traceback" not in text and "No space left on device" in text and f"--resume {out}" in text, text
    assert no_temporary_files(out)
    newest = list_checkpoints(out / "checkpoints")[-1]
    stopped_at = load_checkpoint(newest)["step"]  # the last good checkpoint loads
    assert 2 <= stopped_at < 60
    filler.unlink()  # the disk has space again
    resumed = subprocess.run([sys.executable, "-m", "splat3d_cli", "generate", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert steps_of(out) == list(range(1, 61)) and (out / "scene.ply").exists()


# ------------------------------------------------------------- broken checkpoints
def test_resume_falls_back_from_a_truncated_newest_checkpoint(prior_dir, tmp_path, capsys, uninterrupted):
    out = tmp_path / "run"
    with open_run(prior_dir, out, steps=12) as trainer:

        def stop_at_8(step, logs):  # cut off at step 8, with checkpoints 4 and 8
            trainer.stop_requested = step == 8

        with pytest.raises(RunInterrupted):
            trainer.run(on_step=stop_at_8)
    bad = out / "checkpoints" / "step_000008.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    code, _, err = run_cli(capsys, "generate", "--resume", out, "--quiet")
    assert code == 0, err
    text = " ".join(err.split())
    assert f"checkpoint {bad} is corrupt (kept as step_000008.pt.corrupt); using step_000004.pt (step 4)" in text
    assert (out / "checkpoints" / "step_000008.pt.corrupt").exists()
    assert steps_of(out) == list(range(1, 13))
    assert (out / "scene.ply").read_bytes() == uninterrupted


def test_resume_with_no_good_checkpoint_stops_and_renames_nothing(tmp_path, capsys):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (4, 8):
        (folder / f"step_{step:06d}.pt").write_bytes(b"PK\x03\x04 truncated")
    code, _, err = run_cli(capsys, "generate", "--resume", tmp_path / "run")
    assert_clean(code, err, "step_000008.pt is corrupt")
    assert sorted(p.name for p in folder.iterdir()) == ["step_000004.pt", "step_000008.pt"]


def test_a_machine_without_imageio_ffmpeg_still_runs_and_writes_gifs(tmp_path):
    """The GPU image had no imageio-ffmpeg: importing the trainer failed before the GIF fallback could act."""
    code = (
        "import sys; sys.modules['imageio_ffmpeg'] = None\n"
        "import numpy as np\n"
        "import splat3d.run.trainer\n"
        "from splat3d.io.media import save_video\n"
        f"print(save_video(np.zeros((3, 8, 8, 3), np.uint8), {str(tmp_path / 'turntable.mp4')!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("turntable.gif") and (tmp_path / "turntable.gif").is_file()
