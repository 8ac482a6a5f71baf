"""Score-distillation methods behind one interface, chosen by name.

    guidance = make_guidance("l2vsd", prior, PromptProcessor(prior, PromptConfig("a red cube")))
    out = guidance(images, cameras, step)   # images [B, 3, H, W] in [0, 1]
    out.loss.backward()                     # the method's gradient reaches the images

A new method is one new file with a ``@register("name")`` class.
"""

from __future__ import annotations

from splat3d.distill.guidance.common import Guidance, GuidanceConfig, GuidanceOutput
from splat3d.errors import Splat3dError

REGISTRY: dict[str, type[Guidance]] = {}


def register(name: str):
    def wrap(cls: type[Guidance]) -> type[Guidance]:
        assert name not in REGISTRY, f"guidance {name!r} is registered twice"
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def make_guidance(name: str, prior, prompt, config: GuidanceConfig | None = None) -> Guidance:
    if name not in REGISTRY:
        raise Splat3dError(f"Unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name](prior, prompt, config)


# Importing the method files registers them.
from splat3d.distill.guidance import l2vsd, lvsd, sds, vsd  # noqa: E402, F401

__all__ = ["REGISTRY", "Guidance", "GuidanceConfig", "GuidanceOutput", "make_guidance", "register"]
