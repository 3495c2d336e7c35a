#!/usr/bin/env bash
# GPU training throughput table (issue 5): fp32, bf16, + channels_last, + torch.compile, and the loader.
# Under 8 minutes on one GPU; no DVC or MLflow. Usage: bash benchmarks/train_gpu.sh [extra args]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout 470 "$PYTHON" -m benchmarks.train_gpu "$@"
