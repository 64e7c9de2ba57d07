#!/usr/bin/env bash
# The prepared GPU check on a bare CUDA machine (benchmarks/gpu_check.py says what it checks).
# Its python3 must hold a CUDA build of torch; what the image lacks travels as wheels in .whl/
# (`make gpu-wheels` here), installed to /tmp/site. Results go to $OUT (else runs/gpu-check).
#   bash benchmarks/gpu_check.sh [--budget SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: could not install the wheels in .whl/" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/nvidia-smi.txt"
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
