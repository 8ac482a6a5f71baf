#!/usr/bin/env bash
# One prepared check for a CUDA machine (the project's dev machines have no GPU).
#
#   bash scripts/gpu_check.sh            # results in $OUT (or ./gpu_check_out)
#
# 1. installs what is missing, offline where it must: every wheel carried in
#    .whl/ (gsplat, diffusers, ...; `bash scripts/gpu_wheels.sh` fetches them),
#    else from PyPI; then splat3d itself without touching the machine's torch;
# 2. compiles gsplat's CUDA kernels in the background (gsplat JIT-compiles on
#    first use) while the GPU measures Stable Diffusion's cost:
# 3. benchmarks/sd_scale.py: sds / vsd / l2vsd (exact, finite difference) per
#    step at 512 px with an SD-2.1-base-shaped random prior, batch 1 and 4;
# 4. scripts/gpu_check.py: a shortened gpu-preset L2-VSD generate with that
#    prior (s/step, peak memory, projected minutes per asset), gsplat's CUDA
#    rasterizer against splat3d's torch backend, a 200-step tiny generate;
# 5. the tests marked `gpu`.
# Each stage has its own time limit and writes its results to $OUT as it goes;
# the summary prints last. Fits in about 8 minutes on one H100-class GPU.
# STAGES=scale,check,tests (the default) picks stages, e.g. to rerun one;
# SCALE_ARGS and CHECK_ARGS pass options to sd_scale.py and gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/splat3d_torch_extensions}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
STAGES=${STAGES:-scale,check,tests}
has() { [[ ",$STAGES," == *",$1,"* ]]; }
scale_rc=0 check_rc=0 tests_rc=0
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start )) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt" || exit 1

stamp "installing"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/splat3d_site .whl/*.whl \
    && export PYTHONPATH=/tmp/splat3d_site:${PYTHONPATH:-} || exit 1
else
  for pkg in gsplat plyfile omegaconf imageio imageio-ffmpeg pytest hypothesis typer rich diffusers peft transformers safetensors; do
    $PY -c "import importlib, sys; importlib.import_module(sys.argv[1].replace('-', '_'))" "$pkg" 2>/dev/null \
      || $PY -m pip install -q "$pkg"
  done
fi
# splat3d without re-resolving torch (the CUDA image's torch stays), and without a network.
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || {
  echo "pip could not install splat3d; using the source tree"
  mkdir -p /tmp/splat3d_src && ln -sfn "$PWD/splat3d" /tmp/splat3d_src/splat3d \
    && ln -sfn "$PWD/cli" /tmp/splat3d_src/splat3d_cli && ln -sfn "$PWD/configs" /tmp/splat3d_src/splat3d_configs
  export PYTHONPATH=/tmp/splat3d_src:${PYTHONPATH:-}
}
$PY -c "import splat3d, gsplat, diffusers, peft; print('splat3d', splat3d.__version__, 'gsplat', gsplat.__version__, \
'diffusers', diffusers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt" || exit 1

stamp "compiling gsplat in the background"
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
(TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) timeout 300 $PY -c "from gsplat.cuda._backend import _C; assert _C is not None" \
  >/tmp/gsplat_build.log 2>&1; echo $? >/tmp/gsplat_build.rc) &
build_pid=$!

if has scale; then
  stamp "sd_scale"
  timeout 200 $PY benchmarks/sd_scale.py --out "$OUT/sd_scale_cuda.json" --no-doc ${SCALE_ARGS:-} 2>&1 | tee "$OUT/sd_scale.txt"
  scale_rc=${PIPESTATUS[0]}
fi

stamp "waiting for gsplat"
wait $build_pid
if [ "$(cat /tmp/gsplat_build.rc)" = 0 ]; then backend=gsplat; else
  backend=torch; echo "gsplat did not compile; the generate check uses the torch rasterizer:"; tail -5 /tmp/gsplat_build.log
fi
stamp "gsplat: $backend"

if has check; then
  stamp "gpu_check.py"
  timeout 200 $PY scripts/gpu_check.py --out "$OUT" --backend $backend ${CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_check.txt"
  check_rc=${PIPESTATUS[0]}
fi

if has tests; then
  stamp "gpu tests"
  timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_render.py tests/test_guidance.py \
    tests/test_generate.py tests/test_sd_shaped.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
  tests_rc=${PIPESTATUS[0]}
fi

stamp "done"
[ -f "$OUT/sd_scale.txt" ] && grep -E "^\| |^Forward|^Projected" "$OUT/sd_scale.txt" | tail -20
[ -f "$OUT/gpu_check.txt" ] && tail -12 "$OUT/gpu_check.txt"
echo "sd_scale exit $scale_rc, gpu_check exit $check_rc, gpu tests exit $tests_rc"
exit $(( scale_rc || check_rc || tests_rc ))
