"""Prompt processing: cached text embeddings and view-dependent variants.

Each camera gets "<prompt>, front view", "..., side view", "..., back view" or
"..., overhead view" from its azimuth and elevation (threestudio's scheme,
DreamFusion's idea). Azimuth 0 is the object's front (see splat3d.render.cameras).
Embeddings are computed once per distinct text and cached by the prior.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from splat3d.errors import Splat3dError

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class PromptConfig:
    """How a prompt becomes text conditioning."""

    prompt: str = "a red cube"
    """What to generate."""
    negative_prompt: str = ""
    """What to steer away from; its embedding replaces the empty prompt in CFG."""
    view_dependent: bool = True
    """Append ", front/side/back/overhead view" by camera direction."""
    front_threshold: float = 45.0
    """Azimuths within this many degrees of 0 are 'front'."""
    back_threshold: float = 45.0
    """Azimuths within this many degrees of 180 are 'back'."""
    overhead_threshold: float = 60.0
    """Elevations above this many degrees are 'overhead'."""


def view_names(elevation: Tensor, azimuth: Tensor, config: PromptConfig) -> list[str]:
    """The view word for each camera (degrees in, one of VIEWS out)."""
    az = torch.remainder(azimuth.float() + 180.0, 360.0) - 180.0  # [-180, 180)
    names = []
    for el, a in zip(elevation.float().tolist(), az.abs().tolist()):
        if el > config.overhead_threshold:
            names.append("overhead")
        elif a <= config.front_threshold:
            names.append("front")
        elif a >= 180.0 - config.back_threshold:
            names.append("back")
        else:
            names.append("side")
    return names


def view_prompt(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


def split_view(prompt: str) -> tuple[str, str | None]:
    """The inverse of view_prompt: ("a red house", "front") from "a red house, front view"; (prompt, None)
    for a prompt without a view phrase."""
    for view in VIEWS:
        suffix = view_prompt("", view)
        if prompt.endswith(suffix) and len(prompt) > len(suffix):
            return prompt[: -len(suffix)], view
    return prompt, None


class PromptProcessor:
    """Text embeddings for one prompt, per camera, from a prior's text encoder."""

    def __init__(self, prior, config: PromptConfig):
        if not config.prompt or not config.prompt.strip():
            raise Splat3dError('The prompt is empty; describe what to generate, e.g. "a red cube".')
        self.prior = prior
        self.config = config
        vocabulary = getattr(prior, "vocabulary", None)
        if vocabulary:
            words = re.findall(r"[a-z]+", f"{config.prompt} {config.negative_prompt}".lower())
            unknown = [w for w in dict.fromkeys(words) if w not in vocabulary]
            if unknown:
                warnings.warn(
                    f"The prior {prior.name} does not know {', '.join(repr(w) for w in unknown)}; "
                    f"its vocabulary is: {', '.join(vocabulary)}.",
                    stacklevel=2,
                )
        texts = [config.prompt, config.negative_prompt]
        if config.view_dependent:
            texts += [view_prompt(config.prompt, v) for v in VIEWS]
        prior.encode_text(texts)  # fill the cache once

    def views(self, elevation: Tensor, azimuth: Tensor) -> list[str]:
        """The view word of each camera, per this prompt's thresholds."""
        return view_names(elevation, azimuth, self.config)

    def texts(self, elevation: Tensor, azimuth: Tensor) -> list[str]:
        if not self.config.view_dependent:
            return [self.config.prompt] * len(elevation)
        return [view_prompt(self.config.prompt, v) for v in self.views(elevation, azimuth)]

    def conditional(self, elevation: Tensor, azimuth: Tensor) -> Tensor:
        """View-dependent text embeddings [B, L, D]."""
        return self.prior.encode_text(self.texts(elevation, azimuth))

    def view(self, view: str, batch: int) -> Tensor:
        """One view's phrasing of the prompt, [B, L, D] (Perp-Neg's negative)."""
        return self.prior.encode_text([view_prompt(self.config.prompt, view)] * batch)

    def plain(self, batch: int) -> Tensor:
        """The prompt without a view suffix, [B, L, D] (the LoRA branch's text)."""
        return self.prior.encode_text([self.config.prompt] * batch)

    def unconditional(self, batch: int) -> Tensor:
        """The negative (or empty) prompt, [B, L, D]."""
        return self.prior.encode_text([self.config.negative_prompt] * batch)
