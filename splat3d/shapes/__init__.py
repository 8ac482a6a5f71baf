"""The built-in "shapes" world and prior: known 3D objects, so distillation can be measured."""

from splat3d.shapes.world import COLOURS, FRONTED, KINDS, ObjectSpec, make_object, parse_prompt, vocabulary

__all__ = ["COLOURS", "FRONTED", "KINDS", "ObjectSpec", "make_object", "parse_prompt", "vocabulary"]
