"""The shipped shapes prior (version 2: 64 px through a latent autoencoder): loads offline and draws the
colour, kind and view it is asked for, judged by its own classifier."""

import pytest
import torch

from splat3d.distill.priors import builtin_priors, load_prior
from splat3d.distill.prompts import VIEWS
from splat3d.distill.sample import sample_images
from splat3d.shapes.evaluate import load_classifier
from splat3d.shapes.world import COLOURS, KINDS


@pytest.fixture(scope="module")
def shapes():
    return load_prior("shapes", device="cpu"), load_classifier(builtin_priors()["shapes"])


def draw(prior, prompt: str, n: int = 4, seed: int = 1):
    """n samples with the sampler the prior recommends (its model_index.json)."""
    return sample_images(prior, [prompt] * n, 50, prior.sample_guidance_scale, seed, eta=prior.sample_eta)


def test_shapes_prior_is_shipped_small_and_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "shapes" in builtin_priors()
    folder = builtin_priors()["shapes"]
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights < 30e6, f"{weights / 1e6:.1f} MB of weights"
    prior = load_prior("shapes", device="cpu")
    assert prior.image_size == 64 and prior.is_latent and "house" in prior.vocabulary
    assert next(prior.unet.parameters()).dtype == torch.float32  # stored in float16, computed in float32


@pytest.mark.parametrize("colour, kind", [("red", "cube"), ("blue", "cone"), ("yellow", "torus"), ("green", "mug")])
def test_shapes_prior_draws_the_right_colour_and_kind(shapes, colour, kind):
    prior, classifier = shapes
    with torch.no_grad():
        out = classifier(draw(prior, f"a {colour} {kind}"))
    right = (out["colour"].argmax(1) == list(COLOURS).index(colour)) & (out["kind"].argmax(1) == KINDS.index(kind))
    assert right.sum() >= 3, (colour, kind, right.tolist())


def test_shapes_prior_draws_the_asked_view(shapes):
    """Houses and mugs asked for each of the four views, with the view phrase guided apart from the object
    (view CFG 15: 0.854 of views right over the benchmark's 96 samples). A prior that ignores the phrase gets
    about a quarter right; these 16 samples get 11 right (seed 1), the bar is 0.6."""
    prior, classifier = shapes
    asked = [(f"a {colour} {kind}, {view} view", view) for kind in ("house", "mug") for view in VIEWS
             for colour in ("red", "blue")]  # fmt: skip
    with torch.no_grad():
        images = sample_images(prior, [p for p, _ in asked], 50, prior.sample_guidance_scale, 1,
                               eta=prior.sample_eta, view_guidance_scale=15.0)  # fmt: skip
        seen = classifier(images)["view"].argmax(1)
    right = seen == torch.tensor([VIEWS.index(v) for _, v in asked])
    assert right.float().mean() >= 0.6, (
        right.float().mean(),
        [(p, VIEWS[i]) for (p, _), i in zip(asked, seen.tolist())],
    )


def test_stochastic_ddim_is_reproducible_from_its_seed(shapes):
    prior, _ = shapes
    a, b, c = (sample_images(prior, ["a red mug"] * 2, steps=5, guidance_scale=1.5, seed=s, eta=1.0) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    deterministic = sample_images(prior, ["a red mug"] * 2, steps=5, guidance_scale=1.5, seed=3, eta=0.0)
    assert not torch.allclose(a, deterministic)  # eta really reaches the scheduler
