#!/usr/bin/env bash
# One prepared check for a CUDA machine (the project's dev machines have no GPU).
#
#   bash scripts/gpu_check.sh            # results in $OUT (or ./gpu_check_out)
#
# 1. installs what is missing: a gsplat wheel carried in .whl/ (else gsplat from
#    PyPI, which JIT-compiles its kernels on first use), then splat3d itself
#    without touching the machine's CUDA torch;
# 2. runs the tests marked `gpu`;
# 3. checks gsplat's CUDA rasterizer against splat3d's torch backend (forward
#    and gradients) and times both;
# 4. runs a 200-step generate with a tiny random prior on the GPU;
# and prints a short table of results and timings (also written to $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$OUT/torch_extensions}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())
PY

if ! python -c "import gsplat" 2>/dev/null; then
  if ls .whl/gsplat-*.whl >/dev/null 2>&1; then
    python -m pip install -q .whl/gsplat-*.whl
  else
    python -m pip install -q "gsplat>=1.5.3,<1.6"
  fi
fi
# splat3d without re-resolving torch (the CUDA image's torch stays).
python -m pip install -q --no-deps -e .
for pkg in plyfile omegaconf imageio imageio-ffmpeg pytest hypothesis typer rich diffusers peft transformers safetensors; do
  python -c "import importlib, sys; importlib.import_module(sys.argv[1].replace('-', '_'))" "$pkg" 2>/dev/null \
    || python -m pip install -q "$pkg"
done

python -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
python scripts/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.txt"
check_rc=${PIPESTATUS[0]}
echo "gpu tests exit $tests_rc, checks exit $check_rc"
exit $(( tests_rc || check_rc ))
