import json

import pytest
import torch

from splat3d.errors import Splat3dError
from splat3d.render.cameras import (
    Cameras,
    load_cameras_json,
    orbit_cameras,
    parse_size,
    save_cameras_json,
    turntable,
)


def project(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [C, P, 2] and depth [C, P]."""
    p = torch.einsum("cij,pj->cpi", cams.viewmats[:, :3, :3], points) + cams.viewmats[:, None, :3, 3]
    uv = torch.einsum("cij,cpj->cpi", cams.Ks, p)
    return uv[..., :2] / uv[..., 2:], p[..., 2]


def test_orbit_looks_at_origin_with_z_up():
    cams = orbit_cameras(torch.tensor([0.0, 30.0, -20.0]), torch.tensor([0.0, 90.0, 215.0]), 3.0, 40.0, 64, 48)
    uv, depth = project(cams, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    torch.testing.assert_close(uv[:, 0], torch.tensor([[32.0, 24.0]]).expand(3, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth[:, 0], torch.full((3,), 3.0), atol=1e-5, rtol=0)
    assert (uv[:, 1, 1] < uv[:, 0, 1]).all(), "world +z must appear above the centre (smaller y)"
    # azimuth 0 sits on +x; azimuth 90 on +y; positions match the radius
    torch.testing.assert_close(cams.positions[0], torch.tensor([3.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    assert cams.positions[1, 1] > 2.0
    torch.testing.assert_close(cams.positions.norm(dim=-1), torch.full((3,), 3.0))
    # rotation is orthonormal with det +1
    R = cams.viewmats[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(3))


def test_right_hand_side_from_the_front():
    # From azimuth 0 (on +x, looking at -x), world +y appears on the right.
    cams = orbit_cameras(0.0, 0.0, 3.0, 40.0, 64, 64)
    uv, _ = project(cams, torch.tensor([[0.0, 0.5, 0.0]]))
    assert uv[0, 0, 0] > 32


def test_fovy_sets_focal_and_straight_down_is_defined():
    cams = orbit_cameras(90.0, 0.0, 2.0, 90.0, 100, 100)
    assert torch.isfinite(cams.viewmats).all()
    assert cams.Ks[0, 1, 1].item() == pytest.approx(50.0)
    uv, depth = project(cams, torch.zeros(1, 3))
    assert depth[0, 0].item() == pytest.approx(2.0, abs=1e-5)


def test_json_round_trip_and_resize(tmp_path):
    cams = turntable(5, width=40, height=30)
    save_cameras_json(cams, tmp_path / "c.json")
    back = load_cameras_json(tmp_path / "c.json")
    assert len(back) == 5 and (back.width, back.height) == (40, 30)
    torch.testing.assert_close(back.viewmats, cams.viewmats)
    half = back.resized(20, 15)
    assert half.Ks[0, 0, 0].item() == pytest.approx(cams.Ks[0, 0, 0].item() / 2)


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "non-empty list"),
        ('[{"viewmat": 1}]', "lacks K, width, height"),
        ('[{"viewmat": [[1,0,0,0]], "K": [[1,0,0],[0,1,0],[0,0,1]], "width": 4, "height": 4}]', "viewmat"),
        (
            '[{"viewmat": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]], "K": [[1,0,0],[0,1,0],[0,0,1]],'
            ' "width": -4, "height": 4}]',
            "positive integers",
        ),
        (
            '[{"viewmat": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]], "K": [["a",0,0],[0,1,0],[0,0,1]],'
            ' "width": 4, "height": 4}]',
            "non-numeric",
        ),
    ],
)
def test_bad_cameras_json(tmp_path, payload, message):
    path = tmp_path / "cams.json"
    path.write_text(payload)
    with pytest.raises(Splat3dError, match=message) as err:
        load_cameras_json(path)
    assert "cams.json" in str(err.value)


def test_mixed_sizes_and_missing_file(tmp_path):
    cams = turntable(2, width=8, height=8).to_json()
    cams[1]["width"] = 9
    (tmp_path / "m.json").write_text(json.dumps(cams))
    with pytest.raises(Splat3dError, match="different sizes"):
        load_cameras_json(tmp_path / "m.json")
    with pytest.raises(Splat3dError, match="does not exist"):
        load_cameras_json(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["", "64", "64x", "0x10", "-3x4", "axb", "10x10x10", "9000x10"])
def test_bad_sizes(text):
    with pytest.raises(Splat3dError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_good_size():
    assert parse_size("320x240") == (320, 240)


def test_from_c2w_conventions():
    cams = orbit_cameras(torch.tensor([10.0, 50.0]), torch.tensor([30.0, 200.0]), 2.5, 45.0, 32, 32)
    back = Cameras.from_c2w(cams.c2w, cams.Ks, 32, 32)
    torch.testing.assert_close(back.viewmats, cams.viewmats, atol=1e-5, rtol=0)
    opengl = cams.c2w.clone()
    opengl[:, :3, 1:3] *= -1  # y up, z backward
    torch.testing.assert_close(Cameras.from_c2w(opengl[:, :3], cams.Ks[0], 32, 32, "opengl").viewmats, cams.viewmats,
                               atol=1e-5, rtol=0)  # fmt: skip
