"""`splat3d batch`: many prompts, each a normal run folder, here or on a Ray cluster."""
