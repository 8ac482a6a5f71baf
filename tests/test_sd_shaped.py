"""The Stable-Diffusion-2.1-base-shaped random prior of the benchmarks (benchmarks/sd_shaped.py)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sd_shaped import PARAMETERS, build_modules, parameter_counts, save_sd_shaped_prior  # noqa: E402

from splat3d.distill.priors import load_prior  # noqa: E402


def test_the_configs_build_sd21_base_with_its_parameter_counts():
    counts = parameter_counts(build_modules("meta"))  # shapes only: no memory, no time
    assert counts == PARAMETERS
    assert 865e6 < counts["unet"] < 866e6


def test_a_reduced_width_copy_saves_and_loads_like_stable_diffusion(tmp_path):
    folder = save_sd_shaped_prior(tmp_path / "sd", reduced=True)
    prior = load_prior(folder, device="cpu")
    assert prior.is_latent and prior.vae_scale == 8 and prior.image_size == 512
    assert prior.unet.config.sample_size == 64 and len(prior.unet.config.block_out_channels) == 4
    assert prior.tokenizer.model_max_length == 77
    assert prior.encode_text(["a corgi"]).shape[:2] == (1, 77)
    assert prior.prediction_type == "epsilon"


def test_sd_scale_measures_each_method_at_512_px():
    import sd_scale

    rows = [sd_scale.run_method(label, 1, torch.device("cpu"), warmup=0, steps=1, reduced=True)
            for label in ("vsd", "l2vsd (exact)")]  # fmt: skip
    for row in rows:
        assert row["finite"] and row["seconds"] > 0 and row["peak_rss_mb"] > 0


@pytest.mark.gpu
def test_full_size_l2vsd_step_fits_a_24_gb_card():
    import sd_scale

    row = sd_scale.run_method("l2vsd (exact)", 1, torch.device("cuda"), warmup=1, steps=2)
    assert row["finite"], row
    assert row["peak_cuda_allocated_mb"] < 24 * 1024, row
