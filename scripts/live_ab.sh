#!/usr/bin/env bash
# The live benchmark, interleaved: the code at commit BEFORE against this tree, same cases, ROUNDS rounds
# (speeds on a shared machine are only comparable within one run). Prints one JSON line per run.
# Trees: "before" (BEFORE, its defaults), "now" (this tree, cold: no remembered rung) and "now-mem" (this tree
# with the governor's memory kept across its runs: from its second run on it starts at the settled rung);
# TREES picks and orders them, and "now-ENGINE" is this tree, cold, with --engine ENGINE (e.g. now-openvino-int8).
#   [TREES="before now now-mem"] [CASES="640 360|1280 720|640 360 --hog"] bash scripts/live_ab.sh BEFORE [ROUNDS]
set -euo pipefail
before=${1:?usage: live_ab.sh BEFORE_COMMIT [ROUNDS]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
old=$(mktemp -d /tmp/rvm-live-ab.XXXXXX)
memory=$(mktemp /tmp/rvm-live-ab-memory.XXXXXX.json)
git -C "$here" worktree add -q --detach "$old" "$before"
trap 'git -C "$here" worktree remove --force "$old"; rm -f "$memory"' EXIT
export RVM_LIVE_OFFLINE=1
IFS='|' read -r -a cases <<< "${CASES:-640 360|1280 720|640 360 --hog}"
for round in $(seq "$rounds"); do
  for case in "${cases[@]}"; do
    set -- $case
    for tree in ${TREES:-before now now-mem}; do
      dir=$here; [ $tree = before ] && dir=$old
      mem=""; [ $tree = now-mem ] && mem=$memory
      engine=(); case $tree in now-mem|now|before) ;; now-*) engine=(--engine "${tree#now-}") ;; esac
      report=$(cd "$dir" && RVM_LIVE_GOVERNOR_MEMORY=$mem PYTHONPATH=$dir timeout 200 python -m rvm_live bench \
               --live --width "$1" --height "$2" ${3:-} "${engine[@]}" --seconds 20 --fidelity-frames 0 --json \
               2>/dev/null)
      echo "$report" | python -c '
import json, sys
r = json.loads(sys.stdin.read())
w = r["settings"]["width"]; h = r["settings"]["height"]; last = r["ratio_over_time"][-1][1]
print(json.dumps({"tree": sys.argv[1], "case": sys.argv[2], "round": int(sys.argv[3]),
                  "engine": r["settings"].get("engine_used"), "fps_out": r["fps_out"],
                  "p50": r["latency_ms"]["p50"], "p95": r["latency_ms"]["p95"], "dropped": r["frames_dropped"],
                  "cores": r["cores_used"], "internal": f"{int(w * last)}x{int(h * last)}" if last else None,
                  "ratios": r["ratio_over_time"]}))' "$tree" "$case" "$round"
    done
  done
done
