"""The per-frame body is CUDA-graph capturable and sync-free, proven on the CPU.

Each frame runs upload → network (ratio < 1 with the refiner, ratio 1 with and without it) → state
write-back → composite over every kind of background under a trap that fails on any op that makes a tensor
from host data (a blocking host→device copy on CUDA, illegal while capturing), reads a value back to the
host (``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool(t)``) or needs a sync (ops whose output
size depends on the data). On a CPU those ops are cheap and silent; on CUDA each breaks capture or stalls
the GPU, so they are caught here, in CI, before any GPU sees them.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import solid_frames, write_frames
from torch.utils._python_dispatch import TorchDispatchMode

from rvm_live.compositing.backgrounds import composite, parse_background, to_device
from rvm_live.engine.core import as_frames
from rvm_live.engine.graphs import graph_body
from rvm_live.engine.matter import Matter

aten = torch.ops.aten
HOST_DATA = {aten.lift_fresh.default, aten.lift_fresh_copy.default}  # torch.tensor / as_tensor / from_numpy
READ_BACK = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default}
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
                  "unique_dim", "argwhere", "masked_scatter", "repeat_interleave"}
# where host data may enter, by design: the caller's frame (the upload itself, through the pinned buffer on
# CUDA) and a background's picture (an image or video frame, decoded on the host)
ENTRY_POINTS = {as_frames.__code__, to_device.__code__}  # by code object: immune to moves and renames


def _entry_point_on_stack() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code in ENTRY_POINTS:
            return True
        frame = frame.f_back
    return False


class CaptureTrap(TorchDispatchMode):
    """Records every op that would break a CUDA graph capture or sync the GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func in HOST_DATA and not _entry_point_on_stack():
            self.violations.append(f"{func} (a tensor from host data)")
        elif func in READ_BACK:
            self.violations.append(f"{func} (reads a value back to the host)")
        elif name in DATA_DEPENDENT or (name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())):
            self.violations.append(f"{func} (output size depends on the data: a sync)")
        return func(*args, **(kwargs or {}))

    def report(self) -> str:
        counts: dict[str, int] = {}
        for v in self.violations:
            counts[v] = counts.get(v, 0) + 1
        return "; ".join(f"{n} x {v}" for v, n in counts.items())


@pytest.fixture
def trap(monkeypatch):
    """A CaptureTrap that also catches the host read-backs that never reach the dispatcher on the CPU."""
    mode = CaptureTrap()
    for method in ("cpu", "tolist", "numpy", "item", "__bool__"):
        real = getattr(torch.Tensor, method)

        def spy(self, *args, _real=real, _method=method, **kwargs):
            if mode.active:
                mode.violations.append(f"Tensor.{_method}() (host read-back)")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    real_sync = torch.cuda.synchronize

    def sync(*args, **kwargs):
        if mode.active:
            mode.violations.append("torch.cuda.synchronize()")
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    mode.active = False
    return mode


class traced:  # noqa: N801  (a context manager used like a function)
    def __init__(self, mode: CaptureTrap) -> None:
        self.mode = mode

    def __enter__(self) -> CaptureTrap:
        self.mode.active = True
        self.mode.__enter__()
        return self.mode

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
        self.mode.active = False


@pytest.fixture(scope="module")
def background_specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bg")
    cv2.imwrite(str(folder / "red.png"), np.full((40, 60, 3), (0, 0, 255), np.uint8))
    write_frames(folder / "blue.mp4", solid_frames([(20, 30, 220)] * 3, (48, 64)))
    return ["green", str(folder / "red.png"), str(folder / "blue.mp4"), "blur:8", "transparent"]


@pytest.mark.parametrize(("ratio", "always_refine"), [(0.5, False), (1.0, False), (1.0, True)])
def test_streaming_step_and_composite_make_no_host_tensor_and_never_sync(carphone_frames, mobilenet,
                                                                         background_specs, trap, ratio,
                                                                         always_refine):
    matter = Matter(model=mobilenet, device="cpu", downsample_ratio=ratio, always_refine=always_refine)
    backgrounds = [parse_background(spec, live=False) for spec in background_specs]
    try:
        # the first frame too: it sizes the state and the backgrounds
        for frame in carphone_frames[:2]:
            with traced(trap), torch.inference_mode():
                fgr, pha = matter.step(frame)
                for background in backgrounds:
                    for threshold in (None, 0.5):
                        composite(fgr, pha, background, matter.last_src, threshold=threshold)
    finally:
        for background in backgrounds:
            background.close()
    assert not trap.violations, trap.report()
    assert all(s is not None for s in matter.state)  # the state was carried, i.e. the body really ran


@pytest.mark.parametrize("ratio", [0.375, 1.0])
def test_graph_body_is_capturable(carphone_frames, mobilenet, trap, ratio):
    """What ``GraphedStep`` captures (frame buffer → network → state written back into its buffers), run
    eagerly with the same buffers it would hold."""
    def call(src, *rec):
        return mobilenet(src, *rec, downsample_ratio=ratio, always_refine=False)

    frame = torch.from_numpy(carphone_frames[0].copy())
    with torch.inference_mode():
        _, _, *rec = call(frame.unsqueeze(0).permute(0, 3, 1, 2).float() / 255)
        state = [torch.zeros_like(r) for r in rec]
        with traced(trap):
            for _ in range(2):
                fgr, pha, src = graph_body(call, frame, state, torch.float32)
    assert not trap.violations, trap.report()
    assert pha.shape == (1, 1, 144, 176) and float(state[0].abs().sum()) > 0  # the state was written back


def test_the_trap_catches_what_breaks_a_capture(trap):
    x = torch.ones(1, 4, 2, 2)
    with traced(trap):
        x.new_tensor([1.0, 2.0])
        torch.tensor(0.5)
        x.sum().item()
        x.tolist()
        x[x > 0]  # boolean indexing: a data-dependent size
        if x.any():
            pass
    kinds = " | ".join(trap.violations)
    assert kinds.count("host data") == 2 and "Tensor.item()" in kinds and "Tensor.tolist()" in kinds
    assert "index" in kinds and "Tensor.__bool__()" in kinds


def test_batched_engine_step_and_composite_are_capturable(carphone_frames, mobilenet, background_specs, trap):
    from rvm_live.engine import Engine

    engine = Engine(model=mobilenet, device="cpu")
    states = [engine.new_state(0.5), engine.new_state(0.5)]
    backgrounds = [parse_background(spec, live=False) for spec in background_specs[:2]]
    try:
        for frame in carphone_frames[:2]:
            with traced(trap), torch.inference_mode():
                out = engine.infer([frame, frame[::-1]], states)
                composite(out.fgr, out.pha, backgrounds, out.src)
                composite(out.fgr, out.pha, backgrounds[0], out.src, threshold=0.5)
    finally:
        for background in backgrounds:
            background.close()
    assert not trap.violations, trap.report()
    assert out.pha.shape == (2, 1, 144, 176)
