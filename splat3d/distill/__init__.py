"""Score distillation: diffusion priors, prompts, and the guidance methods (SDS, VSD, L-VSD, L2-VSD)."""
