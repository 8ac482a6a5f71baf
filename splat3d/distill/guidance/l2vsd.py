"""L2-VSD (linearized lookahead VSD, ICCV 2025): the project's default.

The lookahead eps_{phi_{i+1}} is replaced by its first-order expansion
around phi_i in the direction of one plain gradient step on the LoRA loss:

    g       = grad_phi L_lora(phi_i)            (one backward pass, needed anyway)
    eps_lin = eps_phi(x_t) + J_phi eps_phi(x_t) · (-eta g)
    grad    = w(t) (eps_pretrained - eps_lin)

Forward-mode AD gives eps_phi and the Jacobian-vector product in one pass;
the LoRA's optimiser step then reuses g, so there is no second backward.
The linear term can be "exact", "last_layer" (tangent on the last LoRA
layer only) or "finite_difference" (one extra ordinary forward).
"""

from torch import Tensor

from splat3d.distill.guidance.base import GuidanceOutput, register
from splat3d.distill.guidance.lora import LoRAGuidance


def last_layer(direction: dict[str, Tensor]) -> dict[str, Tensor]:
    """The part of a LoRA direction on the last attention layer that carries a LoRA."""
    lora = [n for n in direction if "lora_" in n]
    last_attention = lora[-1].split(".to_")[0]
    return {n: d for n, d in direction.items() if n.startswith(last_attention + ".")}


@register("l2vsd")
class L2VSD(LoRAGuidance):
    def __call__(self, images, cameras, step: int) -> GuidanceOutput:
        inputs = self.prepare(images, cameras, step)
        score, cfg = self.score, self.config
        lora_loss = score.compute_gradient(inputs.z, inputs.draw, inputs.text, inputs.camera)
        direction = {n: -cfg.lookahead_scale * p.grad for n, p in score.params.items() if p.grad is not None}
        args = (inputs.x_t, inputs.draw.t, inputs.text, inputs.camera)
        if cfg.linear_term == "finite_difference":
            eps_phi, linear = score.eps_and_finite_difference(*args, direction, cfg.finite_difference_step)
        else:
            if cfg.linear_term == "last_layer":
                direction = last_layer(direction)
            eps_phi, linear = score.eps_and_jvp(*args, direction)
        score.apply_gradient()
        return self.output(inputs, eps_phi + linear, lora_loss=lora_loss, linear_term_norm=linear.norm().item())
