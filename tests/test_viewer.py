"""The browser view: real headless Chromium looks at `splat3d view`."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from splat3d.scene.ply import write_ply
from splat3d.shapes.world import make_object

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_view(path, port):
    # SIGINT back to its default in the child: a test run started in the background (where the shell
    # ignores SIGINT, and children inherit that) must still stop the viewer with Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, "-m", "splat3d_cli", "view", str(path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "viewing" in line:
            return proc, line.split(" at ")[1].split()[0]
        assert proc.poll() is None, proc.stderr.read()
    raise AssertionError("the viewer never said where it serves")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it; apt-get install chromium)")
def test_browser_shows_the_splats(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    write_ply(make_object("red", "sphere"), tmp_path / "sphere.ply")
    proc, url = start_view(tmp_path / "sphere.ply", free_port())
    try:
        with playwright.sync_playwright() as p:
            # launch() gives Chromium a fresh temporary profile (its own --user-data-dir).
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 640, "height": 480})
            page.goto(url)
            page.wait_for_selector("canvas", timeout=60000)
            page.wait_for_function("document.body.innerText.includes('2,500 Gaussians')", timeout=60000)
            shot = None
            for _ in range(30):  # wait for the splats to be drawn
                time.sleep(1)
                page.screenshot(path=str(tmp_path / "shot.png"))
                import imageio.v3 as iio

                shot = iio.imread(tmp_path / "shot.png")[..., :3].astype(int)
                centre = shot[200:280, 280:360]
                if (centre[..., 0] > 150).mean() > 0.9 and (centre[..., 1] < 90).mean() > 0.9:
                    break
            browser.close()
        centre = shot[200:280, 280:360]
        assert (centre[..., 0] > 150).mean() > 0.9 and (centre[..., 1] < 90).mean() > 0.9, "red object at the centre"
        background = np.concatenate([shot[150:200, 30:120].reshape(-1, 3), shot[380:460, 450:620].reshape(-1, 3)])
        assert (background.min(axis=1) > 200).mean() > 0.95, "light background around it"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err


def test_view_on_a_busy_port_says_where_it_really_serves(tmp_path):
    write_ply(make_object("blue", "cube"), tmp_path / "cube.ply")
    port = free_port()
    first, url_a = start_view(tmp_path / "cube.ply", port)
    second, url_b = start_view(tmp_path / "cube.ply", port)  # viser moves to a free port
    for proc in (first, second):
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert url_a.endswith(f":{port}") and url_b != url_a
    missing = subprocess.run([sys.executable, "-m", "splat3d_cli", "view", str(tmp_path / "nope.ply")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_generate_with_live_viewer_finishes(tiny_priors, tmp_path):
    from helpers import FAST

    args = ["generate", "a red cube", "--model", str(tiny_priors[("pixel", "epsilon")]), "--steps", "6", "--out",
            str(tmp_path / "run"), "--viewer", "--port", str(free_port()), "--quiet"]  # fmt: skip
    for item in FAST:
        args += ["--set", item]
    done = subprocess.run([sys.executable, "-m", "splat3d_cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "live view at http://127.0.0.1:" in done.stderr and (tmp_path / "run" / "scene.ply").exists()
