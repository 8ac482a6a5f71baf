import warnings

import numpy as np
import pytest
import torch
from helpers import random_scene
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plyfile import PlyData, PlyElement

from splat3d.scene import PARAM_NAMES, GaussianScene
from splat3d.scene.ply import REQUIRED, NonFiniteRowsWarning, PlyFormatError, read_ply, write_ply


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, sh_degree):
    scene = random_scene(n=257, sh_degree=sh_degree, dtype=torch.float32, seed=sh_degree)
    write_ply(scene, tmp_path / "a.ply")
    loaded = read_ply(tmp_path / "a.ply")
    assert loaded.sh_degree == sh_degree and len(loaded) == 257
    for name in PARAM_NAMES:
        assert torch.equal(loaded.params[name], scene.params[name]), name
    write_ply(loaded, tmp_path / "b.ply")
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()


def test_layout_is_inria(tmp_path):
    scene = random_scene(n=3, sh_degree=1, dtype=torch.float32)
    write_ply(scene, tmp_path / "s.ply")
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert ply.byte_order == "<" and not ply.text
    names = [p.name for p in ply["vertex"].properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(9)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected
    assert all(p.val_dtype in ("f4", "float32", "<f4") or p.val_dtype.endswith("f4") for p in ply["vertex"].properties)
    # channel-major f_rest: the 3 red coefficients come first
    v = ply["vertex"].data[1]
    shN = scene.params["shN"][1].detach().numpy()  # [3 coeffs, 3 channels]
    assert np.array_equal([v[f"f_rest_{i}"] for i in range(3)], shN[:, 0])
    assert np.array_equal([v[f"f_rest_{i}"] for i in range(3, 6)], shN[:, 1])
    assert v["opacity"] == scene.params["opacities"][1].item()  # raw logit


def test_padding_to_degree_3(tmp_path):
    scene = random_scene(n=5, sh_degree=0, dtype=torch.float32)
    write_ply(scene, tmp_path / "p.ply", sh_degree=3)
    ply = PlyData.read(str(tmp_path / "p.ply"))
    assert sum(p.name.startswith("f_rest_") for p in ply["vertex"].properties) == 45
    loaded = read_ply(tmp_path / "p.ply")
    assert loaded.sh_degree == 3 and loaded.params["shN"].abs().max() == 0
    assert torch.equal(loaded.params["sh0"], scene.params["sh0"])


def test_non_finite_rows_are_dropped_with_a_count(tmp_path):
    scene = random_scene(n=6, dtype=torch.float32)
    scene.params["means"].data[1, 0] = float("nan")
    scene.params["scales"].data[4, 2] = float("inf")
    with pytest.warns(NonFiniteRowsWarning, match="Dropped 2 of 6"):
        assert write_ply(scene, tmp_path / "n.ply") == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = read_ply(tmp_path / "n.ply")
    assert len(loaded) == 4
    assert torch.equal(loaded.params["means"], scene.params["means"].data[[0, 2, 3, 5]])


def _custom_ply(path, names, n=4, text=False, dtype="f4"):
    rows = np.zeros(n, dtype=[(name, dtype) for name in names])
    for i, name in enumerate(names):
        rows[name] = np.arange(n) * 0.5 + i
    PlyData([PlyElement.describe(rows, "vertex")], text=text).write(str(path))


def test_reads_ascii_without_normals_in_any_order(tmp_path):
    names = list(reversed(REQUIRED)) + [f"f_rest_{i}" for i in range(24)]
    _custom_ply(tmp_path / "a.ply", names, text=True, dtype="f8")
    scene = read_ply(tmp_path / "a.ply")
    assert scene.sh_degree == 2 and len(scene) == 4
    idx = names.index("y")
    assert torch.allclose(scene.means[:, 1], torch.arange(4) * 0.5 + idx)


def test_reads_gsplat_export(tmp_path):
    from gsplat import export_splats

    scene = random_scene(n=10, sh_degree=3, dtype=torch.float32)
    raw = scene.raw()
    export_splats(
        raw["means"], raw["scales"], raw["quats"], raw["opacities"], raw["sh0"], raw["shN"],
        format="ply", save_to=str(tmp_path / "g.ply"),
    )  # fmt: skip
    loaded = read_ply(tmp_path / "g.ply")
    for name in PARAM_NAMES:
        assert torch.equal(loaded.params[name], scene.params[name]), name


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "not a PLY"),
        (b"hello world", "not a PLY"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n", "no complete PLY header"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 9999999\nproperty float x\nend_header\n",
            "truncated",
        ),
        (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n", "not a valid PLY"),
        (b"ply\nformat ascii 1.0\nelement face 1\nproperty float x\nend_header\n1\n", "no 'vertex'"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "lacks the 3DGS"),
        (b"ply\nformat weird 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "not a valid PLY"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PlyFormatError, match=message) as err:
        read_ply(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_binary_and_wrong_f_rest(tmp_path):
    scene = random_scene(n=20, sh_degree=1, dtype=torch.float32)
    write_ply(scene, tmp_path / "ok.ply")
    data = (tmp_path / "ok.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 50])
    with pytest.raises(PlyFormatError, match="cut.ply"):
        read_ply(tmp_path / "cut.ply")
    _custom_ply(tmp_path / "rest.ply", list(REQUIRED) + [f"f_rest_{i}" for i in range(7)])
    with pytest.raises(PlyFormatError, match="7 f_rest"):
        read_ply(tmp_path / "rest.ply")


@pytest.fixture(scope="module")
def valid_ply_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ply") / "v.ply"
    write_ply(random_scene(n=5, sh_degree=1, dtype=torch.float32), path)
    return path.read_bytes()


def _check_reader(tmp_path, data: bytes):
    path = tmp_path / "fuzz.ply"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteRowsWarning)  # mutated floats may be NaN
            scene = read_ply(path)
    except PlyFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(scene, GaussianScene)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path, data):
    _check_reader(tmp_path, data)
    _check_reader(tmp_path, b"ply\n" + data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_headers_and_bodies(tmp_path, valid_ply_bytes, data):
    blob = bytearray(valid_ply_bytes)
    header_end = blob.index(b"end_header\n") + len(b"end_header\n")
    kind = data.draw(st.sampled_from(["flip", "replace_line", "truncate", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif kind == "replace_line":
        lines = bytes(blob[:header_end]).split(b"\n")
        i = data.draw(st.integers(0, len(lines) - 2))
        lines[i] = data.draw(
            st.sampled_from(
                [b"element vertex -1", b"element vertex 99999999999", b"property list uchar int f_dc_0",
                 b"property double x", b"format ascii 1.0", b"format binary_big_endian 1.0",
                 b"property float nonsense", b"comment hi", b"", b"element face 3"]
            )
        )  # fmt: skip
        blob = bytearray(b"\n".join(lines)) + blob[header_end:]
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob = blob[:i] + data.draw(st.binary(max_size=40)) + blob[i:]
    _check_reader(tmp_path, bytes(blob))


def test_unreadable_is_not_a_crash(tmp_path):
    with pytest.raises(PlyFormatError, match="not a file"):
        read_ply(tmp_path)
