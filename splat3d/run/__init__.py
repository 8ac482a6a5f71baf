"""A text-to-3D run: its configuration, the training loop, the run folder, checkpoints and densification."""
