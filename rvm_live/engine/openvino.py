"""The network's low-resolution half on OpenVINO's CPU plugin, in fp32, bf16 or int8 with mixed precision.

The same cut of the official export as the onnxruntime path (:func:`rvm_live.engine.lowres.lowres_model`:
the downsampled frame and r1..r4 in, the guided filter's ``A, b`` and the next r1..r4 out), compiled by
OpenVINO. On CPUs with AVX512-BF16 or AMX, ``bf16`` runs the convolutions in bfloat16 with fp32
accumulation, which is where the speed comes from (figures and the quality cost: BENCHMARKS.md). ``int8``
runs the decoder's convolutions on int8 kernels (VNNI where the CPU has it) and keeps the stem, the encoder,
the projection and the refiner in float (:mod:`rvm_live.tools.quantize_ov`, made once into the cache).

A model compiled for one fixed input shape is faster than a dynamic one, but compiling takes about a second.
So every shape is served at once by the dynamic model while its static model compiles on a background thread
(the governor changes the network's size on a live stream; that must never stall a frame), and compiled blobs
are cached on disk so the next start is quick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import WeightsError, one_line
from .lowres import lowres_model
from .ort import STATE_INPUTS, state_feed

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
MAX_STATIC = 8  # static models kept: the governor's ladder has at most this many rungs


def available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _int8_model(path: str | Path) -> bytes:
    """The serialized mixed-precision model of the export at ``path`` (made into the cache once)."""
    from ..tools.quantize_ov import int8_lowres_ov

    try:
        return int8_lowres_ov(path).read_bytes()
    except WeightsError:
        raise
    except Exception as exc:  # onnx, onnxruntime's quantizer and the file system raise their own types
        raise WeightsError(f"{path}: could not make its int8 model ({one_line(exc)})") from exc


class OpenVinoCoefficients:
    """The official export without its full-resolution part on OpenVINO (CPU): ``A, b`` per frame.

    ``precision``: ``fp32``, ``bf16`` (on a CPU without native support it is refused: emulated bf16 is slower
    than fp32, so asking for it is a mistake worth one clear line) or ``int8`` (the mixed-precision model,
    made on first use; its float layers run in ``int8_float``: ``bf16`` where the CPU has it natively, else
    ``f32``, unless named)."""

    def __init__(self, path: str | Path, *, precision: str = "bf16", threads: int | None = None,
                 cache_dir: str | Path | None = None, int8_float: str | None = None) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not supports_bf16():
            raise ValueError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX; this one has neither (use fp32)")
        self.precision = precision
        self._core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self._core.set_property({"CACHE_DIR": str(cache_dir)})
        # no pinning: with another program busy on one core (a video-call app), a worker pinned there stalls
        # every layer; measured on 2 cores with a busy loop on core 0, 256x144: 99.6 ms pinned, 44.2 unpinned
        # (12.8-13.0 ms both on idle cores; onnxruntime 39.3 and 22.2). BENCHMARKS.md, "A faster CPU network".
        if precision == "int8" and int8_float is None:
            int8_float = "bf16" if supports_bf16() else "f32"
        hint = {"fp32": "f32", "bf16": "bf16", "int8": int8_float}[precision]
        if hint not in ("f32", "bf16"):
            raise ValueError(f"int8_float must be f32 or bf16, got {int8_float!r}")
        self._config = {"INFERENCE_PRECISION_HINT": hint,
                        "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._blob = _int8_model(path) if precision == "int8" else lowres_model(path).SerializeToString()
        self._dynamic = self._core.compile_model(self._core.read_model(self._blob, b""), "CPU", self._config)
        self._small = self._dynamic.inputs[0].get_any_name()
        self._dynamic_request = self._dynamic.create_infer_request()
        self._static: dict[tuple, object] = {}  # input shapes -> infer request of a static model
        self._pending: set[tuple] = set()
        self._lock = threading.Lock()

    def __call__(self, small: np.ndarray,
                 state: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """``small`` float32 ``[B,3,h,w]`` (0..1) and r1..r4 (``None``: a fresh stream) → ``A, b``
        ``[B,4,h,w]`` and the next r1..r4."""
        feed = {self._small: small, **state_feed(state)}
        request = None
        if all(r is not None for r in state):  # a steady shape (not a stream's first frame): worth compiling
            key = (tuple(small.shape), *(tuple(r.shape) for r in state))
            with self._lock:
                request = self._static.get(key)
            if request is None:
                self._compile_later(key)
        if request is None:
            request = self._dynamic_request
        request.infer(feed)
        # the request reuses its output memory on the next call: hand out copies
        a, b, *rec = (request.get_output_tensor(i).data.copy() for i in range(6))
        return a, b, rec

    @property
    def compiling(self) -> bool:
        """Whether a static model is being compiled (or loaded from the cache): until it is ready its shape runs on
        the slower dynamic model, and the compile takes CPU from the frames, so their times are not steady ones."""
        with self._lock:
            return bool(self._pending)

    def _compile_later(self, key: tuple) -> None:
        with self._lock:
            if key in self._pending or len(self._static) >= MAX_STATIC:
                return
            self._pending.add(key)
        threading.Thread(target=self._compile, args=(key,), name="rvm-openvino-compile", daemon=True).start()

    def _compile(self, key: tuple) -> None:
        try:
            model = self._core.read_model(self._blob, b"")
            model.reshape({self._small: list(key[0]), **{n: list(s) for n, s in zip(STATE_INPUTS, key[1:])}})
            request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        except Exception as exc:  # the dynamic model keeps serving this shape; say why once
            log.warning("openvino: could not compile a static model for %s (%s); the dynamic one serves it",
                        key[0], exc)
            with self._lock:
                self._pending.discard(key)
                self._static[key] = self._dynamic_request  # never tried again
            return
        with self._lock:
            self._static[key] = request
            self._pending.discard(key)
        log.debug("openvino: static %s model ready for input %s", self.precision, key[0])

    def wait_compiled(self, timeout: float = 30.0) -> bool:
        """Block until no static compile is pending (benchmarks and tests); whether none is left."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False
