import pytest
import torch
from helpers import random_scene, run_cli
from plyfile import PlyData

from splat3d.render import render
from splat3d.render.cameras import Cameras, orbit_cameras
from splat3d.scene.export import UP_AXES, reorient
from splat3d.scene.ply import read_ply, write_ply


@pytest.mark.parametrize("up", ["+y", "-y"])
def test_reorient_turns_everything_with_the_scene(up):
    scene = random_scene(n=60, sh_degree=3, dtype=torch.float32, seed=2)
    turned = reorient(scene, up)
    cams = orbit_cameras(torch.tensor([20.0, -30.0]), torch.tensor([10.0, 200.0]), 3.0, 45.0, 40, 40)
    c2w = cams.c2w.clone()
    c2w[:, :3, :] = UP_AXES[up] @ c2w[:, :3, :]  # the cameras turned the same way
    a = render(scene, cams, 0.0).images
    b = render(turned, Cameras.from_c2w(c2w, cams.Ks, 40, 40), 0.0).images
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    up_vector = {"+y": [0.0, 1.0, 0.0], "-y": [0.0, -1.0, 0.0]}[up]
    torch.testing.assert_close(UP_AXES[up] @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor(up_vector))


def test_export_formats(tmp_path, capsys):
    scene = random_scene(n=50, sh_degree=1, dtype=torch.float32, seed=1)
    write_ply(scene, tmp_path / "s.ply")
    code, _, err = run_cli(capsys, "export", tmp_path / "s.ply", "--format", "splat", "--out", tmp_path / "s.splat")
    assert code == 0, err
    assert (tmp_path / "s.splat").stat().st_size == 32 * 50  # 32 bytes per splat
    code, _, err = run_cli(
        capsys, "export", tmp_path / "s.ply", "--format", "ply_compressed", "--out", tmp_path / "c.ply"
    )
    assert code == 0, err
    ply = PlyData.read(str(tmp_path / "c.ply"))
    assert {"chunk", "vertex"} <= {e.name for e in ply.elements}
    code, _, err = run_cli(
        capsys, "export", tmp_path / "s.ply", "--up", "+y", "--sh-degree", 3, "--out", tmp_path / "y.ply"
    )
    assert code == 0, err
    turned = read_ply(tmp_path / "y.ply")
    assert turned.sh_degree == 3
    torch.testing.assert_close(turned.means[:, 1], scene.means[:, 2].detach(), atol=1e-6, rtol=0)
    code, _, err = run_cli(capsys, "export", tmp_path / "s.ply", "--up", "+x", "--out", tmp_path / "x.ply")
    assert code == 2 and "up axis" in err


def test_render_a_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_ply(random_scene(n=80, dtype=torch.float32, seed=4), run / "scene.ply")
    code, _, err = run_cli(capsys, "render", run, "--video", "--size", "40x24")
    assert code == 0, err
    assert len(list((run / "renders").glob("view_*.png"))) == 48
    assert list((run / "renders").glob("turntable.*"))
