#!/usr/bin/env bash
# Issue 18's GPU figures on a lent GPU in one `device` call (~5 minutes): speed and peak memory of DreamVideo's
# stages and of guided generation on the full ModelScope-1.7B UNet with random weights (modelscope_figures.py).
# Carry the wheels as benchmarks/gpu/toy_base_vzero.sh says: `run` with carry [".whl"], then
#   bash benchmarks/gpu/modelscope_figures.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/gpu/modelscope_figures.py --out "$OUT/modelscope_figures.json"
