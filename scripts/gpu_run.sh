#!/usr/bin/env bash
# Issue 23's GPU run: every step in one device call of at most 9 minutes, offline. After
# `bash scripts/gpu_prepare.sh` here, the device tool's call (BENCHMARKS.md, "How to run it when a GPU is lent"):
#     command "bash scripts/gpu_run.sh", carry [".gpu-wheels", ".rvm-cache"], timeout_s 540
# Installs nothing into the system: carried wheels the machine lacks go to a --target folder, rvm_live runs from
# the source tree, the asset cache is a scratch copy of .rvm-cache (RVM_LIVE_OFFLINE=1). Each step has its own
# time limit (they sum to 495 s, each with 2 s to stop after it); its log and JSON go to $WORK, and after every
# step $OUT holds steps.txt, results.json (every step's JSON, each of issue 23's targets judged) and logs.tar.gz:
# 3 of the 8 files that come back, so a timeout or a failing step keeps everything measured before it.
#   GPU_RUN_SIMULATE=1  the same steps on the CPU at tiny sizes, to check the recipe without a GPU, e.g. in a
#                       Python that has only the GPU machine's packages (scripts/gpu_sim_env.py):
#                       PIP_NO_INDEX=1 GPU_RUN_SIMULATE=1 GPU_PYTHON=.gpu-sim/bin/python bash scripts/gpu_run.sh
#                       Its limits are GPU_RUN_LIMIT_SCALE (default 4) times the GPU's: this machine is slower.
#   GPU_RUN_CACHE=DIR   use this asset cache as it is, not a copy of .rvm-cache (a test's simulation: the suite's)
#   GPU_RUN_STEPS=a,b   run only these steps (and preflight, wheels), e.g. a rerun of the failed ones; the live
#                       and batch steps read what the clips step writes
#   GPU_RUN_LIST=1      print each step as a JSON list (name, limit, argv...) instead of running it (tests)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=gpu_recipe.env
source scripts/gpu_recipe.env
PY=${GPU_PYTHON:-python3}
SIM=${GPU_RUN_SIMULATE:-0}
LIST=${GPU_RUN_LIST:-0}
OUT=${OUT:-$ROOT/out/gpu}
if [ "$LIST" = 1 ]; then
    WORK=${GPU_RUN_WORK:-/tmp/rvm-gpu-run}
else
    WORK=${GPU_RUN_WORK:-$(mktemp -d /tmp/rvm-gpu-run.XXXXXX)}
fi
SITE=$WORK/site
if [ "$SIM" = 1 ]; then
    DEVICE=cpu CHECK="--device cpu --tiny" LIVE="160x90 320x180" BATCH_CLIP=160x90 CLIP_FRAMES=30
    STREAMS="--streams 1,2 --width 160 --height 90 --seconds 2" QUALITY_SIZES=160x90 SEGMENT=0.5
    SCALE=${GPU_RUN_LIMIT_SCALE:-4}
else
    DEVICE=cuda CHECK="" LIVE="1280x720 1920x1080" BATCH_CLIP=1280x720 CLIP_FRAMES=240
    STREAMS="--streams 1,4,16 --width 1280 --height 720 --seconds 8" QUALITY_SIZES=360p,720p SEGMENT=4
    SCALE=1
fi
[ "$LIST" = 1 ] || mkdir -p "$OUT" "$WORK"
# pip sees the carried wheels alone: no index, no configured find-links or constraints (as on the GPU machine)
unset PIP_FIND_LINKS PIP_CONSTRAINT
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT:$SITE \
    RVM_LIVE_CACHE=${GPU_RUN_CACHE:-$WORK/cache} RVM_LIVE_OFFLINE=1

pack() {  # what comes back: the step log, every JSON in one with the targets judged, the logs
    cp "$WORK/steps.txt" "$OUT/steps.txt"
    "$PY" -m rvm_live.tools.gpu_check summary "$WORK" --out "$OUT/results.json" >"$WORK/summary.log" 2>&1
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude=./site --exclude=./cache --exclude=./clips --exclude=./batch .
}

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $WORK/NAME.log, note the exit status
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    case "$name" in preflight | wheels) ;; *) [[ ",${GPU_RUN_STEPS:-$name}," == *",$name,"* ]] || return 0 ;; esac
    if [ "$LIST" = 1 ]; then
        python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$name" "$limit" "$@"
        return
    fi
    local start=$SECONDS
    timeout -k 2 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc limit=${limit}s took=$((SECONDS - start))s" | tee -a "$WORK/steps.txt"
    pack
}

[ "$LIST" = 1 ] || [ -n "${GPU_RUN_CACHE:-}" ] || { rm -rf "$WORK/cache" && cp -r .rvm-cache "$WORK/cache"; }
# 25 s: the machine as found (Python, torch, CUDA, the card, which modules import; torch's first import on a fresh
# machine is the slow one) and nvidia-smi
step preflight 20 "$PY" -m rvm_live.tools.gpu_check preflight --out "$WORK/preflight.json"
step nvidia_smi 5 nvidia-smi
# 30 s: the carried wheels of what does not import here, offline (twins: the simulation's Python)
# shellcheck disable=SC2086  # GPU_WHEELS is a list of names
missing=$("$PY" -c 'import importlib.util as u, sys; print(" ".join(n for n in sys.argv[1:] if not u.find_spec(n)))' \
    $GPU_WHEELS)
[ "$LIST" = 1 ] && missing=$GPU_WHEELS
links=(--find-links .gpu-wheels)
[ -d .gpu-sim/twins ] && links+=(--find-links .gpu-sim/twins)
[ -n "$missing" ] && step wheels 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "${links[@]}" $missing
# 75 s: the GPU-marked tests (only their files: others may import what is not carried, e.g. ray)
step pytest_gpu 75 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$WORK/pytest_gpu.xml" \
    $(grep -rl --include='*.py' '@pytest\.mark\.gpu' tests | sort)
# 125 s: model-only fps (MobileNetV3 fp16 1080p and 4K, ResNet50 fp16 1080p random weights), the 720p roundtrip,
# fp16 vs fp32 |d alpha| on the demo clip at 720p, the graph/chunk interplay
step gpu_check 125 "$PY" -m rvm_live.tools.gpu_check check $CHECK --out "$WORK/gpu_check.json"
# 30 s: the live sources, CLIP_FRAMES frames at 30 fps (8 s)
sizes=()
for size in $LIVE; do sizes+=(--size "$size"); done
step clips 30 "$PY" -m rvm_live.tools.gpu_check clips "$WORK/clips" "${sizes[@]}" --frames "$CLIP_FRAMES"
# 2 x 25 s: the daemon on each clip played live (--realtime): every frame out? capture->output p50/p95. The torch
# engine is what auto picks on CUDA; named, so that the CPU simulation runs it too (not the ONNX export's)
for size in $LIVE; do
    step "live_$size" 25 "$PY" -m rvm_live --source "$WORK/clips/clip_$size.mp4" --realtime --device "$DEVICE" \
        --engine torch --output null --quiet --stats-json "$WORK/live_$size.json"
done
# 75 s: N live 720p30 streams in one daemon (one engine, streams batched): total fps, worst p95
step streams 75 "$PY" -m rvm_live bench $STREAMS --fps 30 --no-separate --device "$DEVICE" --engine torch \
    --json "$WORK/streams.json"
# 45 s: the quality benchmark's fp16 and fp32 rows on the GPU (exact ground truth: MAD, MSE, Grad, dtSSD)
step quality 45 "$PY" -m rvm_live bench --quality --sizes "$QUALITY_SIZES" --frames "$QUALITY_FRAMES" \
    --clips "$QUALITY_CLIPS" --engines cuda-fp32,cuda-fp16 --gpu "$DEVICE" --json "$WORK/quality_cuda.json"
# 40 s: a short batch job (the local pool: one worker on the GPU), the clip in segments joined losslessly
step batch 40 "$PY" -m rvm_live batch "$WORK/clips/clip_$BATCH_CLIP.mp4" -o "$WORK/batch" --device "$DEVICE" \
    --segment "$SEGMENT" --quiet --summary "$WORK/batch.json"
[ "$LIST" = 1 ] || echo "gpu_run: done; $OUT: $(ls "$OUT" | tr '\n' ' ')"
