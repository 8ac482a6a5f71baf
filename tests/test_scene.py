import math

import torch

from splat3d.scene.gaussians import GaussianScene, rgb_to_sh0, sh0_to_rgb


def test_random_ball_initialisation():
    g = torch.Generator().manual_seed(0)
    scene = GaussianScene.random_ball(2000, radius=0.8, opacity=0.2, color=(1.0, 0.5, 0.0), sh_degree=2, generator=g)
    assert len(scene) == 2000 and scene.sh_degree == 2
    assert scene.means.norm(dim=-1).max() <= 0.8 + 1e-6
    # uniform in volume: about half the points lie beyond radius / 2**(1/3)
    frac = (scene.means.norm(dim=-1) > 0.8 / 2 ** (1 / 3)).float().mean()
    assert abs(frac - 0.5) < 0.05
    torch.testing.assert_close(scene.opacities, torch.full((2000,), 0.2))
    torch.testing.assert_close(scene.base_colors, torch.tensor([1.0, 0.5, 0.0]).expand(2000, 3))
    torch.testing.assert_close(scene.scales, torch.full((2000, 3), 0.8 / 2000 ** (1 / 3)))
    assert scene.params["shN"].shape == (2000, 8, 3)
    torch.testing.assert_close(scene.quats.norm(dim=-1), torch.ones(2000))


def test_activations_and_moves():
    scene = GaussianScene.random_ball(10, color=None, generator=torch.Generator().manual_seed(1))
    scene.params["quats"].data.mul_(3.0)
    torch.testing.assert_close(scene.quats.norm(dim=-1), torch.ones(10))
    scene.params["scales"].data.fill_(math.log(0.5))
    torch.testing.assert_close(scene.scales, torch.full((10, 3), 0.5))
    d = scene.to(dtype=torch.float64)
    assert d.dtype == torch.float64 and d.params["means"].is_leaf and d.params["means"].requires_grad
    assert torch.equal(d.params["means"].float(), scene.params["means"])
    padded = scene.with_sh_degree(3)
    assert padded.sh_degree == 3 and padded.params["shN"].abs().max() == 0
    assert padded.with_sh_degree(0).sh_degree == 0
    rgb = torch.rand(5, 3)
    torch.testing.assert_close(sh0_to_rgb(rgb_to_sh0(rgb)), rgb)
