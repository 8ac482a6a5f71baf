import os
import tempfile

# gsplat must never try to JIT-compile its CUDA extension on a machine without a GPU.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="splat3d-torch-ext-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import random_scene  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gsplat kernels)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a test id that says gpu
            item.add_marker(skip)


@pytest.fixture
def make_scene():
    return random_scene


@pytest.fixture(scope="session")
def tiny_priors(tmp_path_factory):
    """Four tiny random priors in the diffusers layout: pixel/latent x epsilon/v."""
    from splat3d.distill.priors.tiny import make_tiny_prior

    root = tmp_path_factory.mktemp("priors")
    return {
        (kind, pred): make_tiny_prior(root / f"{kind}-{pred}", kind=kind, prediction_type=pred, sample_size=16)
        for kind in ("pixel", "latent")
        for pred in ("epsilon", "v_prediction")
    }
