import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
from helpers import random_scene

from splat3d.render.cameras import save_cameras_json, turntable
from splat3d.scene.ply import write_ply


def run(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "splat3d_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def scene_ply(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.ply"
    scene = random_scene(n=300, sh_degree=1, dtype=torch.float32, seed=4)
    scene.params["opacities"].data += 2.0
    write_ply(scene, path)
    return path


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, text


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("info", "render", "demo"):
        assert command in result.stdout


def test_info(scene_ply):
    result = run("info", scene_ply)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "300" in out and "SH degree │ 1" in out and "opacity" in out and "bounds min" in out


def test_render_orbit_with_video(scene_ply, tmp_path):
    result = run("render", scene_ply, "--orbit", 4, "--size", "40x30", "--out", tmp_path / "r", "--video")
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "r").glob("view_*.png"))
    assert len(pngs) == 4
    image = iio.imread(pngs[0])
    assert image.shape == (30, 40, 3)
    assert image.std() > 5, "the scene must be visible, not a flat background"
    assert (image[0, 0] == 255).all(), "white background in the corner"
    videos = list((tmp_path / "r").glob("turntable.*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def test_render_cameras_file(scene_ply, tmp_path):
    save_cameras_json(turntable(2, width=24, height=18), tmp_path / "cams.json")
    result = run("render", scene_ply, "--cameras", tmp_path / "cams.json", "--out", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert iio.imread(tmp_path / "c" / "view_001.png").shape == (18, 24, 3)
    result = run("render", scene_ply, "--cameras", tmp_path / "cams.json", "--size", "48x36", "--out", tmp_path / "d")
    assert iio.imread(tmp_path / "d" / "view_000.png").shape == (36, 48, 3)


def test_bad_inputs_exit_2_with_one_sentence(scene_ply, tmp_path):
    (tmp_path / "junk.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    (tmp_path / "trunc.ply").write_bytes(scene_ply.read_bytes()[:-100])
    (tmp_path / "cams.json").write_text(json.dumps([{"viewmat": "no"}]))
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    assert_clean_error(run("info", tmp_path / "missing.ply"), "missing.ply does not exist")
    assert_clean_error(run("info", tmp_path / "junk.ply"), "lacks the 3DGS properties")
    assert_clean_error(run("render", tmp_path / "trunc.ply", "--orbit", 2, "--out", out), "trunc.ply")
    assert_clean_error(run("render", scene_ply, "--cameras", tmp_path / "cams.json", "--out", out), "cams.json")
    assert_clean_error(run("render", scene_ply, "--orbit", 2, "--size", "12by3", "--out", out), "WIDTHxHEIGHT")
    assert_clean_error(run("render", scene_ply, "--out", out), "exactly one of --cameras")
    assert_clean_error(run("render", scene_ply, "--orbit", 2, "--out", tmp_path / "file" / "sub"), "Cannot write")
    assert_clean_error(run("render", scene_ply, "--orbit", 2, "--background", "pink", "--out", out), "Background")
    assert_clean_error(run("render", scene_ply, "--orbit", 2, "--bogus", "--out", out), "--bogus")
    assert not out.exists(), "failed commands must not create output"


def test_failed_render_leaves_existing_files_alone(scene_ply, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "view_000.png").write_bytes(b"precious")
    result = run("render", tmp_path / "missing.ply", "--orbit", 2, "--out", out)
    assert result.returncode == 2
    assert (out / "view_000.png").read_bytes() == b"precious"


def test_demo(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--views", 3, "--size", "32x32")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "scene.ply").exists() and len(list((tmp_path / "demo").glob("view_*.png"))) == 3
