#!/usr/bin/env bash
# Every GPU test and the GPU neuron benchmark, in one command, in under 10 minutes.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]     # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --prepare         # here, with PyPI: fetch wheels the GPU image lacks
#
# The GPU machine lent through the `device` tool has torch, CuPy and pytest but
# no PyPI and no SpikingJelly: --prepare downloads spikingjelly and its pure-Python
# needs into .whl/ (git-ignored); carry .whl to the machine and this script
# installs them into /tmp/site. Results go to RESULTS_DIR (default: $OUT when
# set, else benchmarks/results): gpu_tests.txt, neuron_speed_gpu.txt, env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    python3 -m pip download --no-deps --only-binary=:all: -d .whl \
        "spikingjelly>=2.0,<3" "loguru>=0.7,<1" SciencePlots
    exit $?
fi

RESULTS=${1:-${OUT:-benchmarks/results}}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}

if ! $PY -c "import spikingjelly" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "SpikingJelly is missing: pip install -e '.[dev,cuda]', or run --prepare and carry .whl" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    $PY -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__); print(torch.cuda.get_device_name())"
} 2>&1 | tee "$RESULTS/env.txt"

status=0
timeout 420 $PY -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$RESULTS/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 150 $PY benchmarks/neuron_speed.py --device cuda --backends torch,cupy --repeats 30 2>&1 \
    | tee "$RESULTS/neuron_speed_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED); results in $RESULTS"
exit $status
