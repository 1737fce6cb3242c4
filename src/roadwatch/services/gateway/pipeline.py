"""The gateway's stages in order, on the event loop: detection → journal → outbox.

`Gateway.handle` takes one MQTT message; the intake calls it for each message it decodes.
A single instance detects everything; an instance sharing the load (`handle_partitioned`)
detects what it owns and tells which other instances own the message too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from roadwatch.adapters.state import LoadedState, StateStore
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.messages import Cam, Denm
from roadwatch.domain.zones import Zone
from roadwatch.services.gateway.detection import Detection
from roadwatch.services.gateway.journal import Capture, ForkedSnapshot, StateKeeper
from roadwatch.services.gateway.outbox import Outbox
from roadwatch.services.gateway.partitioning import SNAPSHOT_KEY, Ownership
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# (stage, seconds) -> None: the metrics' stage histograms.
StageObserver = Callable[[str, float], None]
# The per-message stages are observed for every DENM and every message that produced an event,
# and for one CAM in this many: at 30,000 CAM/s a histogram per CAM would cost a few percent
# of a core for no more information.
CAM_SAMPLING = 64


def _ignore(stage: str, seconds: float) -> None:
    """Observe nothing (no metrics)."""


class Gateway:
    """Validation, detection, journal and outbox: everything between MQTT and XMPP."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore | None,
        observe: StageObserver = _ignore,
    ) -> None:
        self.settings = settings
        self.detection = Detection(settings)
        self.detector = self.detection.detector
        self.state = StateKeeper(store)
        self.outbox = Outbox()
        self.ownership = Ownership(settings)
        self.observe = observe
        self.started_at = time.time()
        self._counts_at_start = (0, 0, 0)
        self._cam_count = 0

    @property
    def partitioned(self) -> bool:
        return self.ownership.partitioned

    # -- messages -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate, detect and journal one MQTT message; queue the events it causes."""
        received = time.time()
        message = self.detection.parse(topic, payload, received)
        if message is None:
            return
        started = time.perf_counter()
        detector = self.detector
        accepted = detector.accepted
        events = detector.process(message)
        if detector.accepted != accepted:
            # An event leaves, and a DENM is acknowledged, only once its inputs are written.
            self.state.record(message, urgent=bool(events) or isinstance(message, Denm))
        self._emit(message, events, received, started)

    def handle_partitioned(self, topic: str, payload: bytes, passed_on: bool) -> Sequence[int]:
        """Detect what this instance owns; return the other instances owning the message.

        A message passed on by another instance was already sent to every owner: it is
        never passed on again.
        """
        ownership = self.ownership
        if passed_on:
            ownership.passed_on_received += 1
        received = time.time()
        message = self.detection.parse(topic, payload, received)
        if message is None:
            return ()
        started = time.perf_counter()
        routes = ownership.routes(
            message.station_id, message.lat, message.lon, isinstance(message, Cam)
        )
        events, journaled = self._apply_partitioned(message, routes.get(ownership.instance))
        if journaled:
            self.state.record(message, urgent=bool(events) or isinstance(message, Denm))
        if events:
            events = ownership.keep_owned(events)
        self._emit(message, events, received, started)
        if passed_on:
            return ()
        return [owner for owner in routes if owner != ownership.instance]

    def _apply_partitioned(self, message: Cam | Denm, route: Any) -> tuple[list[Event], bool]:
        """Apply a message as this instance's route says: (events, whether to journal it)."""
        detector = self.detector
        if route is None:
            # Not ours: its time still moves our clock (see Detector.tick); journaled when it
            # expired something, so the replay brings those expiries back.
            events = detector.tick(message.station_id, message.timestamp_ms)
            return events, bool(events)
        accepted = detector.accepted
        events = detector.process(message, route.zones, route.traffic)
        return events, detector.accepted != accepted

    def _emit(
        self, message: Cam | Denm, events: list[Event], received: float, started: float
    ) -> None:
        if events:
            self.detection.count(events)
            self.outbox.put(events)
        elif isinstance(message, Cam):
            self._cam_count += 1
            if self._cam_count % CAM_SAMPLING:
                return
        observe = self.observe
        # Vehicle clock to our clock: includes the broker, the network and any clock skew.
        observe("received", received - message.timestamp_ms / 1000)
        observe("detected", time.perf_counter() - started)

    # -- zones, recovery, snapshots --------------------------------------------------------

    def apply_zones(self, zones: list[Zone]) -> None:
        """Put new zones in force at the current detection time (from ZoneSync)."""
        self.state.record_zones(zones)
        events = self.detector.set_zones(zones)
        if events:
            self.detection.count(events)
            self.outbox.put(events)
        log.info("%d zones in force; %d exits because of the change", len(zones), len(events))

    def recover(self) -> None:
        """Restore the snapshot, replay the journal, open a new one and save a fresh snapshot."""
        loaded = self.state.load()
        if loaded is None:
            return
        self._restore(loaded)
        self.state.open(loaded.next_segment)
        detector = self.detector
        # The detector's counters come back with its snapshot; figures start afresh.
        self._counts_at_start = (detector.accepted, detector.stale, detector.leads)
        self.write_snapshot(self.capture(force=True))

    def _restore(self, loaded: LoadedState) -> None:
        detector = self.detector
        stats = self.state.stats
        if loaded.detector is not None:
            try:
                detector.restore(loaded.detector)
                stats.restored = True
            except ValueError as exc:
                log.warning("gateway state: snapshot not restored, starting afresh: %s", exc)
            else:
                self.ownership.restore(loaded.detector.get(SNAPSHOT_KEY))
        # Possibly delivered already: sent again, the collector keeps one row per id and version.
        self.outbox.put(loaded.outbox)
        stats.resent_events = len(loaded.outbox)
        replayed: list[Event] = []
        for record in loaded.records:
            if isinstance(record, list):
                replayed += detector.set_zones(record)
            elif self.partitioned:
                replayed += self._replay_partitioned(record)
            else:
                replayed += detector.process(record)
        self.outbox.put(replayed)
        stats.replayed_records = len(loaded.records)
        stats.replayed_events = len(replayed)
        log.info(
            "gateway state: %s, %d journal records replayed, %d + %d events to send again",
            "snapshot restored" if stats.restored else "no snapshot",
            len(loaded.records),
            len(loaded.outbox),
            len(replayed),
        )

    def _replay_partitioned(self, message: Cam | Denm) -> list[Event]:
        """Apply a journaled message as it was applied live: the same route, the same owners."""
        ownership = self.ownership
        route = ownership.routes(
            message.station_id, message.lat, message.lon, isinstance(message, Cam)
        ).get(ownership.instance)
        events, _journaled = self._apply_partitioned(message, route)
        return ownership.keep_owned(events) if events else events

    def _detector_state(self) -> dict[str, Any]:
        state = self.detector.snapshot()
        if self.partitioned:
            state[SNAPSHOT_KEY] = self.ownership.snapshot()
        return state

    def capture(self, acked: int | None = None, force: bool = False) -> Capture | None:
        """Snapshot the state now (None when nothing changed since the last, unless `force`)."""
        if acked is not None:
            self.outbox.acknowledge(acked)
        return self.state.capture(self._detector_state, self.outbox.pending(), acked, force)

    def fork_snapshot(self, acked: int | None) -> ForkedSnapshot | None:
        """Have a child process write a snapshot of the state now (see journal.py)."""
        if acked is not None:
            self.outbox.acknowledge(acked)
        return self.state.fork_snapshot(self._detector_state, self.outbox.pending(), acked)

    def write_snapshot(self, capture: Capture | None) -> None:
        """Write a captured snapshot (in a worker thread: it does not touch live state)."""
        self.state.write(capture)

    def flush_journal(self) -> None:
        self.state.flush()

    def close_journal(self) -> None:
        self.state.close()

    # -- figures --------------------------------------------------------------------------

    def detector_counts(self) -> tuple[int, int, int]:
        """Return accepted, stale and lead messages since this process started."""
        detector = self.detector
        base_accepted, base_stale, base_leads = self._counts_at_start
        return (
            detector.accepted - base_accepted,
            detector.stale - base_stale,
            detector.leads - base_leads,
        )

    def counters(self) -> dict[str, object]:
        """Return the figures of the status file."""
        accepted, stale, leads = self.detector_counts()
        detection = self.detection
        return {
            "received": detection.received,
            "accepted": accepted,
            "events": sum(detection.events.values()),
            "ignored": detection.ignored,
            "trust_refused": detection.trust_refused,
            "stale": stale,
            "clock_leads": leads,
            "outbox": self.outbox.unsent,
            "snapshots": self.state.stats.saved,
            "rejected": dict(detection.rejections.counts),
            **self.ownership.counters(),
        }

    def active_counts(self) -> dict[EventType, int]:
        return self.detector.active_counts()
