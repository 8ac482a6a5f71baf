"""How much does `generate --viewer` slow a run? Measured in one process.

Runs the cpu preset with a tiny random prior (pixel 32², UNet (32, 64, 64))
for --steps steps twice: without a viewer and with the live viewer (update
every --interval seconds) while a headless Chromium, if installed, watches
the page. Reports median seconds per step and the ratio. Writes
benchmarks/results/viewer.json and a table in docs/benchmarks.md.

    python benchmarks/viewer.py [--steps 150] [--interval 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "viewer.json"


def run(prior: str, out: Path, steps: int, live=None) -> list[float]:
    from splat3d.run.config import build_config
    from splat3d.run.trainer import start_run

    overrides = ["output.checkpoint_every=1000000", "output.preview_every=1000000", "output.video_frames=2",
                 "output.final_views=2", "output.video_size=32", "init.count=3000"]  # fmt: skip
    cfg = build_config(None, overrides, prompt__prompt="a red cube", model=prior, steps=steps, seed=1)
    times, last = [], [time.perf_counter()]

    def on_step(step, logs):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        if live:
            live.offer(trainer.scene, f"step {step}")

    with start_run(cfg, out) as trainer:
        trainer.run(on_step=on_step)
    return times[5:]


def watch(url: str, stop: threading.Event) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=args)
        page = browser.new_page(viewport={"width": 640, "height": 480})
        page.goto(url)
        while not stop.wait(0.5):
            pass
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--interval", type=float, default=3.0)
    args = parser.parse_args()

    from splat3d.apps.viewer import LiveViewer, SplatViewer
    from splat3d.distill.priors.tiny import make_tiny_prior

    with tempfile.TemporaryDirectory() as tmp:
        prior = str(make_tiny_prior(Path(tmp) / "prior", "pixel", sample_size=32, block_out_channels=(32, 64, 64)))
        plain = run(prior, Path(tmp) / "plain", args.steps)
        live = LiveViewer(SplatViewer("127.0.0.1", 8097), interval=args.interval)
        stop = threading.Event()
        browser = None
        if shutil.which("chromium"):
            browser = threading.Thread(target=watch, args=(live.viewer.url, stop), daemon=True)
            browser.start()
            time.sleep(5)
        viewed = run(prior, Path(tmp) / "viewed", args.steps, live)
        stop.set()
        if browser:
            browser.join(timeout=30)
        updates = live.updates
        live.close()
        live.viewer.close()
    a, b = statistics.median(plain), statistics.median(viewed)
    result = {
        "machine": machine(), "steps": args.steps, "interval_s": args.interval, "browser": bool(browser),
        "plain_s_per_step": a, "viewer_s_per_step": b, "slowdown": b / a - 1, "viewer_updates": updates,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    write_doc_section(
        "viewer",
        "## Live viewer: slowdown of `generate --viewer`\n\n"
        f"`python benchmarks/viewer.py --steps {args.steps} --interval {args.interval}` on {machine()}: "
        "the cpu preset, 3,000 Gaussians, a tiny random prior at 32², one process, the same seed, "
        f"{'a headless Chromium watching the page' if browser else 'no browser connected'}.\n\n"
        "| without viewer s/step | with viewer s/step | slowdown | viewer updates |\n|---|---|---|---|\n"
        f"| {a:.4f} | {b:.4f} | {100 * (b / a - 1):+.1f}% | {updates} |",
    )


if __name__ == "__main__":
    main()
