#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one go, on a machine with one GPU, Python and PyTorch but
# no Ray, no MLflow and no network (the lent benchmark machine):
#   here:   make gpu-wheels      # the few pure-Python / numpy wheels the benchmarks import
#   there:  bash benchmarks/gpu_run.sh [OUT_DIR]    # default: results/gpu
# Installs from .gpu-wheels/ only what is missing, then writes nvidia-smi's report, both
# benchmarks' logs and JSON, and the gpu-marked tests' result to OUT_DIR. The time limits add
# up to 9 minutes, inside one 10-minute command on a lent machine.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:-${OUT:-results/gpu}}"
mkdir -p "$out"
python=${PYTHON:-python3}

missing=$("$python" - <<'PY'
import importlib.util
needed = {"pydantic": "pydantic", "yaml": "pyyaml", "numpy": "numpy",
          "safetensors": "safetensors", "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in needed.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086  # one word per package
  "$python" -m pip install --quiet --no-index --find-links .gpu-wheels $missing ||
    echo "could not install: $missing (is .gpu-wheels/ there?)" >&2
fi

{ nvidia-smi; "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
  >"$out/device.txt" 2>&1
timeout 300 "$python" benchmarks/gpu_train.py --out "$out/gpu_train.json" 2>&1 | tee "$out/gpu_train.log"
timeout 100 "$python" benchmarks/gpu_train.py --models resnet18 --compile \
  --out "$out/gpu_train_compile.json" 2>&1 | tee "$out/gpu_train_compile.log"
timeout 80 "$python" benchmarks/gpu_serve.py --out "$out/gpu_serve.json" 2>&1 | tee "$out/gpu_serve.log"
# --noconftest: the suite's conftest starts Ray and MLflow fixtures this machine cannot run.
timeout 60 "$python" -m pytest -q --noconftest -p no:cacheprovider -m gpu \
  tests/unit/test_gpu_path.py 2>&1 | tee "$out/gpu_tests.log"
