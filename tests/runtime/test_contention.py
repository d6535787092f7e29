"""Threads that survive contention: the onnxruntime pool stops spinning when it takes every usable core, and the
results under a CPU hog are the results without one (speed is in BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from rvm_live.engine.lowres import OrtCoefficients, downsample
from rvm_live.engine.ort import cpu_session, usable_cores
from rvm_live.tools.livebench import CpuHog

SPINNING = "session.intra_op.allow_spinning"


def spinning(session) -> str:
    try:
        return session.get_session_options().get_session_config_entry(SPINNING)
    except Exception:  # onnxruntime raises when the entry was never set
        return "default"


def test_pool_over_every_core_does_not_spin(official_onnx_path):
    cores = usable_cores()
    assert spinning(cpu_session(official_onnx_path, cores)) == "0"


@pytest.mark.skipif(usable_cores() < 2, reason="one usable core: no pool can leave a core spare")
def test_pool_that_leaves_a_core_spare_may_spin(official_onnx_path):
    # spare cores: the pool may spin (faster hand-offs, nobody starved)
    assert spinning(cpu_session(official_onnx_path, usable_cores() - 1)) == "default"


def test_same_coefficients_with_a_core_hogged(official_onnx_path, carphone_frames):
    small = downsample(carphone_frames[:3], 1.0)
    results = []
    for hog in (False, True):
        network = OrtCoefficients(official_onnx_path, threads=usable_cores())
        state, out = [None] * 4, []
        with CpuHog() if hog else contextlib.nullcontext():
            for frame in small:
                a, b, state = network(frame[None], state)
                out.append(a)
        results.append(out)
    for plain, hogged in zip(*results):
        np.testing.assert_allclose(plain, hogged, atol=1e-5)

