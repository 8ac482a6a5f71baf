"""Cameras in gsplat's convention, orbit helpers and the cameras JSON file.

Convention (same as gsplat and OpenCV): ``viewmat`` is the 4x4 world-to-camera
matrix with camera axes x right, y down, z forward; ``K`` is the 3x3 pinhole
intrinsics; ``width`` and ``height`` are integers. World up is +z.

Orbit angles: a camera at elevation ``el`` and azimuth ``az`` (degrees) sits at
``radius * (cos el cos az, cos el sin az, sin el)`` and looks at the origin.
Azimuth 0 is the +x axis, which is where an object's front faces; azimuth
grows counter-clockwise seen from above.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Union

import torch
from torch import Tensor

from splat3d.errors import Splat3dError
from splat3d.scene import GaussianScene
from splat3d.scene.extent import scene_extent

WORLD_UP = (0.0, 0.0, 1.0)


@dataclass
class CameraConfig:
    """Random cameras for each step: ranges are [low, high] and drawn uniformly."""

    batch_size: int = 1
    """Views rendered per step; their azimuths are stratified over the range."""
    elevation_range: List[float] = field(default_factory=lambda: [-10.0, 45.0])
    azimuth_range: List[float] = field(default_factory=lambda: [-180.0, 180.0])
    radius_range: List[float] = field(default_factory=lambda: [2.6, 3.2])
    fovy_range: List[float] = field(default_factory=lambda: [38.0, 45.0])
    render_size: int = 64
    """Render size in pixels (square) at step 0."""
    render_size_schedule: List[List[int]] = field(default_factory=list)
    """[[step, size], ...]: the render size from each step on (progressive resolution)."""

    def __post_init__(self):
        sizes = [self.render_size] + [s for _, s in (tuple(x) for x in self.render_size_schedule if len(x) == 2)]
        if any(not 8 <= s <= 2048 for s in sizes):
            raise Splat3dError(f"Render sizes {sizes} must lie in 8..2048; fix camera.render_size(_schedule).")
        if any(len(x) != 2 for x in self.render_size_schedule):
            raise Splat3dError("camera.render_size_schedule must be a list of [step, size] pairs.")
        for name in ("elevation_range", "azimuth_range", "radius_range", "fovy_range"):
            r = getattr(self, name)
            if len(r) != 2 or r[0] > r[1]:
                raise Splat3dError(f"camera.{name} must be [low, high] with low <= high, got {list(r)}.")
        if self.radius_range[0] <= 0 or not 0 < self.fovy_range[0] <= self.fovy_range[1] < 180:
            raise Splat3dError("camera radius must be positive and fovy within (0, 180) degrees.")
        if self.batch_size < 1:
            raise Splat3dError(f"camera.batch_size must be at least 1, got {self.batch_size}.")


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4] world-to-camera
    Ks: Tensor  # [C, 3, 3]
    width: int
    height: int
    elevation: Tensor | None = None  # [C] degrees, when known
    azimuth: Tensor | None = None  # [C] degrees, when known
    radius: Tensor | None = None  # [C], when known
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        c = self.viewmats.shape[0]
        assert self.viewmats.shape == (c, 4, 4), f"viewmats must be [C, 4, 4], got {tuple(self.viewmats.shape)}"
        assert self.Ks.shape == (c, 3, 3), f"Ks must be [C, 3, 3], got {tuple(self.Ks.shape)}"
        assert self.width > 0 and self.height > 0, f"bad image size {self.width}x{self.height}"

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)

        def pick(t):
            return None if t is None else t[index]

        return Cameras(
            self.viewmats[index], self.Ks[index], self.width, self.height,
            pick(self.elevation), pick(self.azimuth), pick(self.radius),
        )  # fmt: skip

    @classmethod
    def from_c2w(cls, c2w: Tensor, Ks: Tensor, width: int, height: int, convention: str = "opencv") -> Cameras:
        """Cameras from camera-to-world matrices [C, 4, 4] (or [C, 3, 4]).

        ``convention="opengl"`` accepts the x right, y up, z backward camera
        axes of OpenGL, Blender, NeRF and threestudio, and converts them.
        """
        assert convention in ("opencv", "opengl"), f"unknown camera convention {convention!r}"
        c2w = c2w.float()
        if c2w.shape[-2] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device).expand(c2w.shape[0], 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        if convention == "opengl":
            c2w = c2w * torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device)
        return cls(torch.linalg.inv(c2w), Ks.float().expand(c2w.shape[0], 3, 3), width, height)

    @property
    def c2w(self) -> Tensor:
        """Camera-to-world matrices [C, 4, 4]."""
        return torch.linalg.inv(self.viewmats)

    @property
    def positions(self) -> Tensor:
        """Camera centres in world coordinates [C, 3]."""
        return self.c2w[:, :3, 3]

    def angles(self) -> tuple[Tensor, Tensor]:
        """(elevation, azimuth) in degrees [C], from the orbit values or the positions."""
        if self.elevation is not None and self.azimuth is not None:
            return self.elevation, self.azimuth
        p = self.positions
        r = p.norm(dim=-1).clamp_min(1e-12)
        elevation = torch.rad2deg(torch.asin((p[:, 2] / r).clamp(-1, 1)))
        return elevation, torch.rad2deg(torch.atan2(p[:, 1], p[:, 0]))

    def to(self, device=None, dtype: torch.dtype | None = None) -> Cameras:
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return Cameras(
            move(self.viewmats), move(self.Ks), self.width, self.height,
            move(self.elevation), move(self.azimuth), move(self.radius),
        )  # fmt: skip

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras rendering at another size (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        Ks = self.Ks.clone()
        Ks[:, 0] *= sx
        Ks[:, 1] *= sy
        return Cameras(self.viewmats, Ks, width, height, self.elevation, self.azimuth, self.radius)

    def to_json(self) -> list[dict]:
        return [
            {"viewmat": v.tolist(), "K": k.tolist(), "width": self.width, "height": self.height}
            for v, k in zip(self.viewmats.double(), self.Ks.double())
        ]

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        assert cameras, "need at least one Cameras to concatenate"
        w, h = cameras[0].width, cameras[0].height
        assert all(c.width == w and c.height == h for c in cameras), "sizes differ"

        def cat_opt(name):
            parts = [getattr(c, name) for c in cameras]
            return None if any(p is None for p in parts) else torch.cat(parts)

        return Cameras(
            torch.cat([c.viewmats for c in cameras]), torch.cat([c.Ks for c in cameras]), w, h,
            cat_opt("elevation"), cat_opt("azimuth"), cat_opt("radius"),
        )  # fmt: skip


def intrinsics_from_fovy(fovy_deg: Tensor, width: int, height: int) -> Tensor:
    """Pinhole K [C, 3, 3] with square pixels and the principal point centred."""
    fovy = torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)).reshape(-1)
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    K = torch.zeros(len(fovy), 3, 3)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def look_at(positions: Tensor, target: Tensor | None = None) -> Tensor:
    """World-to-camera matrices [C, 4, 4] for cameras at ``positions`` looking at ``target``.

    The camera's y axis points as close to world down (-z) as possible. Looking
    straight up or down, where that is undefined, the image's up is world +x.
    """
    positions = positions.reshape(-1, 3).float()
    target = torch.zeros(3) if target is None else torch.as_tensor(target).float()
    forward = torch.nn.functional.normalize(target - positions, dim=-1)
    up = torch.tensor(WORLD_UP).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt_up = torch.tensor([1.0, 0.0, 0.0]).expand_as(forward)
        right = torch.where(degenerate[:, None], torch.linalg.cross(forward, alt_up), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4).repeat(len(positions), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, positions
    return torch.linalg.inv(c2w)


def orbit_positions(elevation: Tensor, azimuth: Tensor, radius: Tensor) -> Tensor:
    el, az = torch.deg2rad(elevation.float()), torch.deg2rad(azimuth.float())
    return radius.float()[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )


def orbit_cameras(
    elevation: Union[float, Tensor],
    azimuth: Union[float, Tensor],
    radius: Union[float, Tensor],
    fovy: Union[float, Tensor],
    width: int,
    height: int,
) -> Cameras:
    """Cameras on a sphere around the origin; each argument a scalar or [C]."""
    el, az, r, fov = torch.broadcast_tensors(
        *(torch.as_tensor(x, dtype=torch.float32).reshape(-1) for x in (elevation, azimuth, radius, fovy))
    )
    viewmats = look_at(orbit_positions(el, az, r))
    return Cameras(viewmats, intrinsics_from_fovy(fov, width, height), width, height, el, az, r)


def turntable(
    n_views: int,
    elevation: float = 20.0,
    radius: float = 3.0,
    fovy: float = 40.0,
    width: int = 256,
    height: int = 256,
    start_azimuth: float = 0.0,
) -> Cameras:
    """``n_views`` cameras evenly spaced in azimuth at one elevation."""
    azimuth = start_azimuth + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    return orbit_cameras(elevation, azimuth, radius, fovy, width, height)


def load_cameras_json(path: Union[str, Path]) -> Cameras:
    """Read a cameras file: a JSON list of {"viewmat", "K", "width", "height"}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise Splat3dError(f"Cameras file {path} does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise Splat3dError(f"Cannot read cameras file {path} ({e}); check the file.") from None
    except json.JSONDecodeError as e:
        raise Splat3dError(
            f"Cameras file {path} is not valid JSON (line {e.lineno}: {e.msg}); "
            'expected a list of {"viewmat", "K", "width", "height"} objects.'
        ) from None

    def bad(why: str) -> Splat3dError:
        return Splat3dError(
            f"Cameras file {path} is malformed: {why}; expected a non-empty list of "
            '{"viewmat": 4x4, "K": 3x3, "width": W, "height": H} objects.'
        )

    if not isinstance(data, list) or not data:
        raise bad("the top level is not a non-empty list")
    viewmats, Ks, sizes = [], [], set()
    for i, cam in enumerate(data):
        if not isinstance(cam, dict):
            raise bad(f"entry {i} is not an object")
        missing = [k for k in ("viewmat", "K", "width", "height") if k not in cam]
        if missing:
            raise bad(f"entry {i} lacks {', '.join(missing)}")
        try:
            v = torch.tensor(cam["viewmat"], dtype=torch.float64)
            k = torch.tensor(cam["K"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise bad(f"entry {i} has a non-numeric viewmat or K") from None
        if v.shape != (4, 4) or k.shape != (3, 3):
            raise bad(f"entry {i} has viewmat {tuple(v.shape)} and K {tuple(k.shape)}")
        if not (torch.isfinite(v).all() and torch.isfinite(k).all()):
            raise bad(f"entry {i} has non-finite numbers")
        if abs(torch.linalg.det(v[:3, :3]).item()) < 1e-8:
            raise bad(f"entry {i} has a singular viewmat rotation")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise bad(f"entry {i} has non-positive focal lengths in K")
        w, h = cam["width"], cam["height"]
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0) or isinstance(w, bool):
            raise bad(f"entry {i} has width/height {w!r}/{h!r}, not positive integers")
        viewmats.append(v.float())
        Ks.append(k.float())
        sizes.add((w, h))
    if len(sizes) > 1:
        raise bad(f"cameras have different sizes {sorted(sizes)}; use one size per file")
    (w, h) = sizes.pop()
    return Cameras(torch.stack(viewmats), torch.stack(Ks), w, h)


def save_cameras_json(cameras: Cameras, path: Union[str, Path]) -> None:
    Path(path).write_text(json.dumps(cameras.to_json(), indent=1))


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H), both in 1..8192."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
        ok = len(parts) == 2 and 0 < w <= 8192 and 0 < h <= 8192
    except ValueError:
        ok = False
    if not ok:
        raise Splat3dError(f"Size {text!r} is not valid; write it as WIDTHxHEIGHT, e.g. 256x256 (1..8192).")
    return w, h


def default_fovy_radius(extent: float, fovy_deg: float = 40.0, margin: float = 1.15) -> float:
    """Distance at which a sphere of radius ``extent`` fills the view of ``fovy``."""
    return margin * extent / math.sin(math.radians(fovy_deg) / 2)


def framing_radius(scene: GaussianScene, fovy_deg: float) -> float:
    """Orbit radius at which the scene's bulk (98% of centres) fills the view; 3 for an empty scene."""
    if len(scene) == 0:
        return 3.0
    return default_fovy_radius(scene_extent(scene, 0.98), fovy_deg)


class CameraSampler:
    """Random orbit cameras for each step, from a CameraConfig.

    Elevation, radius and fovy are uniform in their ranges; azimuths are
    stratified (one per equal slice of the range, jittered within it), so a
    batch always sees the object from around. Draws come from ``generator``
    (CPU), which checkpoints save and restore.
    """

    def __init__(self, config, generator: torch.Generator):
        self.config = config
        self.generator = generator

    def render_size(self, step: int) -> int:
        size = self.config.render_size
        for start, value in sorted(tuple(x) for x in self.config.render_size_schedule):
            if step >= start:
                size = value
        return int(size)

    def _uniform(self, bounds, n: int) -> Tensor:
        lo, hi = float(bounds[0]), float(bounds[1])
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def sample(self, step: int) -> Cameras:
        cfg, b = self.config, self.config.batch_size
        lo, hi = float(cfg.azimuth_range[0]), float(cfg.azimuth_range[1])
        jitter = torch.rand(b, generator=self.generator)
        azimuth = lo + (hi - lo) * (torch.arange(b) + jitter) / b
        elevation = self._uniform(cfg.elevation_range, b)
        radius = self._uniform(cfg.radius_range, b)
        fovy = self._uniform(cfg.fovy_range, b)
        size = self.render_size(step)
        return orbit_cameras(elevation, azimuth, radius, fovy, size, size)
