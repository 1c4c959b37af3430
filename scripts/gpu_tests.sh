#!/usr/bin/env bash
# GPU-marked tests on a device machine (GPU_TEST_PATHS: which test dirs, default all): wheels the image lacks come from .whl/ (carried), the log
# goes to $OUT/gpu_tests.log with the GPU name and versions first.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:.
log=${OUT:-.}/gpu_tests.log
{
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 -c "import torch, triton, transformers, peft, av; print(torch.__version__, triton.__version__, transformers.__version__, peft.__version__, av.__version__)"
    echo "pytest -q -rs -m gpu test --ignore=test/server (the image has no fastapi)"
} >"$log" 2>&1
timeout "${1:-560}" python3 -m pytest -q -rs -m gpu ${GPU_TEST_PATHS:-test} --ignore=test/server \
    --continue-on-collection-errors -p no:cacheprovider >>"$log" 2>&1
echo "exit $?" >>"$log"
tail -5 "$log"
