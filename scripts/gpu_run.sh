#!/usr/bin/env bash
# Everything the GPU issues measure, in one device call of at most ~9 minutes, offline:
#   device tool: carry [".gpu-wheels", ".rvm-cache"] (made by scripts/gpu_prepare.sh), command:
#       bash scripts/gpu_run.sh
# Installs nothing into the system: the carried wheels go to a --target folder, rvm_live runs from the source
# tree (no build step, so no build isolation and no network). Every step writes its JSON/log under $OUT
# as it finishes, so a timeout or a failing step keeps what was measured before it.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu}
SITE=${GPU_SITE:-/tmp/rvm-gpu-site}
mkdir -p "$OUT"
export PIP_NO_INDEX=1 PYTHONPATH=$PWD:$SITE RVM_LIVE_CACHE=$PWD/.rvm-cache RVM_LIVE_OFFLINE=1
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, note the exit status
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${limit}s-limit took=$((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}
step pip 30 python3 -m pip install --no-deps --target "$SITE" --find-links .gpu-wheels \
    av pyvirtualcam platformdirs pytest pluggy iniconfig packaging pygments
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step pytest_gpu 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests
step gpu_check 210 python3 -m rvm_live.tools.gpu_check --skip-tests --out "$OUT/gpu_check.json"
# the daemon itself on CUDA: a file played as a live source (realtime: the capture-to-sink latency a camera
# would see) and as fast as it goes (file throughput), at 720p and 1080p; 240 frames = 8 s at 30 fps
step clips 60 python3 -c "from pathlib import Path; from rvm_live.tools.bench import bench_frames, encode_clip
for w, h in ((1280, 720), (1920, 1080)): encode_clip(bench_frames(w, h, 240), Path(f'/tmp/rvm-gpu-{w}x{h}.mp4'))"
for size in 1280x720 1920x1080; do
    clip=/tmp/rvm-gpu-$size.mp4
    step "live_$size" 30 python3 -m rvm_live --source "$clip" --realtime --device cuda --output null \
        --stats-json "$OUT/live_$size.json"
    step "file_$size" 30 python3 -m rvm_live --source "$clip" --device cuda --output null \
        --stats-json "$OUT/file_$size.json"
done
echo "done (limits sum to 520 s): $(ls "$OUT" | tr '\n' ' ')"
