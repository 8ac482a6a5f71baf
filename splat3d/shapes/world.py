"""The shapes world: coloured procedural objects whose true 3D form we know.

Vocabulary: 6 colours x 8 kinds. Every object is a GaussianScene of surface
Gaussians, centred at the origin, about 1.2 units across, upright (+z up) and
facing +x (azimuth 0, the "front" of splat3d's cameras). Two kinds have a
front that differs from their back and sides, so view consistency and the
multi-face (Janus) problem can be measured:

- house: wider than deep, a door and two windows on the front (+x) wall only,
  a gable roof whose triangles close the two narrow sides: front, back and
  side views each look different (a square house under a pyramid roof, up to
  world version 2, looked the same from the back and the sides);
- mug: its handle sticks out of its right side (+y), so seen from the front
  the handle is on the right, from the back on the left, and from the sides
  face-on or hidden.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from splat3d.scene.gaussians import GaussianScene, rgb_to_sh0

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.12, 0.66, 0.18),
    "blue": (0.12, 0.28, 0.88),
    "yellow": (0.95, 0.83, 0.10),
    "purple": (0.55, 0.18, 0.72),
    "orange": (0.98, 0.50, 0.06),
}
WORLD_VERSION = 3  # bump when geometry or colours change: cached datasets depend on it
KINDS = ("sphere", "cube", "cone", "cylinder", "torus", "pyramid", "house", "mug")
FRONTED = ("house", "mug")  # kinds whose front differs from their back
DETAIL_RGB = (0.22, 0.14, 0.08)  # door, windows and roof edge: dark brown
FILLER_WORDS = ("a", "an", "the", "view", "front", "side", "back", "overhead")


def vocabulary() -> list[str]:
    return [*COLOURS, *KINDS, *FILLER_WORDS]


@dataclass
class ObjectSpec:
    colour: str
    kind: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.kind}"


def parse_prompt(prompt: str) -> ObjectSpec | None:
    """The (colour, kind) a prompt names, or None if it names no colour or no kind."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colours = [w for w in words if w in COLOURS]
    kinds = [w for w in words if w in KINDS]
    return ObjectSpec(colours[0], kinds[0]) if colours and kinds else None


# --------------------------------------------------------------- geometry
def _fibonacci_sphere(n: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)


def _box_surface(n: int, half: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Points on an axis-aligned box surface (area-weighted faces) and their face index 0..5 (+x,-x,+y,-y,+z,-z)."""
    areas = torch.stack([half[1] * half[2]] * 2 + [half[0] * half[2]] * 2 + [half[0] * half[1]] * 2)
    face = torch.multinomial(areas, n, replacement=True, generator=g)
    uv = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
    axis, sign = face // 2, 1 - 2 * (face % 2)
    pts = torch.zeros(n, 3, dtype=torch.float64)
    others = torch.tensor([[1, 2], [0, 2], [0, 1]])[axis]
    pts.scatter_(1, axis[:, None], (sign * half[axis]).unsqueeze(1))
    pts.scatter_(1, others, uv * half[others])
    return pts, face


def _cylinder_surface(n: int, radius: float, z0: float, z1: float, g: torch.Generator, caps=(True, True)) -> Tensor:
    side_area = 2 * math.pi * radius * (z1 - z0)
    cap_area = math.pi * radius**2
    weights = torch.tensor([side_area, cap_area * caps[0], cap_area * caps[1]], dtype=torch.float64)
    part = torch.multinomial(weights, n, replacement=True, generator=g)
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    z = z0 + (z1 - z0) * torch.rand(n, generator=g, dtype=torch.float64)
    r = torch.full((n,), radius, dtype=torch.float64)
    disc_r = radius * torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    r = torch.where(part == 0, r, disc_r)
    z = torch.where(part == 1, torch.full_like(z, z0), torch.where(part == 2, torch.full_like(z, z1), z))
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta), z], -1)


def _cone_surface(n: int, radius: float, z0: float, z1: float, g: torch.Generator) -> Tensor:
    slant = math.hypot(radius, z1 - z0)
    weights = torch.tensor([math.pi * radius * slant, math.pi * radius**2], dtype=torch.float64)
    part = torch.multinomial(weights, n, replacement=True, generator=g)
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    s = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))  # area-uniform along the slant
    r = radius * s
    z = torch.where(part == 0, z1 - (z1 - z0) * s, torch.full_like(s, z0))
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta), z], -1)


def _pyramid_surface(n: int, half: float, z0: float, z1: float, g: torch.Generator) -> Tensor:
    """A square pyramid: four triangular sides and a base."""
    face = torch.randint(0, 5, (n,), generator=g)
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    flip = a + b > 1
    a, b = torch.where(flip, 1 - a, a), torch.where(flip, 1 - b, b)
    apex = torch.tensor([0.0, 0.0, z1], dtype=torch.float64)
    corners = torch.tensor(
        [[half, half, z0], [-half, half, z0], [-half, -half, z0], [half, -half, z0]], dtype=torch.float64
    )
    c0, c1 = corners[face % 4], corners[(face + 1) % 4]
    tri = apex + a[:, None] * (c0 - apex) + b[:, None] * (c1 - apex)
    base = torch.stack([(a * 2 - 1) * half, (b * 2 - 1) * half, torch.full_like(a, z0)], -1)
    return torch.where((face == 4)[:, None], base, tri)


def _triangles(n: int, tris: Tensor, g: torch.Generator) -> Tensor:
    """Area-uniform points on triangles [T, 3 corners, 3]."""
    area = torch.linalg.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]).norm(dim=-1)
    which = torch.multinomial(area, n, replacement=True, generator=g)
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    flip = a + b > 1
    a, b = torch.where(flip, 1 - a, a), torch.where(flip, 1 - b, b)
    t = tris[which]
    return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])


def _house_surface(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A house, wider than deep, under a gable roof whose ridge runs along its front (y).

    Its four sides differ: the front (+x, a wide wall) has a door and two windows below a roof
    slope; the back (-x) is the same wide wall, plain; each side (+-y) is a narrow wall under the
    gable's triangle. So front, side and back views each have a look of their own.
    """
    hx, hy, z0, z1, ridge = 0.3, 0.45, -0.45, 0.1, 0.52  # walls x in +-hx, y in +-hy, z0..z1; ridge height
    walls, face = _box_surface(int(n * 0.6), torch.tensor([hx, hy, (z1 - z0) / 2], dtype=torch.float64), g)
    keep = face != 4  # no flat top under the roof
    walls, face = walls[keep] + torch.tensor([0.0, 0.0, (z0 + z1) / 2], dtype=torch.float64), face[keep]
    front = face == 0
    y, z = walls[:, 1], walls[:, 2]
    door = front & (y.abs() < 0.1) & (z < -0.07)
    windows = front & ((y.abs() - 0.27).abs() < 0.08) & ((z + 0.04).abs() < 0.07)
    ex, ey = hx + 0.06, hy + 0.05  # the roof overhangs the walls a little
    f = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    slopes = torch.stack([
        torch.stack([f(ex, -ey, z1), f(ex, ey, z1), f(0, ey, ridge)]),
        torch.stack([f(ex, -ey, z1), f(0, ey, ridge), f(0, -ey, ridge)]),
        torch.stack([f(-ex, -ey, z1), f(-ex, ey, z1), f(0, ey, ridge)]),
        torch.stack([f(-ex, -ey, z1), f(0, ey, ridge), f(0, -ey, ridge)]),
    ])  # fmt: skip
    gables = torch.stack([torch.stack([f(hx, s * hy, z1), f(-hx, s * hy, z1), f(0, s * hy, ridge)]) for s in (1, -1)])
    roof = _triangles(int(n * 0.3), slopes, g)
    gable = _triangles(int(n * 0.1), gables, g)
    pts = torch.cat([walls, roof, gable])
    detail = torch.cat([door | windows, torch.zeros(len(roof) + len(gable), dtype=torch.bool)])
    return pts, detail


def _torus_surface(n: int, major: float, minor: float, g: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    v = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    # Area weighting: accept-reject on (major + minor cos v).
    keep = torch.rand(n, generator=g, dtype=torch.float64) * (major + minor) <= major + minor * torch.cos(v)
    u, v = u[keep], v[keep]
    ring = major + minor * torch.cos(v)
    return torch.stack([ring * torch.cos(u), ring * torch.sin(u), minor * torch.sin(v)], -1)


def object_points(kind: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Surface points [M, 3] (float64) and a detail mask [M] (door, windows, roof edge)."""
    g = torch.Generator().manual_seed(seed)
    detail = None
    if kind == "sphere":
        pts = _fibonacci_sphere(n) * 0.55
    elif kind == "cube":
        pts, _ = _box_surface(n, torch.full((3,), 0.42, dtype=torch.float64), g)
    elif kind == "cone":
        pts = _cone_surface(n, 0.5, -0.5, 0.55, g)
    elif kind == "cylinder":
        pts = _cylinder_surface(n, 0.4, -0.5, 0.5, g)
    elif kind == "torus":
        pts = _torus_surface(int(n * 1.6), 0.42, 0.16, g)
    elif kind == "pyramid":
        pts = _pyramid_surface(n, 0.5, -0.45, 0.55, g)
    elif kind == "house":
        pts, detail = _house_surface(n, g)
    elif kind == "mug":
        body = _cylinder_surface(int(n * 0.8), 0.34, -0.42, 0.42, g, caps=(True, False))
        inner = _cylinder_surface(int(n * 0.15), 0.3, -0.34, 0.42, g, caps=(True, False))
        t = torch.rand(int(n * 0.25), generator=g, dtype=torch.float64) * math.pi  # a half ring on +y
        w = torch.rand(len(t), generator=g, dtype=torch.float64) * 2 * math.pi
        tube = 0.05 * torch.cos(w)  # the handle is a tube of radius 0.05 around a half ellipse
        handle = torch.stack(
            [0.05 * torch.sin(w), 0.34 + (0.2 + tube) * torch.sin(t), (0.22 + tube) * torch.cos(t)], -1
        )
        pts = torch.cat([body, inner, handle])
    else:
        raise ValueError(f"unknown kind {kind!r}; the world has {', '.join(KINDS)}")
    if detail is None:
        detail = torch.zeros(len(pts), dtype=torch.bool)
    return pts, detail


def make_object(colour: str, kind: str, n: int = 2500, seed: int = 0) -> GaussianScene:
    """The true object for "a {colour} {kind}": surface Gaussians, with light shading from above."""
    assert colour in COLOURS, f"unknown colour {colour!r}; the world has {', '.join(COLOURS)}"
    pts, detail = object_points(kind, n, seed)
    m = len(pts)
    base = torch.tensor(COLOURS[colour], dtype=torch.float64)
    # Baked shading (brighter on top, darker below) so shape reads in 2D.
    shade = 0.8 + 0.2 * (pts[:, 2] / pts[:, 2].abs().max().clamp_min(1e-6))
    rgb = (base[None] * shade[:, None]).clamp(0, 1)
    rgb = torch.where(detail[:, None], torch.tensor(DETAIL_RGB, dtype=torch.float64), rgb)
    spacing = math.sqrt(4 * math.pi * 0.5**2 / max(m, 1))  # ~ distance between neighbours
    return GaussianScene(
        means=pts.float(),
        scales=torch.full((m, 3), math.log(spacing * 0.9)),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(m, 4),
        opacities=torch.full((m,), 3.0),
        sh0=rgb_to_sh0(rgb.float())[:, None],
    )
