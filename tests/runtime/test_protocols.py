"""Every built-in source and sink speaks the whole plug-in protocol, so the stages call its members and
never probe for them; the base classes' defaults are what a minimal plug-in gets."""

from __future__ import annotations

import threading

from rvm_live.config import Config
from rvm_live.io.backoff import backoff_delays
from rvm_live.io.sinks.base import Sink, SinkBase, create_sink
from rvm_live.io.sources.base import Source, SourceBase, create_source


def test_built_in_sources_and_sinks_meet_the_complete_protocols(tmp_path, carphone_path):
    config = Config()
    sources = [create_source(spec, config) for spec in (str(carphone_path), "demo", "rtsp://127.0.0.1:9/live",
                                                        "camera:0")]
    for source in sources:
        assert isinstance(source, Source), source
    file_source, _, rtsp, camera = sources
    assert (file_source.reconnect, rtsp.reconnect, camera.reconnect) == (False, True, True)
    sinks = [create_sink(spec, config) for spec in ("null", str(tmp_path / "a.mp4"), str(tmp_path / "a.mov"),
                                                     "vcam", "window", "preview")]
    for sink in sinks:
        assert isinstance(sink, Sink), sink
    assert [s.accepts_alpha for s in sinks] == [True, False, True, False, True, True]
    rtsp.close()


def test_the_base_classes_give_a_minimal_plug_in_the_defaults():
    class Minimal(SourceBase):
        name, live = "minimal", True

        def __init__(self):
            self.closed = 0

        def open(self):
            pass

        def read(self):
            return None

        def close(self):
            self.closed += 1

    source = Minimal()
    assert isinstance(source, Source) and source.reconnect is True  # live: reconnects by default
    source.reconnect = False
    assert source.reconnect is False
    source.suspend()
    assert source.closed == 1  # suspending releases everything by default
    delays = source.retry_delays()
    assert [next(delays) for _ in range(7)] == [next(d) for d in [backoff_delays()] for _ in range(7)]
    assert (source.size, source.last_pts) == (None, None)
    source.cancel_on(threading.Event())

    class Output(SinkBase):
        name = "out"

        def __init__(self):
            self.closed = 0

        def open(self, width, height, fps):
            pass

        def write(self, frame):
            pass

        def close(self):
            self.closed += 1

    sink = Output()
    assert isinstance(sink, Sink) and not sink.accepts_alpha and not sink.live
    sink.abort("the run failed")
    assert sink.closed == 1  # aborting closes, by default
    sink.cancel_on(threading.Event())
