"""Long clips in segments: the lossless join, every frame once and in order, and the seam error bound."""

from __future__ import annotations

import av
import numpy as np
import pytest
from conftest import frame_indices, index_clip
from helpers import run_cli

from rvm_live.batch.segments import join

# the seam error (mean |Δα| over the 15 frames after a seam, against one sequential run) measured on the
# demo clip at the default warm-up (BENCHMARKS.md, "Seam error against W"), with room for other CPUs' maths
SEAM_BOUND = 0.005


def packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]


def test_join_copies_every_packet_unchanged_and_moves_the_timestamps_on(tmp_path):
    parts = [index_clip(tmp_path / f"p{k}.mp4", n) for k, n in enumerate((12, 9, 15))]
    out = tmp_path / "joined.mp4"
    assert join(parts, str(out)) == 36
    joined = packets(out)
    assert [p[0] for p in joined] == [p[0] for part in parts for p in packets(part)]  # bytes: no re-encoding
    with av.open(str(out)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert len(times) == 36
    assert np.allclose(np.diff(times), 1 / 30, atol=1e-3)  # no gap, no overlap at the seams
    assert not (tmp_path / "joined.mp4.part").exists()


@pytest.mark.slow
def test_a_segmented_clip_comes_out_with_every_frame_once_and_in_order(tmp_path):
    clip = index_clip(tmp_path / "in" / "long.mp4", 45)  # three segments of 15 frames
    done = run_cli("batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--segment", "0.5", "--warmup", "8",
                   "--side-by-side", "--crf", "0", "--workers", "2", "-q", offline=False)
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "out" / "long.mp4")) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    # side by side: the left half is the input itself, whose grey level says which frame it is
    assert frame_indices(clip, [image[:, : image.shape[1] // 2] for _, image in frames]) == list(range(45))
    assert np.allclose([t for t, _ in frames], np.arange(45) / 30, atol=1e-3)
    assert not (tmp_path / "out" / ".rvm-batch").exists()  # segments removed once joined


@pytest.mark.slow
def test_the_seam_error_stays_under_the_measured_bound(carphone_path):
    from rvm_live.batch.job import DEFAULT_WARMUP
    from rvm_live.batch.seams import measure
    from rvm_live.config import Config

    table = measure(str(carphone_path), [DEFAULT_WARMUP], every=40, after=15,
                    config=Config(bg="transparent", log_level="warning"))
    assert table["seams"] == [40, 80]
    assert 0 < table["warmup"][DEFAULT_WARMUP]["mean"] < SEAM_BOUND  # (0 would mean nothing was compared)
