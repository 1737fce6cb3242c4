"""Metrics stage: the gateway's figures for Prometheus, and its health.

Counters that change per message are kept as plain integers by the stages and read when
Prometheus scrapes (a custom collector), so the hot path pays nothing for them; the stage
latencies are real histograms (sampled for CAMs, see pipeline.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from roadwatch.adapters.metrics import stage_histogram
from roadwatch.domain.events import EventStatus, EventType, ms_to_rfc3339
from roadwatch.domain.messages import RejectReason
from roadwatch.services.gateway.intake import Canary, Intake
from roadwatch.services.gateway.pipeline import Gateway

PREFIX = "roadwatch_gateway_"


class GatewayMetrics:
    """The gateway's registry: stage histograms plus a collector reading live figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stages = stage_histogram(self.registry, "gateway")
        self._by_stage = {
            stage: self.stages.labels(stage=stage) for stage in ("received", "detected", "sent")
        }

    def observe(self, stage: str, seconds: float) -> None:
        """Record one stage latency (an unknown stage is a programming error)."""
        self._by_stage[stage].observe(seconds)

    def watch(
        self, gateway: Gateway, intake: Intake | None, extra: Callable[[], dict[str, int | float]]
    ) -> None:
        """Read `gateway`, `intake` and `extra()` (XMPP, zones) at every scrape."""
        self.registry.register(_LiveFigures(gateway, intake, extra))


class _LiveFigures(Collector):
    def __init__(
        self,
        gateway: Gateway,
        intake: Intake | None,
        extra: Callable[[], dict[str, int | float]],
    ) -> None:
        self.gateway = gateway
        self.intake = intake
        self.extra = extra

    def describe(self) -> list[Metric]:
        return []  # the figures are read at scrape time only

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        detection = gateway.detection
        accepted, stale, leads = gateway.detector_counts()

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, text, value=value)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, text, value=value)

        yield counter("messages_received", "MQTT messages received", detection.received)
        yield counter("messages_accepted", "messages that changed detection state", accepted)
        yield counter("messages_stale", "messages not newer than their station's last", stale)
        yield counter(
            "messages_ignored", "OwnTracks messages that carry no location", detection.ignored
        )
        yield counter(
            "trust_refused",
            "messages declaring a trusted stationType their account may not claim",
            detection.trust_refused,
        )
        yield counter(
            "account_registry_reloads",
            "times the account registry was read",
            detection.accounts.reloads,
        )
        rejected = CounterMetricFamily(
            PREFIX + "messages_rejected", "messages rejected, per reason", labels=["reason"]
        )
        for reason in RejectReason:
            if reason is not RejectReason.IGNORED_TYPE:
                rejected.add_metric([reason.value], detection.rejections.counts[reason.value])
        yield rejected
        yield counter(
            "clock_leads", "timestamps ahead of the detection clock by more than the slack", leads
        )
        clock = gateway.detector.clock_ms
        yield gauge(
            "detection_clock_seconds",
            "the detection clock (event time)",
            -1 if clock is None else clock / 1000,
        )
        events = CounterMetricFamily(
            PREFIX + "events", "events sent, per type and status", labels=["type", "status"]
        )
        for kind in EventType:
            instant = kind.pubsub_node == "zone"  # zone crossings are instant, the rest last
            for status in EventStatus:
                if (status is EventStatus.INSTANT) == instant:
                    count = detection.events[(kind.value, status.value)]
                    events.add_metric([kind.value, status.value], count)
        yield events
        active = GaugeMetricFamily(
            PREFIX + "active_events", "active events, per type", labels=["type"]
        )
        for kind, count in gateway.active_counts().items():
            active.add_metric([kind.value], count)
        yield active
        occupancy = GaugeMetricFamily(
            PREFIX + "zone_occupancy", "stations inside each zone", labels=["zone"]
        )
        for zone, stations in gateway.detector.occupancy().items():
            occupancy.add_metric([zone], len(stations))
        yield occupancy
        outbox = gateway.outbox
        yield gauge("outbox_unsent", "events waiting for the XMPP sender", outbox.unsent)
        yield gauge("outbox_inflight", "events sent, not yet acknowledged", outbox.inflight)
        yield counter("outbox_full", "times the full outbox paused the intake", outbox.blocked)
        yield from _state_figures(gateway, counter, gauge)
        if self.intake is not None:
            yield from _intake_figures(self.intake, counter, gauge)
        for name, value in sorted(self.extra().items()):
            if name.endswith("_total"):
                yield counter(name.removesuffix("_total"), name.replace("_", " "), value)
            else:
                yield gauge(name, name.replace("_", " "), value)


def _state_figures(
    gateway: Gateway,
    counter: Callable[[str, str, float], CounterMetricFamily],
    gauge: Callable[[str, str, float], GaugeMetricFamily],
) -> Iterator[Metric]:
    journal = gateway.state.journal_stats
    if journal is not None:
        yield counter("journal_records", "records written to the journal", journal.records)
        yield counter("journal_writes", "journal writes", journal.writes)
        yield counter("journal_bytes", "bytes written to the journal", journal.bytes)
        yield counter("journal_errors", "failed journal writes", journal.errors)
    snapshots = gateway.state.stats
    yield counter("snapshots", "snapshots saved", snapshots.saved)
    yield counter("snapshot_failures", "snapshots that could not be saved", snapshots.failures)
    yield gauge("snapshot_bytes", "size of the last snapshot", snapshots.last_bytes)
    yield gauge(
        "snapshot_duration_seconds", "time to write the last snapshot", snapshots.last_duration_s
    )
    yield gauge(
        "snapshot_capture_seconds",
        "time the last snapshot held the event loop",
        snapshots.last_capture_s,
    )
    yield gauge(
        "snapshot_timestamp_seconds",
        "when the last snapshot was saved",
        0 if snapshots.last_saved_at is None else snapshots.last_saved_at,
    )
    yield gauge(
        "restore_snapshot_loaded",
        "1 when this start restored a saved snapshot",
        int(snapshots.restored),
    )
    yield gauge(
        "restore_replayed_records", "journal records replayed at start", snapshots.replayed_records
    )
    yield gauge(
        "restore_resent_events",
        "events sent again at start",
        snapshots.resent_events + snapshots.replayed_events,
    )


def _intake_figures(
    intake: Intake,
    counter: Callable[[str, str, float], CounterMetricFamily],
    gauge: Callable[[str, str, float], GaugeMetricFamily],
) -> Iterator[Metric]:
    for session, client in (("bulk", intake.bulk), ("denm", intake.reliable)):
        stats = client.stats
        for name, text, value in (
            ("connects", "MQTT connections made", stats.connects),
            ("received", "MQTT messages received", stats.received),
            ("malformed", "malformed packets from the broker", stats.malformed),
            ("handler_errors", "messages the gateway failed on", stats.handler_errors),
            (
                "refused_subscriptions",
                "subscriptions the broker refused",
                stats.refused_subscriptions,
            ),
        ):
            family = CounterMetricFamily(
                f"{PREFIX}mqtt_{name}", f"{text}, per session", labels=["session"]
            )
            family.add_metric([session], value)
            yield family
        connected = GaugeMetricFamily(
            f"{PREFIX}mqtt_connected", "1 while the session is connected", labels=["session"]
        )
        connected.add_metric([session], int(client.is_connected()))
        yield connected
    canary = intake.canary
    yield counter("canary_sent", "canaries sent through the DENM session", canary.sent)
    yield counter("canary_returned", "canaries back through the DENM session", canary.returned)
    yield gauge("canary_age_seconds", "seconds since a canary last came back", canary.age_s)
    yield gauge(
        "denm_path_stalled", "1 while DENMs do not flow through the broker", int(canary.stalled)
    )
    yield counter("denm_path_stalls", "times the DENM path was found stalled", canary.stalls)
    if intake.partitioned:
        yield counter(
            "partition_forwarded", "messages passed on to other instances", intake.forwarded
        )


def health(
    gateway: Gateway, mqtt_connected: bool, xmpp_online: bool, canary: Canary | None = None
) -> dict[str, Any]:
    """Return the JSON of GET /health: "ok", or "degraded" with the reasons."""
    problems: list[str] = []
    if not mqtt_connected:
        problems.append("MQTT disconnected")
    if not xmpp_online:
        problems.append("XMPP offline")
    stalled = canary is not None and canary.stalled
    if stalled:
        problems.append("DENM path stalled")
    clock = gateway.detector.clock_ms
    saved = gateway.state.stats.last_saved_at
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "mqtt_connected": mqtt_connected,
        "xmpp_online": xmpp_online,
        "denm_path": "stalled" if stalled else "flowing",
        "canary_age_s": None if canary is None else round(canary.age_s, 3),
        "detection_clock": None if clock is None else ms_to_rfc3339(clock),
        "outbox": gateway.outbox.unsent,
        "last_snapshot_age_s": None if saved is None else round(time.time() - saved, 3),
        "uptime_s": round(time.time() - gateway.started_at, 3),
    }
