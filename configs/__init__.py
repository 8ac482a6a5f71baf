"""YAML presets, installed as the ``splat3d_configs`` package so they ship with splat3d."""
