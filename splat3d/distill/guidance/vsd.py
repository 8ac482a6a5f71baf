"""VSD (ProlificDreamer): grad = w(t) (eps_pretrained - eps_phi).

eps_phi is the LoRA score model of the current renders, evaluated with the
LoRA as it was *before* this step's update; the LoRA is then fit to this
step's (detached) renders. The paper calls that order the mismatch.
"""

from splat3d.distill.guidance.base import GuidanceOutput, register
from splat3d.distill.guidance.lora import LoRAGuidance


@register("vsd")
class VSD(LoRAGuidance):
    def __call__(self, images, cameras, step: int) -> GuidanceOutput:
        inputs = self.prepare(images, cameras, step)
        eps_phi = self.score.eps(inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
        lora_loss = self.score.train_step(inputs.z, inputs.draw, inputs.text, inputs.camera)
        return self.output(inputs, eps_phi, lora_loss=lora_loss)
