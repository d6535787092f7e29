"""Matter's speed paths: time-chunked steps, the onnxruntime engine, CUDA graphs (GPU-marked)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from rvm_live.engine.matter import Matter

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def frames(carphone_frames):
    return carphone_frames[:6]


def test_step_chunk_equals_frame_by_frame(frames, mobilenet):
    chunked = Matter(model=mobilenet, device="cpu", downsample_ratio=0.5)
    fgr_a, pha_a = chunked.step_chunk(frames[:4])
    fgr_b, pha_b = chunked.step_chunk(frames[4:])
    single = Matter(model=mobilenet, device="cpu", downsample_ratio=0.5)
    steps = [single.step(f) for f in frames]
    torch.testing.assert_close(torch.cat([pha_a, pha_b]), torch.cat([p for _, p in steps]), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([fgr_a, fgr_b]), torch.cat([f for f, _ in steps]), atol=1e-4, rtol=0)
    assert pha_a.shape == (4, 1, 144, 176)


def test_step_chunk_rejects_float_frames():
    with pytest.raises(TypeError, match="float32 != uint8"):
        Matter(device="cpu").step_chunk(np.zeros((2, 8, 8, 3), np.float32))


def test_onnxruntime_engine_matches_torch(frames, mobilenet):
    ort_matter = Matter(runtime="onnxruntime", device="cpu", downsample_ratio=0.375)
    torch_matter = Matter(model=mobilenet, device="cpu", downsample_ratio=0.375)
    for frame in frames:
        fgr_o, pha_o = ort_matter.step(frame)
        fgr_t, pha_t = torch_matter.step(frame)
        torch.testing.assert_close(pha_o, pha_t, atol=1e-3, rtol=0)
        torch.testing.assert_close(fgr_o, fgr_t, atol=1e-3, rtol=0)
    assert ort_matter.runtime == "onnxruntime" and 0.1 < float(pha_o.mean()) < 0.9
    ort_matter.reset()
    assert ort_matter.state == [None] * 4


@pytest.mark.parametrize(("kwargs", "match"), [({"runtime": "tensorrt"}, "runtime must be one of"),
                                               ({"runtime": "onnxruntime", "backbone": "resnet50"}, "mobilenetv3"),
                                               ({"cuda_graphs": True}, "needs a CUDA device")])
def test_bad_engine_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Matter(device="cpu", **kwargs)


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_steps_match_eager_and_recapture_on_resize(frames):
    graphed = Matter(device="cuda", downsample_ratio=0.5)
    eager = Matter(device="cuda", downsample_ratio=0.5, cuda_graphs=False)
    assert graphed.cuda_graphs and graphed.dtype == torch.float16
    for frame in frames:
        pha_g = graphed.step(frame)[1].float().clone()
        pha_e = eager.step(frame)[1].float()
        torch.testing.assert_close(pha_g, pha_e, atol=2e-2, rtol=0)
    assert list(graphed.engine.graphs) == [(1, 144, 176, 0.5)]
    small = np.ascontiguousarray(frames[0][:96, :128])
    assert graphed.step(small)[1].shape == (1, 1, 96, 128)
    assert list(graphed.engine.graphs) == [(1, 144, 176, 0.5), (1, 96, 128, 0.5)] and graphed.size == (96, 128)


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_reset_restarts_the_state(frames):
    matter = Matter(device="cuda", downsample_ratio=0.5)
    first = matter.step(frames[0])[1].float().clone()
    for frame in frames[1:4]:
        matter.step(frame)
    matter.reset()
    again = matter.step(frames[0])[1].float()
    torch.testing.assert_close(again, first, atol=1e-3, rtol=0)


@pytest.mark.gpu
@requires_cuda
def test_chunks_between_graph_steps_keep_the_graph_and_its_state(frames):
    mixed = Matter(device="cuda", downsample_ratio=0.5)
    graphed = Matter(device="cuda", downsample_ratio=0.5)
    mixed.step(frames[0])
    graphs = list(mixed.engine.graphs.values())
    mixed.step_chunk(frames[1:4])  # a burst from the decoder: eager, from and back into the graph's state
    pha = mixed.step(frames[4])[1].float()
    for frame in frames[:5]:
        reference = graphed.step(frame)[1].float()
    assert list(mixed.engine.graphs.values()) == graphs  # never re-captured
    torch.testing.assert_close(pha, reference, atol=2e-2, rtol=0)


@pytest.mark.gpu
@requires_cuda
def test_batched_graph_steps_equal_single_stream_graph_steps(frames):
    from rvm_live.engine import Engine

    engine = Engine(device="cuda")
    joint = [engine.new_state(0.5), engine.new_state(0.5)]
    alone = [engine.new_state(0.5), engine.new_state(0.5)]
    for frame in frames:
        other = np.ascontiguousarray(frame[::-1])
        together = engine.infer([frame, other], joint).pha.float().clone()
        first = engine.infer([frame], [alone[0]]).pha.float().clone()
        second = engine.infer([other], [alone[1]]).pha.float().clone()
        torch.testing.assert_close(together, torch.cat([first, second]), atol=1e-2, rtol=0)
    assert set(engine.graphs) == {(2, 144, 176, 0.5), (1, 144, 176, 0.5)}


@pytest.mark.parametrize("fullres", ["exact", "fast"])
def test_bf16_engine_renders_close_to_fp32_and_leaves_the_shared_model_fp32(frames, mobilenet, fullres):
    from rvm_live.engine.core import Engine

    bf16 = Engine(model=mobilenet, device="cpu", bf16=True, fullres=fullres)
    fp32 = Engine(model=mobilenet, device="cpu", fullres=fullres)
    assert bf16.model.low_res_dtype == torch.bfloat16 and mobilenet.low_res_dtype == torch.float32
    states, plans = [bf16.new_state(0.5), fp32.new_state(0.5)], [bf16.plan("transparent"), fp32.plan("transparent")]
    diffs = []
    for frame in frames:
        (low,), (ref,) = (e.render(e.infer([frame], [s]), [p]) for e, s, p in zip((bf16, fp32), states, plans))
        assert low.image.shape == ref.image.shape == (144, 176, 4)
        diffs.append(np.abs(low.image[..., 3].astype(np.int16) - ref.image[..., 3]).mean() / 255)
    assert states[0].rec[0].dtype == torch.bfloat16 and states[1].rec[0].dtype == torch.float32
    assert 0 < np.mean(diffs) < 0.02


@pytest.mark.parametrize("kwargs", [{"runtime": "onnxruntime"}, {"runtime": "openvino-bf16", "fullres": "fast"}])
def test_bf16_is_refused_outside_the_torch_runtime(kwargs):
    from rvm_live.engine.core import Engine

    with pytest.raises(ValueError, match="bf16=True runs the torch runtime on the CPU"):
        Engine(device="cpu", bf16=True, **kwargs)


HEAP_PROBE = """
import ctypes, json, sys
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from rvm_live.engine.heap import keep_freed_frames
    keep_freed_frames()
held = lambda info: info.arena + info.hblkhd  # bytes malloc holds from the kernel: heap and mapped blocks
block = torch.ones(30 << 20, dtype=torch.uint8)  # the size of a 720p frame's biggest temporary (29.5 MB)
alive = libc.mallinfo2()
del block
print(json.dumps({"mapped": alive.hblkhd, "released": held(alive) - held(libc.mallinfo2())}))
"""


def _heap_probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_a_frames_big_temporaries_come_from_the_heap_and_stay_there_for_the_next_frame():
    # fresh processes: glibc's thresholds adapt to what a process freed before
    plain, tuned = _heap_probe("plain"), _heap_probe("tuned")
    big = 30 << 20
    # glibc's defaults: a fresh process maps such a block from the kernel and unmaps it when freed, so the next
    # frame faults it in again (~7,700 page faults for this block; ~22,000 per 720p frame measured)
    assert plain["mapped"] >= big and plain["released"] >= big
    # tuned: the block comes from the heap, and the heap keeps it when freed
    assert tuned["mapped"] < big and tuned["released"] < (1 << 20)


def test_malloc_thresholds_are_set_once_where_glibc_runs():
    from rvm_live.engine.heap import keep_freed_frames

    assert keep_freed_frames() is (platform.libc_ver()[0] == "glibc")
    assert keep_freed_frames() is keep_freed_frames()
