"""L-VSD (naive lookahead): VSD with the order flipped.

The LoRA first takes its optimiser step on this step's renders, then
eps_phi is evaluated with the updated LoRA. Sharper but prone to overfitting
the single particle; kept for ablation.
"""

from splat3d.distill.guidance.base import GuidanceOutput, register
from splat3d.distill.guidance.lora import LoRAGuidance


@register("lvsd")
class LVSD(LoRAGuidance):
    def __call__(self, images, cameras, step: int) -> GuidanceOutput:
        inputs = self.prepare(images, cameras, step)
        lora_loss = self.score.train_step(inputs.z, inputs.draw, inputs.text, inputs.camera)
        eps_phi = self.score.eps(inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
        return self.output(inputs, eps_phi, lora_loss=lora_loss)
