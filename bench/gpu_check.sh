#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): versions, the gpu tests, syncs per step, throughput and
# one packed epoch of the paper configuration; JSON and markdown in gpu-check/.
#   bash bench/gpu_check.sh          # on the GPU machine
#   bash bench/gpu_check.sh --cpu    # a dry run at toy sizes on a CPU (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
