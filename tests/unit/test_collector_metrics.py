"""The collector's /metrics and /health answers, read the way Prometheus and a probe read them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roadwatch.adapters.metrics import MetricsServer
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.xmpp import EventReceiver
from roadwatch.adapters.xmpp.receiver import ArchiveHealth
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.private import private_settings
from roadwatch.services.collector import Collector, CollectorFigures

EXPECTED = {
    # name: Prometheus type
    "roadwatch_collector_received": "counter",
    "roadwatch_collector_stored": "counter",
    "roadwatch_collector_unchanged": "counter",
    "roadwatch_collector_published": "counter",
    "roadwatch_collector_publish_failures": "counter",
    "roadwatch_collector_publish_retries": "counter",
    "roadwatch_collector_store_errors": "counter",
    "roadwatch_collector_batches": "counter",
    "roadwatch_collector_queue": "gauge",
    "roadwatch_collector_publish_backlog": "gauge",
    "roadwatch_collector_xmpp_connected": "gauge",
    "roadwatch_collector_database_reachable": "gauge",
    "roadwatch_collector_archive_write_failures": "counter",
    "roadwatch_collector_archive_spooled": "gauge",
    "roadwatch_collector_stage_seconds": "histogram",
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Collector, MetricsServer]]:
    """A collector as `run()` wires it, never connected (nothing connects before use)."""
    settings = private_settings(tmp_path)
    collector = Collector(settings, EventStore.connect(settings))
    receiver = EventReceiver(
        settings, collector.on_event, collector.load_position, collector.save_position
    )
    collector.registry.register(CollectorFigures(collector, receiver))
    server = MetricsServer("127.0.0.1", 0, collector.registry, lambda: collector.health(receiver))
    try:
        yield collector, server
    finally:
        collector.close()


def test_metrics_parse_as_prometheus_text_with_the_documented_names(
    service: tuple[Collector, MetricsServer],
) -> None:
    collector, server = service
    collector.note_archive(ArchiveHealth(71, 0, 0, 71, 3, "Failed to connect to database"))
    status, content_type, body = server.answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "200 OK"
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {name: families[name].type for name in EXPECTED if name in families} == EXPECTED
    failures = families["roadwatch_collector_archive_write_failures"].samples
    assert [s.value for s in failures if s.name.endswith("_total")] == [71.0]
    stages = {s.labels.get("stage") for s in families["roadwatch_collector_stage_seconds"].samples}
    assert stages == {"stored", "published"}


def test_health_is_degraded_with_reasons_while_archive_writes_fail_or_publishes_wait(
    service: tuple[Collector, MetricsServer],
) -> None:
    collector, server = service
    started = 1_780_000_000_000
    event = Event(
        id=new_event_id(started, "00aa11bb22cc33dd"),
        type=EventType.ACCIDENT,
        status=EventStatus.ACTIVE,
        version=1,
        started_ms=started,
        updated_ms=started,
        ended_ms=None,
        lat=49.25,
        lon=4.03,
        cause_code=2,
        station_ids=("car-1",),
        details={},
    )
    collector.backlog.add(event, committed=0.0, now=0.0)
    [attempt] = collector.backlog.take_due(0.0, 1)
    collector.backlog.failed(attempt.event, 0.0)
    collector.note_archive(ArchiveHealth(71, 0, 0, 2, 30, "Failed to connect to database"))
    status, _, body = server.answer(b"GET /health HTTP/1.1\r\n\r\n")
    health = orjson.loads(body)
    assert status.startswith("503")
    assert health["status"] == "degraded"
    reasons = " | ".join(health["reasons"])
    assert "XMPP session down" in reasons  # never connected
    assert "71 archive writes failed in Prosody" in reasons
    assert "2 messages wait in Prosody's spool" in reasons
    assert "1 events wait for a PubSub publish" in reasons
    assert health["archive"]["write_failures"] == 71
    assert health["publish_backlog"] == 1
