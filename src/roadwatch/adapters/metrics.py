"""One health and metrics contract for every Python service: `GET /health` and `GET /metrics`.

Each service keeps its figures in its own `prometheus_client` registry (no global state, so
tests can run several services in one process) and serves them with `MetricsServer` on a
loopback port. `/health` answers JSON `{"status": "ok" | "degraded" | ..., ...}` with 200 when
the status is "ok" and 503 otherwise, so a probe needs no parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 5.0
HTTP_MAX_REQUEST = 8192
# Latency buckets for the pipeline's stages: from a tenth of a millisecond to half a minute,
# dense around the 100 ms and 500 ms targets (docs/PERFORMANCE.md).
STAGE_BUCKETS = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

HealthProbe = Callable[[], dict[str, Any]]


def stage_histogram(registry: CollectorRegistry, service: str) -> Histogram:
    """Return the per-stage latency histogram of `service` (label `stage`)."""
    return Histogram(
        f"roadwatch_{service}_stage_seconds",
        "time spent reaching each stage of the pipeline (see docs/ACKNOWLEDGEMENTS.md)",
        ["stage"],
        registry=registry,
        buckets=STAGE_BUCKETS,
    )


class MetricsServer:
    """`GET /metrics` (Prometheus text) and `GET /health` (JSON) on a local port."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: HealthProbe
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._health = health
        self.requests = 0

    async def run(self) -> None:
        """Serve until cancelled; a port that cannot be bound is logged, not fatal."""
        try:
            server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            log.warning(
                "metrics: cannot listen on %s:%d (%s); serving none", self.host, self.port, exc
            )
            return
        log.info("metrics and health on http://%s:%d/", self.host, self.port)
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        self.requests += 1
        try:
            status, content_type, body = self.answer(head[:HTTP_MAX_REQUEST])
        except Exception:  # a failing probe must answer, and must not end the server
            log.exception("metrics: answering %r failed", head[:80])
            status, content_type, body = "500 Internal Server Error", "text/plain", b"error\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    def answer(self, head: bytes) -> tuple[str, str, bytes]:
        """Answer one request head: (status line, content type, body)."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if target == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if target == b"/health":
            health = self._health()
            status = "200 OK" if health.get("status") == "ok" else "503 Service Unavailable"
            return status, "application/json", orjson.dumps(health)
        return "404 Not Found", "text/plain", b"not found: try /metrics or /health\n"
