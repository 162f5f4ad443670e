#!/usr/bin/env bash
# The toy base's long UNet run on a lent GPU (one H200: ~6 steps/s at batch 64), in one `device` call.
#
# Here, once per session (the wheels are not kept):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 imageio-ffmpeg==0.6.0
# then `run` with carry [".whl"] (and the warm-start model folder if it is not the shipped one), e.g.
#   bash benchmarks/gpu/toy_base_vzero.sh 360          # seconds of training; leaves time to copy back
# It continues the shipped toy UNet with the v-prediction / zero-terminal-SNR recipe (docs/toy_model/recipe.md)
# and writes to $OUT: the EMA UNet, the scheduler config, train_log.json, loss_curve.png, samples.png, and the
# quality bar measured there (64 held-out prompts). Check the weights on the CPU afterwards with
#   python -m dreamvideo.toy.quality --base FOLDER --out DIR
set -euo pipefail
LIMIT=${1:-360}
INIT=${INIT:-toy}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
RUN=/tmp/toy_vzero
python3 -m dreamvideo.toy.pretrain --out "$RUN" --init-from "$INIT" --device cuda --workers 12 \
    --unet-steps 6000 --unet-batch 64 --unet-lr 2e-4 --warmup 50 --checkpoint-every 500 \
    --prediction-type v_prediction --zero-snr --timestep-spacing trailing --time-limit "$LIMIT" \
    --preview-steps 25 || true
# a stopped run has checkpoints only: export its EMA weights as a model folder
python3 - "$RUN" <<'PY'
import shutil, sys
from pathlib import Path
from dreamvideo.fileio import load_safetensors
from dreamvideo.toy.model import TOY_MODEL_DIR, toy_scheduler, toy_unet
run = Path(sys.argv[1]); model = run / "model"
if not (model / "unet").is_dir():
    weights, _ = load_safetensors(run / "checkpoints" / "unet" / "weights.safetensors")
    unet = toy_unet(); unet.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("ema.")})
    shutil.copytree(TOY_MODEL_DIR, model, dirs_exist_ok=True); shutil.rmtree(model / "unet"); unet.save_pretrained(model / "unet")
    shutil.rmtree(model / "scheduler"); toy_scheduler("v_prediction", True, "trailing").save_pretrained(model / "scheduler")
print("model:", model)
PY
python3 -m dreamvideo.toy.quality --base "$RUN/model" --device cuda --out "$OUT" || true
mkdir -p "$OUT/unet" "$OUT/scheduler"
cp "$RUN/model/unet/"* "$OUT/unet/"; cp "$RUN/model/scheduler/"* "$OUT/scheduler/"
for f in train_log.json loss_curve.png samples.png; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done
cat "$RUN/checkpoints/unet/state.json" | python3 -c "import json,sys; d=json.load(sys.stdin); print('unet step', d['step'], 'seconds', round(d['seconds']))"
