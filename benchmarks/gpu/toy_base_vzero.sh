#!/usr/bin/env bash
# The toy base's long UNet run on a lent GPU (one H200: ~6 steps/s at batch 64), in one `device` call.
#
# Here, once per session (the wheels are not kept):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 imageio-ffmpeg==0.6.0
# then `run` with carry [".whl"], e.g.
#   bash benchmarks/gpu/toy_base_vzero.sh 420          # seconds of training; leaves time to measure and copy back
# It continues the CPU candidate (docs/toy_model/recipe/vzero_shift_800: v-prediction, zero terminal SNR, trailing
# steps, log-SNR shift -1; docs/toy_model/recipe.md) with the same recipe at batch 64; EXTRA adds flags (e.g.
# EXTRA="--text-encoder-lr 2e-4"). It writes to $OUT: the model's unet/, scheduler/ (and text_encoder/ when it was
# trained), train_log.json, loss_curve.png, samples.png, the quality bar (64 held-out prompts) and the run's last
# checkpoint (to continue on the CPU with --resume). Check the weights on the CPU afterwards with
#   python -m dreamvideo.toy.quality --base FOLDER --out DIR
set -euo pipefail
LIMIT=${1:-420}
INIT=${INIT:-docs/toy_model/recipe/vzero_shift_800}
EXTRA=${EXTRA:-}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RUN=/tmp/toy_vzero
FLAGS="--out $RUN --init-from $INIT --device cuda --workers 12 --unet-steps 6000 --unet-batch 64 --unet-lr 2e-4
  --warmup 50 --checkpoint-every 500 --prediction-type v_prediction --zero-snr --timestep-spacing trailing
  --snr-shift -1.0 $EXTRA"
python3 -m dreamvideo.toy.pretrain $FLAGS --time-limit "$LIMIT" --preview-steps 25 || true
[ -d "$RUN/model/unet" ] || python3 -m dreamvideo.toy.pretrain $FLAGS --resume --export-only --preview-steps 0
python3 -m dreamvideo.toy.quality --base "$RUN/model" --device cuda --out "$OUT" || true
for part in unet scheduler text_encoder; do mkdir -p "$OUT/$part"; cp "$RUN/model/$part/"* "$OUT/$part/"; done
for f in train_log.json loss_curve.png samples.png; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done
mkdir -p "$OUT/checkpoints" && cp -r "$RUN/checkpoints/unet" "$OUT/checkpoints/"
python3 -c "import json; d=json.load(open('$RUN/checkpoints/unet/state.json')); print('unet step', d['step'], 'seconds', round(d['seconds']))"
