"""PLY I/O in the INRIA 3DGS layout, with plyfile.

Written: binary little-endian float32 vertex properties, in this order:
x y z nx ny nz f_dc_0..2 f_rest_0..f_rest_{3K-1} opacity scale_0..2 rot_0..3,
raw values (logit opacity, log scale, unnormalised wxyz quaternion, SH) and
channel-major f_rest (the K coefficients of red, then green, then blue).

Read: any file in that layout, at any SH degree, with or without normals,
binary or ASCII, in any property order (gsplat's ``export_splats`` omits the
normals, for example).

We do not use gsplat's ``export_splats(format="ply")`` for writing because it
omits the normals, cannot pad f_rest to degree 3 for viewers that expect 45
values, and its NaN filter silently drops rows.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from splat3d.errors import Splat3dError
from splat3d.io.fileio import atomic_write
from splat3d.scene.gaussians import GaussianScene, num_sh_bases, sh_degree_from_rest

REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_HEADER_LIMIT = 1 << 16


class PlyFormatError(Splat3dError):
    """The file is not a readable 3DGS PLY."""


class NonFiniteRowsWarning(UserWarning):
    """Gaussians with NaN or Inf values were dropped."""


def _finite_rows(arrays: list[np.ndarray]) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a.reshape(len(a), int(np.prod(a.shape[1:])))).all(axis=1)  # -1 fails on 0 rows
    return ok


def scene_to_rows(scene: GaussianScene, sh_degree: int | None = None) -> np.ndarray:
    """The scene as a structured float32 array in the INRIA property order."""
    if sh_degree is not None:
        scene = scene.with_sh_degree(sh_degree)
    raw = {k: v.detach().cpu().to(torch.float32).numpy() for k, v in scene.raw().items()}
    n = len(scene)
    k = raw["shN"].shape[1]
    f_rest = raw["shN"].transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major
    columns = [
        ("x", raw["means"][:, 0]), ("y", raw["means"][:, 1]), ("z", raw["means"][:, 2]),
        ("nx", np.zeros(n, np.float32)), ("ny", np.zeros(n, np.float32)), ("nz", np.zeros(n, np.float32)),
        *((f"f_dc_{i}", raw["sh0"][:, 0, i]) for i in range(3)),
        *((f"f_rest_{i}", f_rest[:, i]) for i in range(3 * k)),
        ("opacity", raw["opacities"]),
        *((f"scale_{i}", raw["scales"][:, i]) for i in range(3)),
        *((f"rot_{i}", raw["quats"][:, i]) for i in range(4)),
    ]  # fmt: skip
    rows = np.empty(n, dtype=[(name, "<f4") for name, _ in columns])
    for name, values in columns:
        rows[name] = values
    return rows


def write_ply(scene: GaussianScene, path: Union[str, Path], sh_degree: int | None = None) -> int:
    """Write ``scene`` atomically; ``sh_degree`` pads or truncates f_rest.

    Rows holding NaN or Inf are dropped with a NonFiniteRowsWarning that counts
    them. Returns the number of rows written.
    """
    path = Path(path)
    rows = scene_to_rows(scene, sh_degree)
    finite = _finite_rows([rows[name] for name in rows.dtype.names])
    if not finite.all():
        warnings.warn(
            f"Dropped {int((~finite).sum())} of {len(rows)} Gaussians with NaN or Inf values while writing {path}.",
            NonFiniteRowsWarning,
            stacklevel=2,
        )
        rows = rows[finite]
    data = PlyData([PlyElement.describe(rows, "vertex")], byte_order="<")
    atomic_write(path, data.write)
    return len(rows)


def _check_header(path: Path) -> None:
    """Reject headers that promise more rows than the file could hold.

    plyfile trusts the header's element counts; a corrupt count would make it
    allocate or loop far beyond the file's size.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    if not head.startswith(b"ply"):
        raise PlyFormatError(f"{path} is not a PLY file (it does not start with 'ply'); pass a .ply scene.")
    end = head.find(b"end_header")
    if end < 0:
        raise PlyFormatError(f"{path} has no complete PLY header (no 'end_header' line); the file is damaged.")
    for m in re.finditer(rb"^element\s+\S+\s+(\S+)", head[:end], flags=re.MULTILINE):
        try:
            count = int(m.group(1))
        except ValueError:
            raise PlyFormatError(
                f"{path} has a malformed element count {m.group(1)[:20]!r} in its header; the file is damaged."
            ) from None
        if count < 0 or count > size:
            raise PlyFormatError(
                f"{path} declares {count} rows but holds only {size} bytes; the file is truncated or damaged."
            )


def read_ply(path: Union[str, Path]) -> GaussianScene:
    """Read a 3DGS PLY into a float32 GaussianScene on the CPU.

    Raises PlyFormatError (one sentence naming the file and the problem) for a
    missing, truncated or malformed file or one without the 3DGS properties.
    Rows with NaN or Inf are dropped with a NonFiniteRowsWarning.
    """
    path = Path(path)
    if not path.exists():
        raise PlyFormatError(f"Scene file {path} does not exist; check the path.")
    if not path.is_file():
        raise PlyFormatError(f"Scene path {path} is not a file; pass a .ply scene file.")
    try:
        _check_header(path)
        ply = PlyData.read(str(path))
        if "vertex" not in ply:
            raise PlyFormatError(f"{path} has no 'vertex' element; it is not a 3DGS scene.")
        vertex = ply["vertex"]
        names = [p.name for p in vertex.properties]
        columns = {name: np.asarray(vertex.data[name]) for name in names}
    except PlyFormatError:
        raise
    except OSError as e:
        raise PlyFormatError(f"Cannot read {path} ({e.strerror or e}); check the file's permissions.") from None
    except Exception as e:  # noqa: BLE001 - plyfile raises many types on damaged input
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise PlyFormatError(f"{path} is not a valid PLY file ({reason}); the file is truncated or damaged.") from None

    missing = [p for p in REQUIRED if p not in columns]
    if missing:
        raise PlyFormatError(
            f"{path} lacks the 3DGS properties {', '.join(missing)}; it is not a Gaussian splat scene."
        )
    rest = sorted(int(n[len("f_rest_") :]) for n in names if re.fullmatch(r"f_rest_\d+", n))
    k = len(rest) // 3
    if rest != list(range(len(rest))) or len(rest) % 3 or sh_degree_from_rest(k) < 0:
        raise PlyFormatError(
            f"{path} has {len(rest)} f_rest properties; a 3DGS scene has 0, 9, 24 or 45 numbered from 0."
        )
    for name in [*REQUIRED, *(f"f_rest_{i}" for i in rest)]:
        col = columns[name]
        if col.dtype.kind not in "fiu" or col.ndim != 1:
            raise PlyFormatError(f"{path} has a non-numeric property {name}; it is not a Gaussian splat scene.")

    def stack(names_):
        return np.stack([columns[n].astype(np.float32) for n in names_], axis=1) if names_ else None

    n = len(columns["x"])
    arrays = {
        "means": stack(["x", "y", "z"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": columns["opacity"].astype(np.float32),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": (
            stack([f"f_rest_{i}" for i in rest]).reshape(n, 3, k).transpose(0, 2, 1)
            if k
            else np.zeros((n, 0, 3), np.float32)
        ),
    }
    finite = _finite_rows(list(arrays.values()))
    if not finite.all():
        warnings.warn(
            f"Dropped {int((~finite).sum())} of {n} Gaussians with NaN or Inf values while reading {path}.",
            NonFiniteRowsWarning,
            stacklevel=2,
        )
        arrays = {key: a[finite] for key, a in arrays.items()}
    tensors = {key: torch.from_numpy(np.ascontiguousarray(a)) for key, a in arrays.items()}
    assert num_sh_bases(sh_degree_from_rest(k)) == k + 1
    return GaussianScene(**tensors)
