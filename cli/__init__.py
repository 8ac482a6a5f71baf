"""The splat3d command line (installed as the ``splat3d_cli`` package)."""
