#!/usr/bin/env bash
# `dreamvideo benchmark --full` on a lent GPU, one process per seed side by side, in one `device` call (issue 19).
#
# Here, once per session (the wheels are not kept):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 imageio-ffmpeg==0.6.0 opencv-python-headless
# then `run` with carry [".whl"] and a timeout a minute above LIMIT (seconds of benchmarking), e.g.
#   bash benchmarks/gpu/benchmark_full.sh 480
# Each seed runs into its own folder; at LIMIT the runs are stopped (a cell is written only when finished, so
# everything packed is complete). Back in $OUT: cells_seedK.tar.gz and logs.txt. A seed that finished packs every
# cell's cell.json and frames.png, every trained folder's JSON records and the weight-change analysis (no weights,
# no GIFs: nothing here needs them once every cell exists). A seed cut by LIMIT packs its finished cells only: the
# CPU here retrains its folders (deterministic per seed, but not bit-equal to the GPU's) and makes the rest.
# Merge and report here (finished cells and trainings are reused):
#   for f in FILES_AT/cells_seed*.tar.gz; do tar xzf $f -C /work/exp/full; done
#   dreamvideo benchmark --full --out /work/exp/full --threads 2
set -uo pipefail
LIMIT=${1:-480}
SEEDS=${SEEDS:-"0 1 2"} DEVICE=${DEVICE:-cuda}
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for seed in $SEEDS; do
  timeout "$LIMIT" python3 -m dreamvideo.cli benchmark --full --seeds "$seed" --device "$DEVICE" --quiet \
    --out /tmp/bf$seed > /tmp/bf$seed.log 2>&1 &
done
wait
for seed in $SEEDS; do
  echo "== seed $seed"; grep -c "^\[benchmark\] training" /tmp/bf$seed.log; tail -c 400 /tmp/bf$seed.log
  if [ -f /tmp/bf$seed/results.md ]; then what="train analysis videos"; else what="videos"; echo "seed $seed cut by LIMIT"; fi
  (cd /tmp/bf$seed && find $what \( -name '*.json' -o -name frames.png \) 2>/dev/null \
    | tar czf "$OUT/cells_seed$seed.tar.gz" -T -)
done > "$OUT/logs.txt" 2>&1
cat "$OUT/logs.txt"; ls -la "$OUT"
