#!/usr/bin/env bash
# Fetch into .whl/ the wheels a CUDA machine without network access needs for
# scripts/gpu_check.sh (its image has torch, transformers, peft's needs, pytest
# and hypothesis, but not these). Run on a machine with PyPI access; .whl/ is
# not committed (add it to .git/info/exclude).
#
#   bash scripts/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the device image's
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "gsplat==1.5.3" "diffusers==0.42.1" "peft==0.21.2" "plyfile==1.1.5" "omegaconf==2.4.0" \
  "antlr4-python3-runtime==4.13.2" "importlib_metadata"
ls -la .whl
