"""The detection core (docs/contract/detection.md §1): validated messages in, events out, on event
time only.

The detection clock (docs/contract/detection.md §2)
-------------------
Expiry and clearing follow the detection clock, which is built from the messages' own
timestamps (never the wall clock), so a replayed trace yields the same events at any speed.
A vehicle whose clock runs ahead (validation lets through up to the 5-minute future tolerance
of docs/contract/mqtt.md §6) must not drag that clock forward and expire everybody else's state
early, so a timestamp does not always move it:

- the first message sets it; a timestamp at most `clock_slack_ms` ahead of the clock moves it
  (ordinary traffic, jitter);
- a timestamp further ahead is a *lead*; it moves the clock only once confirmed:
  - by a lead of another station: the clock goes to the second-highest lead, so one
    station ahead of everyone else never sets the time alone;
  - by the same station when it has been alone for `clock_slack_ms` of its own time (its
    leads span that long while no other station moved the clock): nobody contradicts it;
  - at once when it is more than `future_tolerance_ms` ahead: no valid vehicle clock leads the
    gateway by that much, so the clock had fallen behind (a quiet period).

A skewed vehicle among ordinary traffic therefore never moves the clock; a lone vehicle after
a quiet period moves it after `clock_slack_ms`. Messages behind the clock never change it.

Memory stays bounded: a station's last-seen times are forgotten once it has been silent longer
than the longest rule window; a message no newer than the newest forgotten time of its kind is
then stale whatever its station, so forgetting never lets a duplicate through.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from roadwatch.domain.accident import ACCIDENT_CAUSE_CODE, AccidentDetector, AccidentRules
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.hazard import HazardDetector, HazardRules
from roadwatch.domain.messages import DEFAULT_FUTURE_TOLERANCE_MS, Cam, Denm
from roadwatch.domain.snapshots import SnapshotFormat, Snapshotting
from roadwatch.domain.traffic_jam import TRAFFIC_JAM_CAUSE_CODE, JamRules, TrafficJamDetector
from roadwatch.domain.zones import Zone, ZoneDetector, ZoneRules

# Far beyond any event time: "nothing is due".
_NEVER = 1 << 62
# Forgotten stations are swept at most this often, as a share of the memory span.
_SWEEPS_PER_MEMORY = 4


@dataclass(frozen=True, slots=True)
class DetectionRules:
    """The thresholds of every sub-detector, and of the detection clock."""

    accident: AccidentRules = field(default_factory=AccidentRules)
    traffic_jam: JamRules = field(default_factory=JamRules)
    zones: ZoneRules = field(default_factory=ZoneRules)
    hazard: HazardRules = field(default_factory=HazardRules)
    # How far ahead of the clock a timestamp may move it without confirmation (see above).
    clock_slack_ms: int = 10_000
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS

    def __post_init__(self) -> None:
        if self.clock_slack_ms < 0:
            raise ValueError("clock slack must not be negative")
        if self.future_tolerance_ms < self.clock_slack_ms:
            raise ValueError("future tolerance must be at least the clock slack")

    @property
    def cam_memory_ms(self) -> int:
        """Return how long a CAM can matter: the longest window of the rules that use CAMs."""
        jam = self.traffic_jam
        return max(self.zones.timeout_ms, jam.window_ms, jam.clear_after_ms)

    @property
    def denm_memory_ms(self) -> int:
        """Return how long a DENM can matter: the longest window of the rules that use DENMs."""
        accident = self.accident
        return max(
            accident.window_ms + accident.expiry_ms,
            self.hazard.expiry_ms,
            self.traffic_jam.window_ms,
        )


class Detector(Snapshotting):
    """Feed messages in arrival order; get back the events they cause, only on change.

    Staleness is judged per station and per kind (CAM, DENM): MQTT orders messages only
    within one topic, so a DENM may legitimately arrive after a newer CAM of the same vehicle.
    """

    __slots__ = (
        "_accidents",
        "_due_ms",
        "_forgotten_cam_ms",
        "_forgotten_denm_ms",
        "_hazards",
        "_jams",
        "_last_cam_ms",
        "_last_denm_ms",
        "_leads",
        "_next_sweep_ms",
        "_run_start_ms",
        "_run_station",
        "_slack_ms",
        "_zones",
        "accepted",
        "clock_ms",
        "leads",
        "rules",
        "stale",
    )

    def __init__(self, rules: DetectionRules | None = None, zones: Sequence[Zone] = ()) -> None:
        self.rules = rules if rules is not None else DetectionRules()
        self._accidents = AccidentDetector(self.rules.accident)
        self._hazards = HazardDetector(self.rules.hazard)
        self._jams = TrafficJamDetector(self.rules.traffic_jam)
        self._zones = ZoneDetector(self.rules.zones, list(zones))
        self._last_cam_ms: dict[str, int] = {}
        self._last_denm_ms: dict[str, int] = {}
        self._forgotten_cam_ms = -1
        self._forgotten_denm_ms = -1
        self._next_sweep_ms = _NEVER
        # Unconfirmed leads: station -> its newest timestamp ahead of the clock.
        self._leads: dict[str, int] = {}
        # The station whose leads have not been interrupted by anyone moving the clock.
        self._run_station: str | None = None
        self._run_start_ms = 0
        self._due_ms = _NEVER
        self._slack_ms = self.rules.clock_slack_ms
        self.clock_ms: int | None = None
        self.accepted = 0
        self.stale = 0
        self.leads = 0

    # -- messages ---------------------------------------------------------------------------

    def process(
        self, message: Cam | Denm, track_zones: bool = True, detect_traffic: bool = True
    ) -> list[Event]:
        """Apply one message; return the events it causes, oldest cause first.

        A gateway instance sharing the load (domain/partition.py) keeps zone state only for
        its own stations (`track_zones`) and place-bound state (jams, accidents, hazards)
        only for its own places and their halo (`detect_traffic`).
        """
        if not isinstance(message, Cam):
            return self._process_denm(message) if detect_traffic else []
        # The CAM path is the hot one (docs/contract/targets.md §3): kept flat, without helper calls
        # when idle.
        t = message.timestamp_ms
        station_id = message.station_id
        last_seen = self._last_cam_ms
        previous = last_seen.get(station_id)
        if previous is None:
            if t <= self._forgotten_cam_ms:
                self.stale += 1  # as old as what was forgotten: cannot be told from a duplicate
                return []
        elif t <= previous:
            # Late or duplicate delivery (docs/contract/mqtt.md §7): changes no state.
            self.stale += 1
            return []
        last_seen[station_id] = t
        self.accepted += 1
        clock = self.clock_ms
        if clock is None or t > clock:
            if clock is not None and t - clock <= self._slack_ms and not self._leads:
                clock = self.clock_ms = t  # the ordinary step, as in _set_clock
                self._run_station = None
            else:
                clock = self._advance(station_id, t)
        events = self._expire(clock) if clock >= self._due_ms else []
        if detect_traffic:
            jams = self._jams
            produced = jams.on_cam(message, clock)
            if produced:
                events += produced
            due = jams.next_due_ms()
            if due is not None and due < self._due_ms:
                self._due_ms = due
        if track_zones:
            zones = self._zones
            produced = zones.on_position(station_id, t, message.lat, message.lon, clock)
            if produced:
                events += produced
                # A zone timeout can only come closer through an enter, which is an event: a
                # refreshed station only pushes its own timeout later, and an early `_due_ms`
                # is merely re-checked by `_expire`.
                due = zones.next_due_ms()
                if due is not None and due < self._due_ms:
                    self._due_ms = due
        if clock >= self._next_sweep_ms:
            self._sweep(clock)
        return events

    def _process_denm(self, denm: Denm) -> list[Event]:
        t = denm.timestamp_ms
        station_id = denm.station_id
        previous = self._last_denm_ms.get(station_id)
        if t <= (self._forgotten_denm_ms if previous is None else previous):
            self.stale += 1  # late, duplicate, or as old as what was forgotten
            return []
        self._last_denm_ms[station_id] = t
        self.accepted += 1
        clock = self.clock_ms
        if clock is None or t > clock:
            clock = self._advance(station_id, t)
        events = self._expire(clock) if clock >= self._due_ms else []
        cause = denm.cause_code
        detector: AccidentDetector | TrafficJamDetector | HazardDetector
        if cause == ACCIDENT_CAUSE_CODE:
            detector = self._accidents
            events += detector.handle(denm, clock)
        elif cause == TRAFFIC_JAM_CAUSE_CODE:
            detector = self._jams
            events += detector.on_denm(denm, clock)
        else:
            detector = self._hazards
            events += detector.on_denm(denm, clock)
        self._note_due(detector.next_due_ms())
        if clock >= self._next_sweep_ms:
            self._sweep(clock)
        return events

    def tick(self, station_id: str, timestamp_ms: int) -> list[Event]:
        """Move the clock with a message that another instance handles; return what expires.

        An instance sharing the load owns a part of the messages, but it receives a random
        share of all of them: their timestamps keep its clock close to the whole fleet's,
        so its timeouts fire when a single gateway's would. No other state changes.
        """
        clock = self.clock_ms
        if clock is not None and timestamp_ms <= clock:
            return []
        clock = self._advance(station_id, timestamp_ms)
        events = self._expire(clock) if clock >= self._due_ms else []
        if clock >= self._next_sweep_ms:
            self._sweep(clock)
        return events

    def process_batch(self, messages: Iterable[Cam | Denm]) -> list[Event]:
        """Apply messages in order; the same events as processing them one by one."""
        events: list[Event] = []
        process = self.process
        for message in messages:
            produced = process(message)
            if produced:
                events.extend(produced)
        return events

    # -- zones ------------------------------------------------------------------------------

    def set_zones(self, zones: Sequence[Zone]) -> list[Event]:
        """Replace the zones at the current detection time; return the exits this causes."""
        clock = self.clock_ms
        events = self._zones.set_zones(list(zones), 0 if clock is None else clock)
        self._note_due(self._zones.next_due_ms())
        return events

    @property
    def zones(self) -> tuple[Zone, ...]:
        """Return the zones in force."""
        return self._zones.zones

    def occupancy(self) -> dict[str, list[str]]:
        """Return every zone's id with the stations inside it now."""
        return self._zones.occupancy()

    # -- state ------------------------------------------------------------------------------

    def active_events(self) -> list[Event]:
        """Return the latest version of every active event, oldest first."""
        events = [
            *self._accidents.active_events(),
            *self._jams.active_events(),
            *self._hazards.active_events(),
        ]
        events.sort(key=lambda event: (event.started_ms, event.id))
        return events

    def active_counts(self) -> dict[EventType, int]:
        """Count the active events per type (zone crossings are instant, never active)."""
        return {
            EventType.ACCIDENT: len(self._accidents.active_events()),
            EventType.TRAFFIC_JAM: len(self._jams.active_events()),
            EventType.HAZARD: len(self._hazards.active_events()),
        }

    @property
    def station_count(self) -> int:
        """Return how many stations' last-seen times are remembered."""
        return len(self._last_cam_ms.keys() | self._last_denm_ms.keys())

    # -- saved state ------------------------------------------------------------------------

    # Each sub-detector's snapshot, with its own format, sits under its key.
    SNAPSHOT: ClassVar[SnapshotFormat] = SnapshotFormat("a detector", 1)

    def _state(self) -> dict[str, Any]:
        return {
            "clock_ms": self.clock_ms,
            "leads": dict(self._leads),
            "run": None if self._run_station is None else [self._run_station, self._run_start_ms],
            "last_cam_ms": dict(self._last_cam_ms),
            "last_denm_ms": dict(self._last_denm_ms),
            "forgotten_cam_ms": self._forgotten_cam_ms,
            "forgotten_denm_ms": self._forgotten_denm_ms,
            "next_sweep_ms": self._next_sweep_ms,
            "accepted": self.accepted,
            "stale": self.stale,
            "lead_count": self.leads,
            "accident": self._accidents.snapshot(),
            "traffic_jam": self._jams.snapshot(),
            "zones": self._zones.snapshot(),
            "hazard": self._hazards.snapshot(),
        }

    def _from_state(self, state: dict[str, Any]) -> Detector:
        # Keys it does not know are left alone: the gateway keeps its own part beside these.
        fresh = Detector(self.rules)
        clock = state["clock_ms"]
        fresh.clock_ms = None if clock is None else int(clock)
        fresh._leads = {str(s): int(t) for s, t in state["leads"].items()}
        run = state["run"]
        if run is not None:
            fresh._run_station, fresh._run_start_ms = str(run[0]), int(run[1])
        fresh._last_cam_ms = {str(s): int(t) for s, t in state["last_cam_ms"].items()}
        fresh._last_denm_ms = {str(s): int(t) for s, t in state["last_denm_ms"].items()}
        fresh._forgotten_cam_ms = int(state["forgotten_cam_ms"])
        fresh._forgotten_denm_ms = int(state["forgotten_denm_ms"])
        fresh._next_sweep_ms = int(state["next_sweep_ms"])
        fresh.accepted = int(state["accepted"])
        fresh.stale = int(state["stale"])
        fresh.leads = int(state["lead_count"])
        fresh._accidents.restore(state["accident"])
        fresh._jams.restore(state["traffic_jam"])
        fresh._zones.restore(state["zones"])
        fresh._hazards.restore(state["hazard"])
        fresh._due_ms = _NEVER
        for detector in (fresh._accidents, fresh._jams, fresh._zones, fresh._hazards):
            fresh._note_due(detector.next_due_ms())
        return fresh

    # -- the clock --------------------------------------------------------------------------

    def _advance(self, station_id: str, t: int) -> int:
        """Move the clock for a timestamp newer than it, as far as the rules allow."""
        clock = self.clock_ms
        if clock is None:
            self._next_sweep_ms = t + self._sweep_interval_ms()
            return self._set_clock(t)
        if t - clock <= self.rules.clock_slack_ms:
            return self._set_clock(t)
        return self._lead(station_id, t, clock)

    def _set_clock(self, clock: int) -> int:
        self.clock_ms = clock
        self._run_station = None  # someone moved the clock: any lone run is interrupted
        leads = self._leads
        if leads:
            reached = clock + self.rules.clock_slack_ms
            for station_id in [s for s, t in leads.items() if t <= reached]:
                del leads[station_id]
        return clock

    def _lead(self, station_id: str, t: int, clock: int) -> int:
        """Record a timestamp far ahead of the clock; return the clock it confirms."""
        self.leads += 1
        rules = self.rules
        leads = self._leads
        leads[station_id] = t
        if t - clock > rules.future_tolerance_ms:
            return self._set_clock(t)
        if len(leads) >= 2:
            # The second-highest lead: at least two stations are that far ahead.
            top = second = clock
            for value in leads.values():
                if value > top:
                    top, second = value, top
                elif value > second:
                    second = value
            return self._set_clock(second)
        if self._run_station == station_id:
            if t - self._run_start_ms >= rules.clock_slack_ms:
                return self._set_clock(t)
        else:
            self._run_station = station_id
            self._run_start_ms = t
        return clock

    # -- expiry -----------------------------------------------------------------------------

    def _note_due(self, due: int | None) -> None:
        if due is not None and due < self._due_ms:
            self._due_ms = due

    def _expire(self, clock: int) -> list[Event]:
        """Run every sub-detector's expiry that is due by `clock`; merge their events by time."""
        produced: list[list[Event]] = []
        due = _NEVER
        for detector in (self._accidents, self._jams, self._zones, self._hazards):
            next_due = detector.next_due_ms()
            if next_due is not None and next_due <= clock:
                events = detector.expire(clock)
                if events:
                    produced.append(events)
                next_due = detector.next_due_ms()
            if next_due is not None and next_due < due:
                due = next_due
        self._due_ms = due
        if not produced:
            return []
        if len(produced) == 1:
            return produced[0]
        # Each detector's own order is kept; across detectors, earlier event time first.
        return list(heapq.merge(*produced, key=lambda event: event.updated_ms))

    def _sweep_interval_ms(self) -> int:
        rules = self.rules
        return max(1, min(rules.cam_memory_ms, rules.denm_memory_ms) // _SWEEPS_PER_MEMORY)

    def _sweep(self, clock: int) -> None:
        """Forget stations silent for longer than any rule can look back."""
        self._last_cam_ms, forgotten = _forget(self._last_cam_ms, clock - self.rules.cam_memory_ms)
        self._forgotten_cam_ms = max(self._forgotten_cam_ms, forgotten)
        self._last_denm_ms, forgotten = _forget(
            self._last_denm_ms, clock - self.rules.denm_memory_ms
        )
        self._forgotten_denm_ms = max(self._forgotten_denm_ms, forgotten)
        self._next_sweep_ms = clock + self._sweep_interval_ms()


def _forget(last_seen: dict[str, int], horizon: int) -> tuple[dict[str, int], int]:
    """Split off the stations last seen at or before `horizon`; return the rest and the newest."""
    kept = {station: t for station, t in last_seen.items() if t > horizon}
    if len(kept) == len(last_seen):
        return last_seen, -1
    newest = max((t for t in last_seen.values() if t <= horizon), default=-1)
    return kept, newest
