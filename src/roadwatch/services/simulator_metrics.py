"""The simulator's GET /metrics and GET /health, like every other service's.

The simulator's loop is synchronous, so the server (adapters/metrics.py) runs on an event loop
of its own in a daemon thread; the figures are the ones the progress reporter already keeps,
read when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from roadwatch.adapters.metrics import MetricsServer

log = logging.getLogger(__name__)

PREFIX = "roadwatch_simulator_"
# Figures older than this mean the simulation loop is stuck.
STALE_AFTER_S = 15.0


class SimulatorMetrics(Collector):
    """Figures of one simulator run, served on a loopback port."""

    def __init__(self, port: int, connected: Callable[[], bool]) -> None:
        self.port = port
        self._connected = connected
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._figures: dict[str, float] = {}
        self._events: dict[str, int] = {}
        self._updated_at = time.monotonic()

    def update(self, figures: Mapping[str, float], events: Mapping[str, int]) -> None:
        """Take the latest figures (called by the progress reporter)."""
        self._figures = dict(figures)
        self._events = dict(events)
        self._updated_at = time.monotonic()

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[Metric]:
        figures = self._figures
        yield GaugeMetricFamily(
            PREFIX + "vehicles", "vehicles simulated", value=figures.get("vehicles", 0)
        )
        yield CounterMetricFamily(
            PREFIX + "published", "messages published", value=figures.get("published", 0)
        )
        yield GaugeMetricFamily(
            PREFIX + "rate", "messages published per second", value=figures.get("msg_per_s", 0)
        )
        yield CounterMetricFamily(
            PREFIX + "dropped",
            "CAMs dropped while the broker was away",
            value=figures.get("dropped", 0),
        )
        staged = CounterMetricFamily(
            PREFIX + "staged_events", "events the scenario staged, per kind", labels=["kind"]
        )
        for kind, count in sorted(self._events.items()):
            staged.add_metric([kind], count)
        yield staged
        yield GaugeMetricFamily(
            PREFIX + "mqtt_connected",
            "1 while every connection is up",
            value=int(self._connected()),
        )

    def health(self) -> dict[str, Any]:
        problems = []
        if not self._connected():
            problems.append("MQTT disconnected")
        age = time.monotonic() - self._updated_at
        if age > STALE_AFTER_S:
            problems.append(f"no progress for {age:.0f} s")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "published": self._figures.get("published", 0),
            "vehicles": self._figures.get("vehicles", 0),
        }

    @classmethod
    def serve(cls, port: int, connected: Callable[[], bool]) -> SimulatorMetrics:
        """Create the figures and serve them (a port of 0 serves nothing)."""
        metrics = cls(port, connected)
        metrics.start()
        return metrics

    def start(self) -> None:
        """Serve in a daemon thread (a port of 0 serves nothing)."""
        if not self.port:
            return
        server = MetricsServer("127.0.0.1", self.port, self.registry, self.health)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.run()), name="simulator-metrics", daemon=True
        )
        thread.start()
