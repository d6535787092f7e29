#!/usr/bin/env bash
# blur background, 720p30 realtime source, before (bce9b9c) vs now, interleaved, 20 s each
set -u
here=$(cd "$(dirname "$0")/../.." && pwd); old=$(mktemp -d /tmp/rvm-blur-ab.XXXXXX); rmdir "$old"
git -C $here worktree add -q --detach "$old" "${2:-bce9b9c}"; trap 'git -C $here worktree remove --force "$old"' EXIT
export RVM_LIVE_OFFLINE=1 RVM_LIVE_GOVERNOR_MEMORY=
for round in 1 2; do
  for tree in before now; do
    dir=$here; [ $tree = before ] && dir=$old
    (cd $dir && PYTHONPATH=$dir timeout 120 python -m rvm_live --source "${1:?usage: blur_ab.sh CLIP_720P.mp4}" --realtime --loop --bg blur \
       --max-frames 600 -o null --quiet --stats-json /tmp/rvm-blur-$tree-$round.json >/dev/null 2>&1)
    python -c "
import json,sys; d=json.load(open('/tmp/rvm-blur-$tree-$round.json'))
print(json.dumps({'tree':'$tree','round':$round,'fps_out':d.get('fps_out'),'frames_out':d['frames_out'],'dropped':d['frames_dropped'],'p95':d.get('latency_ms',{}).get('p95'),'ratio':d.get('downsample_ratio'),'engine':d.get('engine')}))"
  done
done
