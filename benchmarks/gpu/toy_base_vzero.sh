#!/usr/bin/env bash
# The toy base's UNet runs on a lent GPU (one H200: ~6 steps/s at batch 64 for one run), in one `device` call.
#
# Here, once per session (the wheels are not kept):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 imageio-ffmpeg==0.6.0
# then `run` with carry [".whl"], e.g. (seconds of training; leave ~4 minutes to measure and copy back)
#   bash benchmarks/gpu/toy_base_vzero.sh 420
# Two arms train side by side from a CPU candidate (INIT: v-prediction, zero terminal SNR, trailing steps, log-SNR
# shift -1, the loss weighted 5x on the sprite, the sprite's path centred in the frame, and a text encoder that adds
# one fixed direction per motion word to the caption's states, `--text-offset 1`; docs/toy_model/recipe.md), each at
# batch 64 with 7 rendering workers and that text encoder frozen: `cont`, the recipe continued, and `cont_bias`, the
# same with t >= 900 drawn 5x as often. Each is measured there with the quality bar (64 held-out prompts) and the
# word-use probe (on centred clips, as trained).
# Back in $OUT (at most 8 files come back): ARM_unet.safetensors, ARM_text_encoder.safetensors,
# ARM_report.json (training, quality, word use), ARM_samples.png. Rebuild a model folder here with
#   python benchmarks/gpu/unpack_arm.py FILES_AT ARM docs/toy_model/recipe/ARM
set -euo pipefail
LIMIT=${1:-420}
INIT=${INIT:-toy}  # the shipped base (off_1200)
DEVICE=${DEVICE:-cuda} WORKERS=${WORKERS:-7} BATCH=${BATCH:-64} N=${N:-64}  # a CPU dry run: DEVICE=cpu WORKERS=0 ...
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
RECIPE="--foreground-weight 5 --anchor-jitter 2"
BIAS="--timestep-bias-portion 0.1 --timestep-bias-multiplier 5"
declare -A ARMS=([cont]="$RECIPE --text-encoder-lr 0" [cont_bias]="$RECIPE --text-encoder-lr 0 $BIAS")
flags() {
  echo "--out /tmp/arm_$1 --init-from $INIT --device $DEVICE --workers $WORKERS --unet-steps 6000 --unet-batch $BATCH
    --unet-lr 2e-4 --warmup 50 --checkpoint-every 500 --prediction-type v_prediction --zero-snr
    --timestep-spacing trailing --snr-shift -1.0 --preview-steps 0 ${ARMS[$1]}"
}
for arm in "${!ARMS[@]}"; do
  python3 -m dreamvideo.toy.pretrain $(flags $arm) --time-limit "$LIMIT" > /tmp/arm_$arm.log 2>&1 &
done
wait || true
for arm in "${!ARMS[@]}"; do
  tail -c 300 /tmp/arm_$arm.log
  [ -d /tmp/arm_$arm/model/unet ] || python3 -m dreamvideo.toy.pretrain $(flags $arm) --resume --export-only > /dev/null || continue
  python3 -m dreamvideo.toy.quality --base /tmp/arm_$arm/model --device $DEVICE --n $N --out /tmp/q_$arm > /dev/null 2>&1 || true
  python3 benchmarks/toy_temporal_probe.py --unet /tmp/arm_$arm/model --words --anchor-jitter 2 --out /tmp/w_$arm.json > /dev/null 2>&1 || true
  python3 benchmarks/gpu/pack_arm.py "$arm" "$OUT"
done
