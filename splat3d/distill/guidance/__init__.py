"""Score-distillation methods behind one interface, chosen by name.

    guidance = make_guidance("l2vsd", prior, PromptProcessor(prior, PromptConfig("a red cube")))
    out = guidance(images, cameras, step)   # images [B, 3, H, W] in [0, 1]
    out.loss.backward()                     # the method's gradient reaches the images

A new method is one new file with a ``@register("name")`` class, imported below.
base.py holds what all methods share, lora.py the VSD family's score model.
"""

from splat3d.distill.guidance import l2vsd, lvsd, sds, vsd  # noqa: F401 - importing registers them
from splat3d.distill.guidance.base import REGISTRY, Guidance, GuidanceConfig, GuidanceOutput, make_guidance, register

__all__ = ["REGISTRY", "Guidance", "GuidanceConfig", "GuidanceOutput", "make_guidance", "register"]
