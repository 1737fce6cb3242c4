"""The gateway: MQTT in, validation and detection, events out over XMPP (SPEC §2, §3, §5).

Threads: paho's network thread validates and detects (`Gateway.handle`); the asyncio loop
forwards events to the XMPP sender, applies zone changes, saves snapshots and serves metrics.
The detector is guarded by one lock, held for microseconds per message.

Restart safety (SPEC §3, §10): every accepted message is appended to a journal, and an event
leaves the gateway only after the messages that produced it are written there. Events wait in
an outbox, in the order they were produced, until the XMPP server acknowledges them (XEP-0198);
a snapshot holds the detector and that outbox. At start the snapshot is restored, the journal
replayed through the detector, and the outbox plus whatever the replay yields is sent again:
the collector stores by id and version, and ids are derived from the trace, so repeats are
harmless while nothing is lost or invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from roadwatch.adapters.mqtt import MqttEndpoint, MqttSubscriber, PartitionedSubscriber
from roadwatch.adapters.state import (
    Journal,
    JournalStats,
    LoadedState,
    StateError,
    StateStore,
    encode_message,
    encode_zones,
)
from roadwatch.adapters.xmpp import EventSender, XmppClosed
from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event, EventStatus, EventType, ms_to_rfc3339
from roadwatch.domain.messages import Cam, Denm, Rejected, RejectReason, parse_message
from roadwatch.domain.partition import Partitioning
from roadwatch.domain.zones import Zone
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.services.zone_sync import ZoneSync
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# One log line per rejection reason at most this often; the counters keep the full story.
REJECTION_LOG_INTERVAL_S = 60.0
# Events produced but not yet handed to the XMPP sender; beyond this the MQTT thread waits,
# so back-pressure reaches the broker instead of memory growing.
OUTBOX_LIMIT = 10_000
# CAMs are journaled in batches: written every this many, or within JOURNAL_FLUSH_S when the
# stream pauses. DENMs (QoS 1, acknowledged to the broker once handled) and anything that
# produced an event are written at once.
JOURNAL_BATCH = 256
JOURNAL_FLUSH_S = 0.005
# How long a start waits for the zones before detecting without them.
ZONES_WAIT_S = 30.0
# Time allowed to hand the outbox to the sender at shutdown, before closing it.
DRAIN_TIMEOUT_S = 5.0
# Snapshots are at least this many times their capture time apart (at most 2 % of the time
# with the detector locked).
CAPTURE_SPACING = 50
HTTP_TIMEOUT_S = 5.0
# ZoneSync figures that only grow (the others are levels: zones held, revision).
_ZONE_SYNC_COUNTERS = frozenset(
    {"zone_loads", "zone_polls", "zone_db_failures", "zone_callback_errors"}
)
HTTP_MAX_REQUEST = 8192
# Where an instance sharing the load keeps which place-bound events it owns, inside the
# detector's snapshot (the detector ignores keys it does not know).
PARTITION_SNAPSHOT_KEY = "gateway_partition"
# Place-bound events belong to the instance owning their first position (domain/partition.py);
# zone crossings to the instance owning their station, the only one that tracks it.
_PLACE_BOUND = frozenset({EventType.ACCIDENT, EventType.TRAFFIC_JAM, EventType.HAZARD})


class RejectionLog:
    """Counts rejected messages per reason and logs each reason at a limited rate."""

    def __init__(self, interval_s: float = REJECTION_LOG_INTERVAL_S) -> None:
        self.counts: Counter[str] = Counter()
        self._interval_s = interval_s
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, rejected: Rejected, topic: str, now: float) -> None:
        reason = rejected.reason.value
        self.counts[reason] += 1
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval_s:
            self._unlogged[reason] += 1
            return
        suppressed = self._unlogged.pop(reason, 0)
        self._last_logged[reason] = now
        log.warning(
            "rejected message on %.80s: %s (%s)%s",
            topic,
            reason,
            rejected.detail[:120],
            f"; {suppressed} more since the last report" if suppressed else "",
        )


class EventSink(Protocol):
    """Where the outbox sends events (the XMPP EventSender, or a fake in tests)."""

    async def send(self, event: Event) -> None: ...

    def acknowledged(self) -> int:
        """Count the events the server has acknowledged so far."""
        ...


class SenderSink:
    """Adapts an EventSender to EventSink."""

    def __init__(self, sender: EventSender) -> None:
        self.sender = sender

    async def send(self, event: Event) -> None:
        await self.sender.send(event)

    def acknowledged(self) -> int:
        return self.sender.stats.acked


class Outbox:
    """Events in the order they were produced, kept until the XMPP server acknowledges them.

    `put` runs under the gateway's lock on any thread; forwarding, acknowledgement and
    snapshots run on the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = OUTBOX_LIMIT) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._limit = limit
        self._unsent: deque[Event] = deque()
        self._inflight: deque[Event] = deque()
        self._acked = 0
        self._ready = asyncio.Event()
        self._emptied = asyncio.Event()
        self._room = threading.Condition()
        self._closing = False
        self._waiting = False
        self.forwarded = 0
        self.blocked = 0

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    @property
    def full(self) -> bool:
        return len(self._unsent) >= self._limit

    def put(self, events: Iterable[Event]) -> None:
        """Queue events for sending (never blocks; see `wait_for_room`)."""
        self._unsent.extend(events)
        if threading.get_ident() == self._loop_thread:
            self._ready.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    def wait_for_room(self) -> None:
        """Hold the calling thread while too many events wait for the sender."""
        with self._room:
            if self.full and not self._closing:
                self.blocked += 1
                if self.blocked == 1 or self.blocked % 1000 == 0:
                    log.warning("outbox full (%d events): holding the MQTT thread", self.unsent)
            while self.full and not self._closing:
                self._waiting = True
                self._room.wait(1.0)
            self._waiting = False

    def pending(self) -> list[Event]:
        """Return every event not acknowledged yet, oldest first (call under the lock)."""
        return [*self._inflight, *self._unsent]

    def acknowledge(self, acked_total: int) -> None:
        """Forget the events the server acknowledged; acknowledgements come in sending order."""
        inflight = self._inflight
        while self._acked < acked_total and inflight:
            inflight.popleft()
            self._acked += 1

    def close(self) -> None:
        """Release a waiting producer for good: shutdown must not wait for the sender."""
        with self._room:
            self._closing = True
            self._room.notify_all()

    async def forward(self, sink: EventSink) -> None:
        """Hand events to `sink` in order until it closes."""
        unsent = self._unsent
        while True:
            while unsent:
                event = unsent.popleft()
                # Kept until acknowledged; no await between these lines, so a snapshot taken
                # on this loop always finds the event in one of the two queues.
                self._inflight.append(event)
                self.forwarded += 1
                if self._waiting:
                    with self._room:
                        self._room.notify_all()
                try:
                    await sink.send(event)
                except XmppClosed:
                    return
            self._emptied.set()
            self._ready.clear()
            if not unsent:
                await self._ready.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every event has been handed to the sink; tell whether it happened."""
        if self._unsent:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout_s)
        return not self._unsent


@dataclass(slots=True)
class SnapshotStats:
    """Counters of the snapshots (they only grow, apart from the last_* values)."""

    saved: int = 0
    failures: int = 0
    last_bytes: int = 0
    last_duration_s: float = 0.0
    # How long the last capture held the detector lock.
    last_capture_s: float = 0.0
    last_saved_at: float | None = None
    restored: bool = False
    replayed_records: int = 0
    replayed_events: int = 0
    resent_events: int = 0


@dataclass(slots=True)
class _Capture:
    """A snapshot taken under the lock, to be written outside it."""

    detector: dict[str, Any]
    outbox: list[Event]
    segment: int


class Gateway:
    """Validation, detection, journal and outbox: everything between MQTT and XMPP."""

    def __init__(
        self, settings: Settings, loop: asyncio.AbstractEventLoop, store: StateStore | None
    ) -> None:
        self.settings = settings
        self.detector = Detector(settings.detection_rules)
        self.rejections = RejectionLog()
        self.outbox = Outbox(loop)
        self.store = store
        self.journal: Journal | None = None
        self._journal_stats: JournalStats | None = None
        self._counts_at_start = (0, 0, 0)
        self.snapshots = SnapshotStats()
        self.received = 0
        self.ignored = 0
        self.events: Counter[tuple[str, str]] = Counter()
        self.started_at = time.time()
        self._future_tolerance_ms = round(settings.future_tolerance_s * 1000)
        # Sharing the load with other instances (README "Scaling the gateway").
        self.partitioning: Partitioning = settings.gateway_partitioning
        self.instance = settings.gateway_instance
        # Place-bound events seen here, active ones only: id -> whether this instance sends it.
        self._event_owned: dict[str, bool] = {}
        self.passed_on_received = 0
        self.events_elsewhere = 0
        # Guards the detector, the journal and the outbox's producer side.
        self._lock = threading.Lock()
        # Serialises snapshot writes, which run in worker threads.
        self._save_lock = threading.Lock()
        self._saved_segment = -1
        # Journal records and acknowledgements at the last capture: unchanged means nothing new.
        self._at_last_capture: tuple[int, int | None] = (-1, None)

    # -- the MQTT thread ------------------------------------------------------------------

    def _parse(self, topic: str, payload: bytes) -> Cam | Denm | None:
        """Count one received message and validate it; None when it is ignored or rejected."""
        now = time.time()
        self.received += 1
        try:
            return parse_message(topic, payload, round(now * 1000), self._future_tolerance_ms)
        except Rejected as rejected:
            if rejected.reason is RejectReason.IGNORED_TYPE:
                self.ignored += 1
            else:
                self.rejections.record(rejected, topic, now)
            return None

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate and detect one MQTT message (runs on the MQTT network thread)."""
        message = self._parse(topic, payload)
        if message is None:
            return
        detector = self.detector
        with self._lock:
            accepted = detector.accepted
            events = detector.process(message)
            journal = self.journal
            if journal is not None and detector.accepted != accepted:
                journal.append(encode_message(message))
                # Before any event leaves, and before paho acknowledges a QoS 1 message.
                if events or not topic.endswith("/cam") or journal.pending >= JOURNAL_BATCH:
                    journal.flush()
            if events:
                self._count(events)
                self.outbox.put(events)
        if events and self.outbox.full:
            self.outbox.wait_for_room()

    def handle_partitioned(self, topic: str, payload: bytes, passed_on: bool) -> Sequence[int]:
        """Validate and detect what this instance owns; return the other owners (MQTT thread).

        A message passed on by another instance was already sent to every owner: it is
        never passed on again.
        """
        if passed_on:
            self.passed_on_received += 1
        message = self._parse(topic, payload)
        if message is None:
            return ()
        routes = self.partitioning.routes(
            message.station_id, message.lat, message.lon, cam=isinstance(message, Cam)
        )
        route = routes.get(self.instance)
        detector = self.detector
        with self._lock:
            if route is None:
                # Not ours: its time still moves our clock (see Detector.tick).
                events = detector.tick(message.station_id, message.timestamp_ms)
                journaled = bool(events)  # replayed as a tick, so its expiries come back
            else:
                accepted = detector.accepted
                events = detector.process(message, route.zones, route.traffic)
                journaled = detector.accepted != accepted
            journal = self.journal
            if journal is not None and journaled:
                journal.append(encode_message(message))
                if events or not topic.endswith("/cam") or journal.pending >= JOURNAL_BATCH:
                    journal.flush()
            if events:
                events = self._owned(events)
            if events:
                self._count(events)
                self.outbox.put(events)
        if events and self.outbox.full:
            self.outbox.wait_for_room()
        if passed_on:
            return ()
        return [owner for owner in routes if owner != self.instance]

    def _owned(self, events: list[Event]) -> list[Event]:
        """Keep the events this instance sends (under the lock).

        A place-bound event is sent by the owner of its first version's position, for its
        whole life: the instances that see it through their halo compute it too but stay
        silent, so each version leaves once.
        """
        owned_ids = self._event_owned
        kept: list[Event] = []
        for event in events:
            if event.type not in _PLACE_BOUND:
                kept.append(event)
                continue
            owned = owned_ids.get(event.id)
            if owned is None:
                owned = self.partitioning.area_owner(event.lat, event.lon) == self.instance
            if event.status is EventStatus.ACTIVE:
                owned_ids[event.id] = owned
            else:
                owned_ids.pop(event.id, None)
            if owned:
                kept.append(event)
            else:
                self.events_elsewhere += 1
        return kept

    @property
    def partitioned(self) -> bool:
        return self.partitioning.partitions > 1

    # -- the event loop -------------------------------------------------------------------

    def apply_zones(self, zones: list[Zone]) -> None:
        """Put new zones in force at the current detection time (from ZoneSync)."""
        with self._lock:
            if self.journal is not None:
                self.journal.append(encode_zones(zones))
                self.journal.flush()
            events = self.detector.set_zones(zones)
            if events:
                self._count(events)
                self.outbox.put(events)
        log.info("%d zones in force; %d exits because of the change", len(zones), len(events))

    def flush_journal(self) -> None:
        """Write the journal's batched records (called every few milliseconds)."""
        journal = self.journal
        if journal is not None and journal.pending:
            with self._lock:
                journal.flush()

    def recover(self) -> None:
        """Restore the snapshot, replay the journal, open a new one and save a fresh snapshot."""
        if self.store is None:
            return
        loaded = self.store.load(time.time())
        with self._lock:
            self._restore(loaded)
            self.journal = self.store.open_journal(loaded.next_segment)
            self._journal_stats = self.journal.stats
            # The detector's counters come back with its snapshot; figures start afresh.
            detector = self.detector
            self._counts_at_start = (detector.accepted, detector.stale, detector.leads)
        self.write_snapshot(self.capture(force=True))

    def _restore(self, loaded: LoadedState) -> None:
        detector = self.detector
        if loaded.detector is not None:
            try:
                detector.restore(loaded.detector)
                self.snapshots.restored = True
            except ValueError as exc:
                log.warning("gateway state: snapshot not restored, starting afresh: %s", exc)
            else:
                self._restore_owned(loaded.detector.get(PARTITION_SNAPSHOT_KEY))
        # Possibly delivered already: sent again, the collector keeps one row per id and version.
        self.outbox.put(loaded.outbox)
        self.snapshots.resent_events = len(loaded.outbox)
        replayed: list[Event] = []
        for record in loaded.records:
            if isinstance(record, list):
                replayed += detector.set_zones(record)
            elif self.partitioned:
                replayed += self._replay_partitioned(record)
            else:
                replayed += detector.process(record)
        self.outbox.put(replayed)
        self.snapshots.replayed_records = len(loaded.records)
        self.snapshots.replayed_events = len(replayed)
        log.info(
            "gateway state: %s, %d journal records replayed, %d + %d events to send again",
            "snapshot restored" if self.snapshots.restored else "no snapshot",
            len(loaded.records),
            len(loaded.outbox),
            len(replayed),
        )

    def _replay_partitioned(self, message: Cam | Denm) -> list[Event]:
        """Apply a journaled message as it was applied live: the same route, the same owners."""
        route = self.partitioning.routes(
            message.station_id, message.lat, message.lon, cam=isinstance(message, Cam)
        ).get(self.instance)
        if route is None:
            events = self.detector.tick(message.station_id, message.timestamp_ms)
        else:
            events = self.detector.process(message, route.zones, route.traffic)
        return self._owned(events) if events else events

    def _partition_snapshot(self) -> dict[str, Any]:
        partitioning = self.partitioning
        return {
            "instance": self.instance,
            "partitions": partitioning.partitions,
            "cell_m": partitioning.cell_m,
            "margin_m": partitioning.margin_m,
            "owned": dict(self._event_owned),
        }

    def _restore_owned(self, saved: Any) -> None:
        if not self.partitioned:
            return
        if not isinstance(saved, dict):
            log.warning("gateway state: no partition in the snapshot; owners decided afresh")
            return
        current = self._partition_snapshot()
        changed = [
            key
            for key in ("instance", "partitions", "cell_m", "margin_m")
            if saved.get(key) != current[key]
        ]
        if changed:
            # The saved state was detected under other owners; see README "Scaling the gateway".
            log.warning("gateway state: partitioning changed (%s) since the snapshot", changed)
        owned = saved.get("owned")
        if isinstance(owned, dict):
            self._event_owned = {str(key): bool(value) for key, value in owned.items()}

    def capture(self, acked: int | None = None, force: bool = False) -> _Capture | None:
        """Take a snapshot under the lock, switching the journal to a new segment.

        Returns None when nothing changed since the last one (unless `force`).
        """
        journal = self.journal
        if journal is None:
            return None
        if acked is not None:
            self.outbox.acknowledge(acked)
        with self._lock:
            records = journal.stats.records + journal.pending
            if not force and (records, acked) == self._at_last_capture:
                return None
            self._at_last_capture = (records, acked)
            started = time.perf_counter()
            # The copy allocates a lot at once: collections would multiply the time the
            # MQTT thread waits for the lock, for garbage that cannot exist yet.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                segment = journal.rotate()
                state = self.detector.snapshot()
                if self.partitioned:
                    state[PARTITION_SNAPSHOT_KEY] = self._partition_snapshot()
                capture = _Capture(state, self.outbox.pending(), segment)
            finally:
                if gc_was_enabled:
                    gc.enable()
            self.snapshots.last_capture_s = time.perf_counter() - started
            return capture

    def write_snapshot(self, capture: _Capture | None) -> None:
        """Write a captured snapshot atomically, then drop the journal it makes useless."""
        if capture is None or self.store is None:
            return
        with self._save_lock:
            if capture.segment <= self._saved_segment:
                return  # a newer snapshot is already on disk
            started = time.perf_counter()
            try:
                size = self.store.save_snapshot(
                    capture.detector, capture.outbox, capture.segment, time.time()
                )
            except StateError as exc:
                self.snapshots.failures += 1
                log.error("gateway state: %s (the journal is kept)", exc)
                return
            self._saved_segment = capture.segment
            self.store.remove_segments_before(capture.segment)
        self.snapshots.saved += 1
        self.snapshots.last_bytes = size
        self.snapshots.last_duration_s = time.perf_counter() - started
        self.snapshots.last_saved_at = time.time()

    def close_journal(self) -> None:
        with self._lock:
            if self.journal is not None:
                self.journal.close()
                self.journal = None

    # -- figures --------------------------------------------------------------------------

    def _detector_counts(self) -> tuple[int, int, int]:
        """Return accepted, stale and lead messages since this process started (under the lock)."""
        detector = self.detector
        base_accepted, base_stale, base_leads = self._counts_at_start
        return (
            detector.accepted - base_accepted,
            detector.stale - base_stale,
            detector.leads - base_leads,
        )

    def _count(self, events: list[Event]) -> None:
        for event in events:
            self.events[(event.type.value, event.status.value)] += 1

    def counters(self) -> dict[str, object]:
        """Return the figures of the status file."""
        with self._lock:
            accepted, stale, leads = self._detector_counts()
        return {
            "received": self.received,
            "accepted": accepted,
            "events": sum(self.events.values()),
            "ignored": self.ignored,
            "stale": stale,
            "clock_leads": leads,
            "outbox": self.outbox.unsent,
            "snapshots": self.snapshots.saved,
            "rejected": dict(self.rejections.counts),
            **self._partition_counters(),
        }

    def _partition_counters(self) -> dict[str, int]:
        if not self.partitioned:
            return {}
        return {
            "instance": self.instance,
            "passed_on_received": self.passed_on_received,
            "events_elsewhere": self.events_elsewhere,
        }

    def health(self, mqtt_connected: bool, xmpp_online: bool) -> dict[str, Any]:
        """Return the JSON of GET /health."""
        with self._lock:
            clock = self.detector.clock_ms
        saved = self.snapshots.last_saved_at
        ok = mqtt_connected and xmpp_online
        return {
            "status": "ok" if ok else "degraded",
            "mqtt_connected": mqtt_connected,
            "xmpp_online": xmpp_online,
            "detection_clock": None if clock is None else ms_to_rfc3339(clock),
            "outbox": self.outbox.unsent,
            "last_snapshot_age_s": None if saved is None else round(time.time() - saved, 3),
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def metrics(self, extra: dict[str, int | float]) -> str:
        """Return every figure in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            accepted, stale, leads = self._detector_counts()
            detector = self.detector
            clock = detector.clock_ms
            active = detector.active_counts()
            occupancy = {zone: len(stations) for zone, stations in detector.occupancy().items()}
            journal_stats = self._journal_stats
        out = _Metrics()
        out.counter("messages_received_total", "MQTT messages received", self.received)
        out.counter("messages_accepted_total", "messages that changed detection state", accepted)
        out.counter("messages_stale_total", "messages not newer than their station's last", stale)
        out.counter(
            "messages_ignored_total", "OwnTracks messages that carry no location", self.ignored
        )
        out.family("messages_rejected_total", "counter", "messages rejected, per reason")
        for reason in RejectReason:
            if reason is not RejectReason.IGNORED_TYPE:
                out.sample(
                    "messages_rejected_total",
                    self.rejections.counts[reason.value],
                    reason=reason.value,
                )
        out.counter(
            "clock_leads_total",
            "timestamps ahead of the detection clock by more than the slack",
            leads,
        )
        out.gauge(
            "detection_clock_seconds",
            "the detection clock (event time)",
            -1 if clock is None else clock / 1000,
        )
        out.family("events_total", "counter", "events sent, per type and status")
        for kind in EventType:
            instant = kind.pubsub_node == "zone"  # zone crossings are instant, the rest last
            for status in EventStatus:
                if (status is EventStatus.INSTANT) == instant:
                    count = self.events[(kind.value, status.value)]
                    out.sample("events_total", count, type=kind.value, status=status.value)
        out.family("active_events", "gauge", "active events, per type")
        for kind, count in active.items():
            out.sample("active_events", count, type=kind.value)
        out.family("zone_occupancy", "gauge", "stations inside each zone")
        for zone, count in occupancy.items():
            out.sample("zone_occupancy", count, zone=zone)
        out.gauge("outbox_unsent", "events waiting for the XMPP sender", self.outbox.unsent)
        out.counter(
            "outbox_blocked_total",
            "times the MQTT thread waited for the outbox",
            self.outbox.blocked,
        )
        if journal_stats is not None:
            out.counter(
                "journal_records_total", "records written to the journal", journal_stats.records
            )
            out.counter("journal_writes_total", "journal writes", journal_stats.writes)
            out.counter("journal_bytes_total", "bytes written to the journal", journal_stats.bytes)
            out.counter("journal_errors_total", "failed journal writes", journal_stats.errors)
        snapshots = self.snapshots
        out.counter("snapshots_total", "snapshots saved", snapshots.saved)
        out.counter(
            "snapshot_failures_total", "snapshots that could not be saved", snapshots.failures
        )
        out.gauge("snapshot_bytes", "size of the last snapshot", snapshots.last_bytes)
        out.gauge(
            "snapshot_duration_seconds",
            "time to write the last snapshot",
            snapshots.last_duration_s,
        )
        out.gauge(
            "snapshot_capture_seconds",
            "time the last snapshot held the detector lock",
            snapshots.last_capture_s,
        )
        out.gauge(
            "snapshot_timestamp_seconds",
            "when the last snapshot was saved",
            0 if snapshots.last_saved_at is None else snapshots.last_saved_at,
        )
        out.gauge(
            "restore_snapshot_loaded",
            "1 when this start restored a saved snapshot",
            int(snapshots.restored),
        )
        out.gauge(
            "restore_replayed_records",
            "journal records replayed at start",
            snapshots.replayed_records,
        )
        out.gauge(
            "restore_resent_events",
            "events sent again at start",
            snapshots.resent_events + snapshots.replayed_events,
        )
        for name, value in sorted(extra.items()):
            if name.endswith("_total"):
                out.counter(name, name.removesuffix("_total").replace("_", " "), value)
            else:
                out.gauge(name, name.replace("_", " "), value)
        return out.text()


class _Metrics:
    """Builds a Prometheus text exposition, names prefixed with `roadwatch_gateway_`."""

    PREFIX = "roadwatch_gateway_"

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {self.PREFIX}{name} {help_text}")
        self._lines.append(f"# TYPE {self.PREFIX}{name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        if labels:
            rendered = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
            self._lines.append(f"{self.PREFIX}{name}{{{rendered}}} {_number(value)}")
        else:
            self._lines.append(f"{self.PREFIX}{name} {_number(value)}")

    def counter(self, name: str, help_text: str, value: float) -> None:
        self.family(name, "counter", help_text)
        self.sample(name, value)

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self.family(name, "gauge", help_text)
        self.sample(name, value)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


# -- the metrics endpoint ---------------------------------------------------------------------


class MetricsServer:
    """`GET /metrics` (Prometheus) and `GET /health` (JSON) on a local port."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], str],
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
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
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        async with server:
            await server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        self.requests += 1
        status, content_type, body = self._answer(head[:HTTP_MAX_REQUEST])
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        if target == b"/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._metrics().encode()
        if target == b"/health":
            health = self._health()
            status = "200 OK" if health.get("status") == "ok" else "503 Service Unavailable"
            return status, "application/json", orjson.dumps(health)
        return "404 Not Found", "text/plain", b"not found: try /metrics or /health\n"


# -- the service ------------------------------------------------------------------------------


class GatewayService:
    """The gateway process: its adapters, background tasks, start and orderly stop."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        name = settings.gateway_name
        self.gateway = Gateway(settings, loop, StateStore(settings.run_dir / name))
        self.status = StatusFile(settings.run_dir, name)
        self.sender = EventSender(settings)
        self.sink = SenderSink(self.sender)
        self.zone_sync = ZoneSync(settings, self.gateway.apply_zones)
        endpoint = MqttEndpoint(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=settings.mqtt_gateway_user,
            password=settings.mqtt_gateway_password.get_secret_value(),
            client_id=settings.gateway_client_id,
        )
        self.subscriber: MqttSubscriber | PartitionedSubscriber
        if self.gateway.partitioned:
            _check_margin(settings)
            self.subscriber = PartitionedSubscriber(
                endpoint,
                settings.gateway_instance,
                settings.gateway_share_group,
                self.gateway.handle_partitioned,
            )
        else:
            self.subscriber = MqttSubscriber(endpoint, handler=self.gateway.handle)
        self.metrics = MetricsServer(
            "127.0.0.1",
            settings.gateway_metrics_port,
            lambda: self.gateway.metrics(self._extra_metrics()),
            lambda: self.gateway.health(self.subscriber.is_connected(), self.sender.online),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshotter: asyncio.Task[None] | None = None
        self._subscribed = False

    async def run(self, stop: asyncio.Event) -> None:
        """Recover the state, connect, detect until `stop` is set, then stop in order."""
        gateway = self.gateway
        self.status.write("starting")
        await asyncio.to_thread(gateway.recover)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = [
                tasks.create_task(self.sender.run()),
                tasks.create_task(self.zone_sync.run()),
                tasks.create_task(self._flush_journal()),
            ]
            if self.settings.gateway_metrics_port:
                self._tasks.append(tasks.create_task(self.metrics.run()))
            try:
                if not await _unless_stopped(stop, self._connect()):
                    return
                self._tasks.append(tasks.create_task(gateway.outbox.forward(self.sink)))
                self._snapshotter = tasks.create_task(self._snapshots())
                # Subscribe only once events can leave: QoS 1 DENMs wait in the broker meanwhile.
                await asyncio.to_thread(self.subscriber.start)
                self._subscribed = True
                log.info(
                    "%s ready: %s → %s%s",
                    self.settings.gateway_name,
                    self.settings.mqtt_host,
                    self.settings.collector_jid,
                    f" (instance {self.settings.gateway_instance} of"
                    f" {self.settings.gateway_partitions})"
                    if gateway.partitioned
                    else "",
                )
                while not stop.is_set():
                    self.status.write("ready", {**gateway.counters(), **self.sender.counters()})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)
            finally:
                await self._stop()
        self.status.remove()
        log.info("gateway stopped: %s", gateway.counters())

    async def _connect(self) -> None:
        """Wait for the zones (bounded) and for the XMPP session."""
        try:
            await asyncio.wait_for(self.zone_sync.wait_loaded(), ZONES_WAIT_S)
        except TimeoutError:
            log.warning("no zones after %.0f s; detecting with the saved ones", ZONES_WAIT_S)
        await self.sender.wait_connected()

    async def _stop(self) -> None:
        """Stop taking messages, hand over what is pending, save the state."""
        gateway = self.gateway
        self.status.write("stopping", gateway.counters())
        if self._snapshotter is not None:
            self._snapshotter.cancel()  # the last snapshot is taken below
        gateway.outbox.close()
        if self._subscribed:
            await asyncio.to_thread(self.subscriber.stop)
        gateway.flush_journal()
        if not await gateway.outbox.drain(DRAIN_TIMEOUT_S):
            log.warning(
                "%d events not handed to XMPP; kept for the next start", gateway.outbox.unsent
            )
        await self.sender.close()
        capture = gateway.capture(self.sink.acknowledged(), force=True)
        await asyncio.to_thread(gateway.write_snapshot, capture)
        gateway.close_journal()
        for task in self._tasks:
            task.cancel()

    async def _flush_journal(self) -> None:
        while True:
            await asyncio.sleep(JOURNAL_FLUSH_S)
            self.gateway.flush_journal()

    async def _snapshots(self) -> None:
        snapshots = self.gateway.snapshots
        while True:
            # A big state takes long to copy under the lock: space the copies so that the
            # MQTT thread never waits more than a small share of the time.
            await asyncio.sleep(
                max(
                    self.settings.state_snapshot_interval_s,
                    snapshots.last_capture_s * CAPTURE_SPACING,
                )
            )
            capture = self.gateway.capture(self.sink.acknowledged())
            await asyncio.to_thread(self.gateway.write_snapshot, capture)

    def _extra_metrics(self) -> dict[str, int | float]:
        """Return the XMPP sender's and the zone sync's figures; counters end in `_total`."""
        figures: dict[str, int | float] = {}
        for key, count in self.sender.counters().items():
            figures[key if key == "xmpp_pending" else f"{key}_total"] = count
        for key, value in self.zone_sync.counters().items():
            if isinstance(value, int):
                name = key if key.startswith("zone") else f"zone_{key}"
                figures[f"{name}_total" if key in _ZONE_SYNC_COUNTERS else name] = value
        subscriber = self.subscriber
        if isinstance(subscriber, MqttSubscriber):
            figures["mqtt_reconnects_total"] = subscriber.reconnects
            figures["mqtt_malformed_total"] = subscriber.malformed
        if isinstance(subscriber, PartitionedSubscriber):
            gateway = self.gateway
            figures["partition_instance"] = gateway.instance
            figures["partitions"] = gateway.partitioning.partitions
            figures["partition_forwarded_total"] = subscriber.forwarded
            figures["partition_unrouted_total"] = subscriber.unrouted
            figures["partition_received_total"] = gateway.passed_on_received
            figures["partition_events_elsewhere_total"] = gateway.events_elsewhere
        return figures


def _check_margin(settings: Settings) -> None:
    """Warn when the halo is too narrow for the owner of an event to see all of it."""
    reach = 2 * max(settings.accident_radius_m, settings.hazard_radius_m)
    if settings.gateway_partition_margin_m < reach:
        log.warning(
            "ROADWATCH_GATEWAY_PARTITION_MARGIN_M (%.0f m) is below twice the accident and"
            " hazard radius (%.0f m): events near a cell border may be missed or doubled",
            settings.gateway_partition_margin_m,
            reach,
        )


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` unless `stop` is set first; tell whether it completed."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task not in done:
        return False
    task.result()  # raises what the work raised
    return True


async def run(settings: Settings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await GatewayService(settings, loop).run(stop)


def main(settings: Settings) -> None:
    """Entry point of `roadwatch gateway`."""
    asyncio.run(run(settings))
