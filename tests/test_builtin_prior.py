"""The shipped shapes prior: loads offline and draws what it is asked for."""

import torch

from splat3d.priors import builtin_priors, load_prior
from splat3d.sample import sample_images
from splat3d.shapes.evaluate import load_classifier
from splat3d.shapes.world import COLOURS, KINDS


def test_shapes_prior_is_shipped_small_and_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "shapes" in builtin_priors()
    folder = builtin_priors()["shapes"]
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights < 30e6, f"{weights / 1e6:.1f} MB of weights"
    prior = load_prior("shapes", device="cpu")
    assert prior.image_size == 32 and not prior.is_latent and "house" in prior.vocabulary


def test_shapes_prior_samples_the_right_colour():
    prior = load_prior("shapes", device="cpu")
    classifier = load_classifier(builtin_priors()["shapes"])
    for colour in ("red", "blue", "yellow"):
        images = sample_images(prior, [f"a {colour} cube"] * 4, steps=25, guidance_scale=1.5, seed=1)
        with torch.no_grad():
            predicted = classifier(images)["colour"].argmax(1)
        assert (predicted == list(COLOURS).index(colour)).sum() >= 3, colour


def test_shapes_prior_recommends_its_guidance_scale_and_draws_the_right_kind_with_it():
    # Stronger CFG collapses this prior's kinds toward cubes (docs/shapes.md), so it says what to use.
    prior = load_prior("shapes", device="cpu")
    assert prior.sample_guidance_scale == 1.5
    classifier = load_classifier(builtin_priors()["shapes"])
    for kind in ("sphere", "torus"):
        images = sample_images(prior, [f"a green {kind}"] * 4, steps=50, guidance_scale=prior.sample_guidance_scale,
                               seed=2)  # fmt: skip
        with torch.no_grad():
            predicted = classifier(images)["kind"].argmax(1)
        assert (predicted == KINDS.index(kind)).sum() >= 3, kind
