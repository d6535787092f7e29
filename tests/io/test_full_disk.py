"""A full disk under a recording: a live daemon loses only that output, a file job fails as before."""

from __future__ import annotations

import errno

import av
import pytest
from helpers import RecordingSink
from media import decode_file, wait_until

from rvm_live.config import Config
from rvm_live.engine import Engine
from rvm_live.errors import PipelineError
from rvm_live.io.sinks.stream import StreamSink
from rvm_live.runtime.daemon import Daemon


class FullDisk:
    """The real output container, whose ``mux`` raises ENOSPC once ``room`` calls have been written."""

    def __init__(self, container, room: int) -> None:
        self._container, self.room, self.muxed, self.full = container, room, 0, False

    def mux(self, packets):
        if self.muxed >= self.room:
            self.full = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.muxed += 1
        return self._container.mux(packets)

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.fixture
def disk_fills_after(monkeypatch):
    """``disk_fills_after(n)``: every output container opened from now on fails after ``n`` writes; returns the
    list of those containers."""
    real_open, disks = av.open, []

    def install(room: int) -> list[FullDisk]:
        def open_(target, mode="r", *args, **kwargs):
            container = real_open(target, mode, *args, **kwargs)
            if mode != "w":
                return container
            disks.append(FullDisk(container, room))
            return disks[-1]
        monkeypatch.setattr(av, "open", open_)
        return disks
    return install


@pytest.mark.slow
def test_a_full_disk_costs_a_live_daemon_only_that_recording(tmp_path, carphone_path, mobilenet, disk_fills_after):
    disks = disk_fills_after(15)
    record, other = tmp_path / "rec.mp4", RecordingSink("other")
    config = Config(source=str(carphone_path), realtime=True, loop=True, no_signal_timeout=5)
    pipeline = Daemon(config, engine=Engine("mobilenetv3", model=mobilenet, device="cpu"),
                      sinks=[StreamSink(str(record), config), other])
    pipeline.start()
    try:
        wait_until(lambda: disks and disks[0].full, 120, "the full disk")
        after = len(other.frames)
        wait_until(lambda: len(other.frames) >= after + 10 or pipeline.stop_event.is_set(), 60,
                   "frames for the other output after the failure")
        assert not pipeline.stop_event.is_set()  # the daemon did not stop
        health = pipeline.health()
        assert health["ok"] and health["outputs"] == {str(record): health["outputs"][str(record)], "other": "up"}
        assert "No space left on device" in health["outputs"][str(record)]
    finally:
        pipeline.stop()
        pipeline.wait(30)
        pipeline.close()
    stats = pipeline.stats()["sinks"]
    assert "No space left on device" in stats[str(record)]["failed"] and stats["other"]["failed"] is None
    assert not record.exists() and len(decode_file(f"{record}.part")) >= 1  # what was written is kept


@pytest.mark.slow
def test_a_full_disk_still_fails_a_file_job(tmp_path, carphone_path, mobilenet, disk_fills_after):
    disk_fills_after(15)
    record = tmp_path / "rec.mp4"
    config = Config(source=str(carphone_path))
    pipeline = Daemon(config, engine=Engine("mobilenetv3", model=mobilenet, device="cpu"),
                      sinks=[StreamSink(str(record), config)])
    with pytest.raises(PipelineError, match="No space left on device"):
        pipeline.run()
    assert not record.exists() and (tmp_path / "rec.mp4.part").exists()
