"""SDS (DreamFusion): grad = w(t) (eps_pretrained - eps), with a large CFG scale."""

from splat3d.distill.guidance.base import Guidance, GuidanceOutput, register


@register("sds")
class SDS(Guidance):
    def __call__(self, images, cameras, step: int) -> GuidanceOutput:
        inputs = self.prepare(images, cameras, step)
        return self.output(inputs, inputs.draw.noise)
