"""The interactive view: Gaussian splats in the browser through viser.

viser (the viewer of the gsplat/nerfstudio ecosystem) renders splats natively
in WebGL; we only hand it centres, covariances, colours and opacities.

``SplatViewer`` serves one scene. ``LiveViewer`` feeds it from a running
`generate`: the training loop hands over a detached snapshot at most every
``interval`` seconds and never waits; a worker thread does the (slower)
conversion and upload, so a slow or disconnected browser cannot block or
crash the run.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import torch

from splat3d.scene import GaussianScene

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def splat_arrays(scene: GaussianScene) -> dict[str, np.ndarray]:
    """Centres, covariances, RGB (degree-0 SH) and opacities as viser wants them."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    with torch.no_grad():
        scene = scene.to("cpu", torch.float32)
        covars, _ = _quat_scale_to_covar_preci(scene.quats, scene.scales, compute_preci=False)
        return {
            "centers": scene.means.numpy(),
            "covariances": covars.numpy(),
            "rgbs": scene.base_colors.clamp(0, 1).numpy(),
            "opacities": scene.opacities[:, None].numpy(),
        }


class SplatViewer:
    """A viser server showing one Gaussian scene, +z up, looking at the origin."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, camera_distance: float = 3.0):
        import viser

        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("+z")
        self.server.initial_camera.position = (camera_distance, 0.0, camera_distance * 0.35)
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)
        self.server.initial_camera.up = (0.0, 0.0, 1.0)
        self.status = self.server.gui.add_markdown("loading…")
        self.host, self.port = host, self.server.get_port()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def show(self, scene: GaussianScene, status: str = "") -> None:
        self.server.scene.add_gaussian_splats("/splats", **splat_arrays(scene))
        self.status.content = status or f"{len(scene):,} Gaussians"

    def close(self) -> None:
        self.server.stop()


class LiveViewer:
    """Shows a training scene every ``interval`` seconds without slowing the loop much."""

    def __init__(self, viewer: SplatViewer, interval: float = 3.0):
        self.viewer = viewer
        self.interval = interval
        self._latest: Optional[tuple[dict, str]] = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._last_offer = 0.0
        self.updates = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._work, name="splat3d-live-viewer", daemon=True)
        self._thread.start()

    def offer(self, scene: GaussianScene, status: str) -> None:
        """Called by the training loop each step; copies the scene only when an update is due."""
        now = time.monotonic()
        if now - self._last_offer < self.interval:
            return
        self._last_offer = now
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in scene.raw().items()}
        with self._lock:
            self._latest = (snapshot, status)  # replaces an update the worker has not sent yet
        self._wake.set()

    def _work(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            with self._lock:
                item, self._latest = self._latest, None
            if item is None:
                continue
            try:
                self.viewer.show(GaussianScene(**item[0]), item[1])
                self.updates += 1
            except Exception:  # noqa: BLE001 - the view must never take the run down
                self.errors += 1

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
