#!/usr/bin/env bash
# Install splat3d and its dev tools into the current Python.
#
# On a machine without CUDA, torch is installed first as the CPU build, so pip
# never pulls a multi-GB CUDA build to satisfy the "torch>=2.1" floor. Override
# the torch requirement with SPLAT3D_TORCH (e.g. SPLAT3D_TORCH="torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "${SPLAT3D_TORCH:-torch>=2.1}"
  else
    # torch 2.13.0's CPU wheel is the one this project's machines carry on disk.
    "$PY" -m pip install "${SPLAT3D_TORCH:-torch==2.13.0}"
  fi
fi
"$PY" -m pip install -q -e ".[dev,cluster,spz]"
# The Khronos glTF validator for the .glb export test, where Node is installed (the test needs it then).
if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix .cache/gltf-validator gltf-validator@2.0.0-dev.3.10 >/dev/null 2>&1 \
    || echo "warning: could not install gltf-validator with npm; the .glb validation test will fail"
fi
"$PY" -c "import torch, gsplat, splat3d; print(f'splat3d {splat3d.__version__}: torch {torch.__version__}, gsplat {gsplat.__version__}, CUDA {torch.cuda.is_available()}')"
