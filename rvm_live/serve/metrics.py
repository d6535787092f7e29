"""``GET /metrics``: the controller's stats as Prometheus metrics, read at scrape time, one series per stream
(labelled ``stream``), with the model (backbone, device, engine) as an info metric."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CONTENT_TYPE_LATEST", "StatsCollector", "StatsSource", "registry_for", "scrape"]

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")

# stats key -> (metric name without rvm_live_ and _total, help): what only ever grows
COUNTERS = {
    "frames_in": ("frames_in", "Frames received from the source"),
    "frames_out": ("frames_out", "Frames matted and handed to the outputs"),
    "frames_dropped": ("frames_dropped", "Frames dropped by the leaky queues or while an output was down"),
    "source_outages": ("source_outages", "Times the source was lost"),
    "source_outage_s": ("source_outage_seconds", "Seconds spent without a source, in all"),
    "quality_changes": ("quality_changes", "Times the internal resolution was changed to keep up"),
}
# stats key -> help, for the numbers that go up and down
GAUGES = {
    "fps_out": "Output frames per second, over the run",
    "downsample_ratio": "Share of the frame size the network works at",
    "paused": "1 while matting is paused (frames pass through unmatted)",
    "source_up": "1 while the source delivers frames",
    "uptime_s": "Seconds since the stream started",
    "batches": "Network calls so far",
    "mean_batch": "Frames per network call, on average",
}
MODEL_LABELS = ("backbone", "device", "engine")


class StatsSource(Protocol):
    """What the collector reads: a controller, or the server in front of one."""

    def stats(self, stream: str | None = None) -> dict[str, Any]: ...
    def streams(self) -> list[dict[str, Any]]: ...


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float))  # bool included: a flag becomes a 0/1 gauge


def _gauge_help(key: str) -> str:
    return GAUGES.get(key) or key.replace("_", " ").capitalize() + ", as in /stats"


class StatsCollector(Collector):
    """Prometheus collector that reads ``controller.stats()`` at scrape time."""

    def __init__(self, controller: StatsSource):
        self._controller = controller

    def describe(self) -> list[Metric]:
        return []  # nothing to describe up front: registering must not call stats()

    def collect(self) -> Iterator[Metric]:
        stats = self._controller.stats()
        # one sample per stream, labelled with its id (the single stream of a plain run is its own id)
        per_stream: dict[str, Any] = stats.get("streams") or {self._only_stream(): stats}
        counters = {key: CounterMetricFamily(f"rvm_live_{name}", doc, labels=["stream"])
                    for key, (name, doc) in COUNTERS.items()}
        latency = GaugeMetricFamily("rvm_live_latency_seconds", "Capture-to-output latency",
                                    labels=["stream", "quantile"])
        gauges: dict[str, GaugeMetricFamily] = {}
        for stream_id, data in per_stream.items():
            for key, family in counters.items():
                if _is_number(data.get(key)):
                    family.add_metric([stream_id], data[key])
            for name, q in (("p50", "0.5"), ("p95", "0.95"), ("max", "1")):
                value = (data.get("latency_ms") or {}).get(name)
                if _is_number(value):
                    latency.add_metric([stream_id, q], value / 1000)
            for key, value in data.items():  # every other number (fps_out, downsample_ratio, paused, ...)
                if key not in COUNTERS and _is_number(value):
                    if key not in gauges:
                        name = "rvm_live_" + _METRIC_NAME.sub("_", key)
                        gauges[key] = GaugeMetricFamily(name, _gauge_help(key), labels=["stream"])
                    gauges[key].add_metric([stream_id], float(value))
        yield from (f for f in counters.values() if f.samples)
        if latency.samples:
            yield latency
        info = {k: str(stats[k]) for k in MODEL_LABELS if stats.get(k) is not None}
        if info:
            yield InfoMetricFamily("rvm_live_model", "Model backbone, inference device and engine", value=info)
        yield from gauges.values()

    def _only_stream(self) -> str:
        listed = self._controller.streams()
        return str(listed[0]["id"]) if len(listed) == 1 else "0"


def registry_for(controller: StatsSource) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the controller's stats."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(controller))
    return registry


def scrape(registry: CollectorRegistry) -> bytes:
    """The metrics page."""
    return generate_latest(registry)
