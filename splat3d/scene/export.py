"""Scenes for other viewers: formats and up axes.

- ``ply``: the INRIA layout (splat3d.scene.ply), with optional SH padding to degree 3.
- ``splat`` (antimatter15/splat and many web viewers) and ``ply_compressed``
  (SuperSplat's compressed PLY): written by gsplat's ``export_splats``.
- ``glb``: glTF 2.0 with the Khronos KHR_gaussian_splatting extension
  (splat3d.scene.gltf, through pygltflib); +y up unless told otherwise.
- ``spz``: Niantic's compressed format, written by gsply (``pip install
  'splat3d[spz]'``).
- a mesh (``splat3d.render.mesh``): .glb, .obj or .ply, with vertex colours.

splat3d scenes are +z up. Many viewers are not: three.js-based viewers and
SuperSplat treat +y as up, and viewers made for COLMAP/INRIA captures
(antimatter15/splat among them) treat -y as up. ``reorient`` turns a scene
so that its up axis becomes the one a viewer expects: positions and
rotations are turned, and the view-dependent SH coefficients are turned with
them (per band, by a matrix fitted on the SH basis itself, which is exact
because each band is closed under rotation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from splat3d.errors import Splat3dError
from splat3d.scene.gaussians import GaussianScene, num_sh_bases
from splat3d.scene.ply import write_ply

FORMATS = ("ply", "splat", "ply_compressed", "glb", "spz")
# What `export` writes when --format is not given, by the output's extension.
BY_EXTENSION = {".ply": "ply", ".splat": "splat", ".glb": "glb", ".spz": "spz", ".obj": "mesh"}
UP_AXES = {
    "+z": torch.eye(3),
    # +z -> +y: (x, y, z) -> (x, z, -y)
    "+y": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    # +z -> -y: (x, y, z) -> (x, -z, y)
    "-y": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
}


def _rotmat_to_quat(R: Tensor) -> Tensor:
    """wxyz quaternion of a proper rotation matrix (for the handful we use)."""
    w = torch.sqrt(torch.clamp(1 + R.trace(), min=1e-12)) / 2
    return torch.stack([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])


def _quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
         aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1,
    )  # fmt: skip


def sh_rotation(R: Tensor, degree: int) -> Tensor:
    """[B, B] block-diagonal M with Y(R d) = M Y(d), for the real SH basis up to ``degree``.

    Each band is closed under rotation, so M is fitted exactly, band by band,
    by least squares on random directions.
    """
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast

    n_bases = num_sh_bases(degree)
    dirs = torch.nn.functional.normalize(torch.randn(512, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    Y = _eval_sh_bases_fast(n_bases, dirs.double())  # [D, B]
    Y_rot = _eval_sh_bases_fast(n_bases, (dirs.double() @ R.double().T))  # Y(R d)
    M = torch.zeros(n_bases, n_bases, dtype=torch.float64)
    for band in range(degree + 1):
        lo, hi = band**2, (band + 1) ** 2
        M[lo:hi, lo:hi] = torch.linalg.lstsq(Y[:, lo:hi], Y_rot[:, lo:hi]).solution.T
    return M


def reorient(scene: GaussianScene, up: str) -> GaussianScene:
    """The scene turned so that its +z up becomes ``up`` (+z, +y or -y)."""
    if up not in UP_AXES:
        raise Splat3dError(f"Unknown up axis {up!r}; choose one of {', '.join(UP_AXES)}.")
    R = UP_AXES[up]
    if up == "+z":
        return scene.clone()
    raw = scene.raw()
    q = _rotmat_to_quat(R).to(raw["quats"])
    coeffs = torch.cat([raw["sh0"], raw["shN"]], 1)  # [N, B, 3]
    # The new colour at direction d is the old one at R^T d: coeffs' Y(d) = coeffs Y(R^T d) = coeffs M(R^T) Y(d).
    M = sh_rotation(R.T, scene.sh_degree).to(coeffs)
    coeffs = torch.einsum("nbc,bk->nkc", coeffs, M)
    return GaussianScene(
        means=raw["means"] @ R.T.to(raw["means"]),
        scales=raw["scales"],
        quats=_quat_multiply(q.expand_as(raw["quats"]), raw["quats"]),
        opacities=raw["opacities"],
        sh0=coeffs[:, :1],
        shN=coeffs[:, 1:],
    )


def export_scene(
    scene: GaussianScene, path: Union[str, Path], fmt: str = "ply", sh_degree: Optional[int] = None, up: str = "+z"
) -> int:
    """Write ``scene`` for viewers; returns the number of Gaussians written."""
    from gsplat import export_splats

    from splat3d.io.fileio import atomic_write

    if fmt not in FORMATS:
        raise Splat3dError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if sh_degree is not None and not 0 <= sh_degree <= 3:
        raise Splat3dError(f"--sh-degree {sh_degree} is out of range; choose 0..3.")
    if len(scene) == 0:
        raise Splat3dError("The scene has no Gaussians; there is nothing to export.")
    scene = reorient(scene, up)
    if fmt == "ply":
        return write_ply(scene, path, sh_degree=sh_degree)
    if sh_degree is not None:
        scene = scene.with_sh_degree(sh_degree)
    if fmt == "glb":
        from splat3d.scene.gltf import write_glb

        return write_glb(scene, path)
    if fmt == "spz":
        return write_spz(scene, path)
    raw = {k: v.float().cpu() for k, v in scene.raw().items()}
    data = export_splats(
        raw["means"], raw["scales"], raw["quats"], raw["opacities"], raw["sh0"], raw["shN"], format=fmt
    )
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return len(scene)


def _gsply():
    try:
        import gsply
    except ImportError:
        raise Splat3dError(
            "Writing .spz needs the gsply package; install it with: pip install 'splat3d[spz]'"
        ) from None
    return gsply


def write_spz(scene: GaussianScene, path: Union[str, Path]) -> int:
    """Niantic's SPZ (version 3, gzip), through gsply: 24-bit positions, 8-bit everything else."""
    from splat3d.io.fileio import atomic_write

    gsply = _gsply()
    raw = {k: v.detach().float().cpu().numpy() for k, v in scene.raw().items()}
    data = gsply.GSData(  # PLY conventions: log scales, logit opacities, wxyz quaternions
        means=raw["means"], scales=raw["scales"], quats=raw["quats"], opacities=raw["opacities"],
        sh0=raw["sh0"][:, 0], shN=raw["shN"],
    )  # fmt: skip
    atomic_write(Path(path), lambda tmp: gsply.write_spz(tmp, data))
    return len(scene)


def read_spz(path: Union[str, Path]) -> GaussianScene:
    gsply = _gsply()
    try:
        data = gsply.read_spz(str(path))
    except Exception as e:
        raise Splat3dError(f"{path} is not a readable .spz file ({type(e).__name__}).") from None
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    shN = data.shN if data.shN is not None else np.zeros((len(data.means), 0, 3), np.float32)
    return GaussianScene(t(data.means), t(data.scales), t(data.quats), t(data.opacities), t(data.sh0[:, None]), t(shN))
