"""int8 with mixed precision for OpenVINO: which layers stay in float, and the cache (real export, real frames;
a tiny calibration here, the pinned recipe's figures are in BENCHMARKS.md)."""

from __future__ import annotations

import onnx
import pytest

from rvm_live.engine.lowres import lowres_model
from rvm_live.errors import WeightsError
from rvm_live.tools import quantize_ov
from rvm_live.tools.quantize_ov import RECIPE, int8_lowres_ov, int8_path_for, layer_groups

# a quick recipe: 4 calibration frames at 128x72, one ratio (the layer choice is the pinned one)
TINY = {**RECIPE, "frames": [60, 64, 1], "size": [128, 72], "ratios": [1.0]}


def test_layer_groups_split_every_convolution_by_part(official_onnx_path):
    model = lowres_model(official_onnx_path)
    groups = layer_groups(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert sorted(name for names in groups.values() for name in names) == sorted(convs)  # each one, once
    assert groups["stem"] == convs[:1] and len(groups["projection"]) == 1
    assert len(groups["gru"]) == 8  # 4 ConvGRUs, two gates each
    assert len(groups["refiner"]) == 7  # 4 box filters and the 3 convolutions of the guided filter
    assert len(groups["encoder"]) > 40 and len(groups["decoder"]) == 5  # 3 upsampling blocks + the output block


@pytest.mark.slow
def test_the_decoder_is_int8_and_the_float_parts_are_not(tmp_path, official_onnx_path, monkeypatch):
    monkeypatch.setenv("RVM_LIVE_CACHE", str(tmp_path))
    path = int8_lowres_ov(official_onnx_path, TINY)
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    quantized = {n.name for n in graph.node if n.op_type == "Conv" and producer.get(n.input[0]) == "DequantizeLinear"}
    groups = layer_groups(lowres_model(official_onnx_path))
    assert set(groups["gru"]) | set(groups["decoder"]) == quantized
    assert not quantized & {name for part in RECIPE["float"] for name in groups[part]}


@pytest.mark.slow
def test_the_model_is_made_once_and_a_new_recipe_makes_another(tmp_path, official_onnx_path, monkeypatch):
    monkeypatch.setenv("RVM_LIVE_CACHE", str(tmp_path))
    path = int8_lowres_ov(official_onnx_path, TINY)
    assert path == int8_path_for(official_onnx_path, TINY) and path.parent == tmp_path
    made = path.stat().st_mtime_ns
    assert int8_lowres_ov(official_onnx_path, TINY).stat().st_mtime_ns == made  # reused, not made again
    other = {**TINY, "per_channel": False}
    assert int8_path_for(official_onnx_path, other) != path  # another recipe never reuses the file
    assert not list(tmp_path.glob("*.part"))


def test_an_unknown_layer_group_is_named(tmp_path, official_onnx_path):
    with pytest.raises(ValueError, match=r"unknown layer group\(s\) \['neck'\]"):
        quantize_ov.quantize_mixed(official_onnx_path, tmp_path / "x.onnx", None, {**TINY, "float": ["neck"]})


def test_a_model_that_cannot_be_made_fails_in_one_line(tmp_path, official_onnx_path, monkeypatch):
    from rvm_live.engine.openvino import OpenVinoCoefficients

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("RVM_LIVE_CACHE", str(blocker / "sub"))
    with pytest.raises(WeightsError, match="could not make its int8 model") as caught:
        OpenVinoCoefficients(official_onnx_path, precision="int8")
    assert "\n" not in str(caught.value)
