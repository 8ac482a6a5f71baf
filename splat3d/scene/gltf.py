"""Gaussian splats as glTF 2.0 (binary .glb) with the Khronos ``KHR_gaussian_splatting`` extension.

The extension stores the Gaussians as one mesh primitive of mode POINTS whose
vertex attributes are, per Gaussian (float32 here):

    POSITION                                   VEC3  centre
    KHR_gaussian_splatting:ROTATION            VEC4  unit quaternion, glTF's (x, y, z, w) order
    KHR_gaussian_splatting:SCALE               VEC3  linear scale (not the log PLY stores)
    KHR_gaussian_splatting:OPACITY             SCALAR opacity after the sigmoid, in [0, 1]
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_n  VEC3  raw SH coefficients (degree 0 is PLY's f_dc),
                                                     n = 0..2l in the order m = -l..l
    COLOR_0                                    VEC4  fallback colour for viewers without the
                                                     extension: linear RGB of the DC term, opacity

and the extension object ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}``
on the primitive (the colours 3DGS learns are display sRGB). glTF is +y up, so
``export`` turns splat3d's +z-up scenes to +y unless told otherwise.
pygltflib builds and parses the file; only the attribute arrays are ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from splat3d.errors import Splat3dError
from splat3d.scene.gaussians import SH_C0, GaussianScene

EXTENSION = "KHR_gaussian_splatting"


def _attribute_names(degree: int) -> list[str]:
    """The SH attribute of every coefficient, in the order of splat3d's [sh0, shN] coefficients."""
    return [f"{EXTENSION}:SH_DEGREE_{l}_COEF_{n}" for l in range(degree + 1) for n in range(2 * l + 1)]


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def write_glb(scene: GaussianScene, path: Union[str, Path]) -> int:
    """Write ``scene`` (in the frame it is given) as a .glb; returns the number of Gaussians."""
    import pygltflib as g

    from splat3d.io.fileio import atomic_write

    if len(scene) == 0:
        raise Splat3dError("The scene has no Gaussians; there is nothing to export.")
    raw = {k: v.detach().float().cpu().numpy() for k, v in scene.raw().items()}
    n = len(scene)
    coeffs = np.concatenate([raw["sh0"], raw["shN"]], 1)  # [N, B, 3]
    opacity = 1.0 / (1.0 + np.exp(-raw["opacities"]))
    quats = raw["quats"] / np.linalg.norm(raw["quats"], axis=-1, keepdims=True)
    dc = np.clip(raw["sh0"][:, 0] * SH_C0 + 0.5, 0.0, 1.0)
    arrays = [
        ("POSITION", raw["means"], g.VEC3),
        ("COLOR_0", np.concatenate([_srgb_to_linear(dc), opacity[:, None]], 1), g.VEC4),
        (f"{EXTENSION}:ROTATION", quats[:, [1, 2, 3, 0]], g.VEC4),  # wxyz -> xyzw
        (f"{EXTENSION}:SCALE", np.exp(raw["scales"]), g.VEC3),
        (f"{EXTENSION}:OPACITY", opacity, g.SCALAR),
    ] + [(name, coeffs[:, b], g.VEC3) for b, name in enumerate(_attribute_names(scene.sh_degree))]
    blob, views, accessors, attributes = b"", [], [], {}
    for i, (name, array, kind) in enumerate(arrays):
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=g.ARRAY_BUFFER))
        accessor = g.Accessor(bufferView=i, componentType=g.FLOAT, count=n, type=kind)
        if name == "POSITION":  # core glTF requires POSITION's bounds
            accessor.min, accessor.max = raw["means"].min(0).tolist(), raw["means"].max(0).tolist()
        accessors.append(accessor)
        attributes[name] = i
        blob += data + b"\0" * (-len(data) % 4)
    primitive = g.Primitive(
        mode=g.POINTS, attributes=g.Attributes(**attributes),
        extensions={EXTENSION: {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}},
    )  # fmt: skip
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="splat3d"), extensionsUsed=[EXTENSION],
        scene=0, scenes=[g.Scene(nodes=[0])], nodes=[g.Node(mesh=0)], meshes=[g.Mesh(primitives=[primitive])],
        accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))],
    )  # fmt: skip
    gltf.set_binary_blob(blob)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(b"".join(gltf.save_to_bytes())))
    return n


def read_glb(path: Union[str, Path]) -> GaussianScene:
    """The Gaussians of the first KHR_gaussian_splatting primitive of a .glb (float accessors)."""
    import pygltflib as g

    try:
        gltf = g.GLTF2.load_binary(str(path))
    except Exception as e:  # pygltflib raises bare errors on files that are not GLB
        raise Splat3dError(f"{path} is not a readable .glb file ({type(e).__name__}).") from None
    blob = gltf.binary_blob()
    primitive = next(
        (p for m in gltf.meshes for p in m.primitives if EXTENSION in (p.extensions or {})), None
    )  # fmt: skip
    if primitive is None or blob is None:
        raise Splat3dError(f"{path} holds no {EXTENSION} splats.")
    attributes = {k: v for k, v in vars(primitive.attributes).items() if v is not None}

    def read(name: str, width: int) -> np.ndarray:
        accessor = gltf.accessors[attributes[name]]
        if accessor.componentType != g.FLOAT:
            raise Splat3dError(f"{path}: {name} is quantised; splat3d reads float splats only.")
        view = gltf.bufferViews[accessor.bufferView]
        offset = (view.byteOffset or 0) + (accessor.byteOffset or 0)
        return np.frombuffer(blob, np.float32, accessor.count * width, offset).reshape(accessor.count, width)

    degree = 0
    while all(name in attributes for name in _attribute_names(degree + 1)) and degree < 3:
        degree += 1
    coeffs = np.stack([read(name, 3) for name in _attribute_names(degree)], 1)
    opacity = np.clip(read(f"{EXTENSION}:OPACITY", 1)[:, 0], 1e-7, 1 - 1e-7)
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731 - a copy: frombuffer is read-only
    return GaussianScene(
        means=t(read("POSITION", 3)),
        scales=t(np.log(np.maximum(read(f"{EXTENSION}:SCALE", 3), 1e-12))),
        quats=t(read(f"{EXTENSION}:ROTATION", 4)[:, [3, 0, 1, 2]]),  # xyzw -> wxyz
        opacities=t(np.log(opacity / (1 - opacity))),
        sh0=t(coeffs[:, :1]),
        shN=t(coeffs[:, 1:]),
    )
