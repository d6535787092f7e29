"""The engine's CUDA stream protocol, walked on the CPU.

The CUDA path (side stream, pinned uploads, event waits, graph capture and replay, state seating) runs for
real on CPU tensors, with recording stand-ins for the torch.cuda objects: streams and events keep vector
clocks, a CUDA graph records the ops of its capture and replays them into the same buffers. Every tensor
op is attributed to the stream it was queued on, and the test fails on

- a data race: a storage read or written on one stream while another stream's earlier write (or, for a
  write, read) of it is not ordered before it by ``wait_stream``/events/host syncs;
- a storage allocated on the side stream but used on another without ``record_stream`` for it (the caching
  allocator could hand it out again under that use);
- a public call that returns while the current stream has not caught up with the side stream (the caller
  would read outputs, or free buffers, under a replay still running).

What it cannot see: the driver itself (a real H2D copy from pageable memory, capture errors of ops the
recorder does not mimic), and sub-storage granularity (two views of one buffer count as one).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rvm_live.engine.core as core
from rvm_live.engine import Engine
from rvm_live.engine.graphs import GraphedStep

METADATA_ONLY = ("empty_like", "zeros_like", "ones_like", "full_like", "empty", "zeros", "full", "empty_strided")


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Clocked:
    """A stream (or the host): a name and a vector clock."""

    ids = itertools.count()

    def __init__(self, name: str, cuda: FakeCuda | None = None) -> None:
        self.name, self.clock, self.cuda = name, {}, cuda
        self.id = next(self.ids)

    def wait_stream(self, other: Clocked) -> None:
        self.cuda.log.append(f"{self.name}.wait_stream({other.name})")
        self.merge(other.clock)

    def wait_event(self, event: FakeEvent) -> None:
        self.merge(event.clock)

    def synchronize(self) -> None:
        self.cuda.host.merge(self.clock)

    def tick(self) -> int:
        self.clock[self.id] = self.clock.get(self.id, 0) + 1
        return self.clock[self.id]

    def merge(self, clock: dict[int, int]) -> None:
        for k, v in clock.items():
            self.clock[k] = max(self.clock.get(k, 0), v)

    def has_seen(self, other_id: int, tick: int) -> bool:
        return self.clock.get(other_id, 0) >= tick


class FakeCuda(TorchDispatchMode):
    """Records every op on the current fake stream and checks the three rules of the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.host = Clocked("host")
        self.default = Clocked("current", self)
        self.stack: list[Clocked] = [self.default]
        self.streams: list[Clocked] = [self.default]
        self.writes: dict[int, tuple[Clocked, int]] = {}
        self.reads: dict[int, dict[int, tuple[Clocked, int]]] = {}
        self.allocated_on: dict[int, Clocked] = {}
        # every storage seen allocated is kept alive for the test's length: storages are known by address, and a
        # freed one's address reused by memory made outside this mode would inherit its stream (a false error)
        self._alive: list[torch.UntypedStorage] = []
        self.recorded: dict[int, set[int]] = {}
        self.host_memory: set[int] = set()  # pinned buffers and tensors made from numpy arrays
        self.capturing: FakeGraph | None = None
        self.errors: list[str] = []
        self.log: list[str] = []

    # ----- the torch.cuda stand-ins ------------------------------------------------------------------
    def stream_factory(self, *args, **kwargs) -> Clocked:
        stream = Clocked(f"side{len(self.streams)}", self)
        self.streams.append(stream)
        return stream

    def current(self, *args, **kwargs) -> Clocked:
        return self.stack[-1]

    @contextlib.contextmanager
    def use(self, stream: Clocked):
        self.stack.append(stream)
        try:
            yield stream
        finally:
            self.stack.pop()

    def _host_sync(self, clock: dict[int, int]) -> None:
        self.host.merge(clock)

    def record_stream(self, tensor: torch.Tensor, stream: Clocked) -> None:
        self.recorded.setdefault(_key(tensor), set()).add(stream.id)

    # ----- the checks ----------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.capturing is not None:  # a capture queues nothing: record the op for the replays
            out = func(*args, **kwargs)
            self.capturing.ops.append((func, args, kwargs, out))
            return out
        name = func.overloadpacket.__name__
        inputs = [a for a in _tensors(args) + _tensors(list(kwargs.values()))]
        mutated = [a for i, a in enumerate(args) if isinstance(a, torch.Tensor) and _mutates(func, i)]
        out = func(*args, **kwargs)
        outputs = _tensors(out if isinstance(out, (list, tuple)) else [out])
        # host work: numpy frames becoming tensors, and everything made only of host memory (stacking frames,
        # filling the pinned buffer); device work reading host memory (the pinned upload) stays on its stream
        in_keys = {_key(t) for t in inputs}
        host_op = name == "lift_fresh" or bool(in_keys) and in_keys <= self.host_memory
        stream = self.host if host_op else self.stack[-1]
        if not host_op:
            stream.merge(self.host.clock)  # queued after everything the host has already waited for
        tick = stream.tick()
        input_keys = {_key(t) for t in inputs}
        written = {_key(t) for t in mutated}
        for t in outputs:
            k = _key(t)
            if host_op:
                self.host_memory.add(k)
            # a new storage (allocated on this stream, or a numpy array now seen by torch); addresses get
            # reused after a free, so it starts with no history
            if k not in input_keys or name == "lift_fresh":
                if not host_op:
                    self.host_memory.discard(k)
                self.allocated_on[k] = stream
                self._alive.append(t.untyped_storage())
                self.writes.pop(k, None)
                self.reads.pop(k, None)
            written.add(k)
        if not name.endswith("_like") and name not in METADATA_ONLY:
            for k in input_keys - written:
                self._access(k, stream, tick, write=False, what=str(func))
        for k in written:
            self._access(k, stream, tick, write=True, what=str(func))
        return out

    def _access(self, k: int, stream: Clocked, tick: int, *, write: bool, what: str) -> None:
        owner = self.allocated_on.get(k)
        if owner is not None and owner is not stream and stream is not self.host and owner is not self.host \
                and stream.id not in self.recorded.get(k, set()) and owner is not self.default:
            self.errors.append(f"{what} on {stream.name} uses a storage allocated on {owner.name} "
                               "without record_stream")
        last = self.writes.get(k)
        if last is not None and last[0] is not stream and not stream.has_seen(last[0].id, last[1]):
            self.errors.append(f"{what} on {stream.name} races with a write on {last[0].name}")
        if write:
            for reader, rtick in self.reads.get(k, {}).values():
                if reader is not stream and not stream.has_seen(reader.id, rtick):
                    self.errors.append(f"{what} on {stream.name} overwrites what {reader.name} may still read")
            self.writes[k] = (stream, tick)
            self.reads[k] = {}
        else:
            self.reads.setdefault(k, {})[stream.id] = (stream, tick)

    def caught_up(self, where: str) -> None:
        for stream in self.streams[1:]:
            if not self.default.has_seen(stream.id, stream.clock.get(stream.id, 0)):
                self.errors.append(f"{where} returned before the current stream waited for {stream.name}")


def _tensors(items) -> list[torch.Tensor]:
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_tensors(item))
    return out


def _mutates(func, index: int) -> bool:
    arguments = func._schema.arguments
    return index < len(arguments) and arguments[index].alias_info is not None and arguments[index].alias_info.is_write


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda, self.clock = cuda, {}

    def record(self, stream: Clocked | None = None) -> None:
        self.clock = dict((stream or self.cuda.current()).clock)

    def synchronize(self) -> None:
        self.cuda._host_sync(self.clock)


class FakeGraph:
    """Replays the ops recorded at capture into the same output tensors, as a CUDA graph would."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda, self.ops = cuda, []

    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            outputs = _tensors(out if isinstance(out, (list, tuple)) else [out])
            inputs = {_key(t) for t in _tensors(list(args) + list(kwargs.values()))}
            if outputs and all(_key(t) in inputs for t in outputs) and not any(
                    _mutates(func, i) for i in range(len(args))):
                continue  # a view: it aliases its input already
            fresh = func(*args, **kwargs)
            if any(_mutates(func, i) for i in range(len(args))):
                continue  # in place: done
            for target, value in zip(outputs, _tensors(fresh if isinstance(fresh, (list, tuple)) else [fresh])):
                target.copy_(value)


@pytest.fixture
def fake_cuda(monkeypatch):
    cuda = FakeCuda()
    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):
        t = real_empty(*args, **kwargs)
        if pin_memory:  # host memory: forget that the factory op counted it as a device allocation
            k = _key(t)
            cuda.host_memory.add(k)
            for table in (cuda.writes, cuda.reads, cuda.allocated_on):
                table.pop(k, None)
        return t

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode=None):
        for s in cuda.streams:  # torch.cuda.graph begins with a device-wide sync
            cuda._host_sync(s.clock)
        cuda.capturing = g
        try:
            with cuda.use(stream or cuda.current()):
                yield
        finally:
            cuda.capturing = None

    monkeypatch.setattr(core, "uses_cuda", lambda device: True)
    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "Stream", cuda.stream_factory)
    monkeypatch.setattr(torch.cuda, "current_stream", cuda.current)
    monkeypatch.setattr(torch.cuda, "stream", cuda.use)
    monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: FakeEvent(cuda))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: FakeGraph(cuda))
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: cuda.record_stream(self, stream))
    with cuda:
        yield cuda


def _engine(mobilenet, **kwargs) -> Engine:
    return Engine(model=mobilenet, device="cpu", **kwargs)


@pytest.mark.slow
def test_graph_steps_chunks_resets_and_batches_are_ordered(fake_cuda, mobilenet, carphone_frames):
    engine = _engine(mobilenet)
    assert engine.cuda_graphs and engine._stream is not None  # the CUDA path, on CPU tensors
    a, b = engine.new_state(0.5), engine.new_state(0.5)
    frames = carphone_frames
    for t in range(3):
        engine.infer([frames[t]], [a])
        fake_cuda.caught_up("step")
    a.reset()
    engine.infer([frames[3]], [a])
    src = engine.upload(frames[4:7])  # a chunk from a bursty decoder: eager, back into the graph's slot
    fake_cuda.caught_up("upload")
    engine.run_clip(src.unsqueeze(0), a)
    engine.infer([frames[7]], [a])
    for t in range(8, 10):  # two streams in one graph, then swapped slots
        engine.infer([frames[t], frames[t][:, ::-1].copy()], [a, b])
        fake_cuda.caught_up("batched step")
    engine.infer([frames[10][:, ::-1].copy(), frames[10]], [b, a])
    b.set_ratio(0.25)
    engine.infer([frames[11]], [b])
    fake_cuda.caught_up("step")
    assert len(engine.graphs) == 3 and not fake_cuda.errors, fake_cuda.errors
    assert any("wait_stream" in line for line in fake_cuda.log)


def test_graph_replays_match_eager_steps(fake_cuda, mobilenet, carphone_frames):
    """The stand-in graph really replays the captured work (else the ordering test would prove nothing)."""
    graphed, eager = _engine(mobilenet), _engine(mobilenet, cuda_graphs=False)
    sg, se = graphed.new_state(0.5), eager.new_state(0.5)
    for frame in carphone_frames[:4]:
        pg = graphed.infer([frame], [sg]).pha.clone()
        pe = eager.infer([frame], [se]).pha
        torch.testing.assert_close(pg, pe, atol=1e-5, rtol=0)
    assert not fake_cuda.errors, fake_cuda.errors


def test_eager_cuda_path_is_ordered(fake_cuda, mobilenet, carphone_frames):
    engine = _engine(mobilenet, cuda_graphs=False)
    state = engine.new_state(0.5)
    for frame in carphone_frames[:3]:
        engine.infer([frame], [state])
        fake_cuda.caught_up("eager step")
    engine.run_clip(engine.upload(np.stack(carphone_frames[3:6])).unsqueeze(0), state)
    assert not fake_cuda.errors, fake_cuda.errors


def test_the_checker_catches_a_reset_left_on_the_side_stream(fake_cuda, mobilenet, carphone_frames, monkeypatch):
    """The old bug: the graph's state zeroed on the side stream, then read by an eager chunk on the current
    stream with no wait between."""
    def reset_on_side_stream(self):
        with torch.cuda.stream(self.stream):
            for buffer in self.state:
                buffer.zero_()

    engine = _engine(mobilenet)
    state = engine.new_state(0.5)
    engine.infer([carphone_frames[0]], [state])
    src = engine.upload(carphone_frames[1:3])
    monkeypatch.setattr(GraphedStep, "reset", reset_on_side_stream)
    with torch.inference_mode():
        next(iter(engine.graphs.values())).reset()
    engine.run_clip(src.unsqueeze(0), state)
    assert any("races with a write on side" in e for e in fake_cuda.errors), fake_cuda.errors


def test_the_checker_catches_a_missing_wait_and_a_missing_record_stream(fake_cuda):
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.ones(4) * 2  # allocated and written on the side stream
    y = x + 1  # no wait_stream, no record_stream
    assert any("races with a write on side" in e for e in fake_cuda.errors)
    assert any("without record_stream" in e for e in fake_cuda.errors)
    fake_cuda.errors.clear()
    with torch.cuda.stream(side):
        z = torch.ones(4) * 3
    torch.cuda.current_stream().wait_stream(side)
    z.record_stream(torch.cuda.current_stream())
    y = z + 1
    assert not fake_cuda.errors and float(y[0]) == 4
