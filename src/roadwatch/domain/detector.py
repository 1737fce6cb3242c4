"""The detection core (SPEC §3): validated messages in, events out, on event time only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from roadwatch.domain.accident import ACCIDENT_CAUSE_CODE, AccidentDetector, AccidentRules
from roadwatch.domain.events import Event
from roadwatch.domain.messages import Cam, Denm


@dataclass(frozen=True, slots=True)
class DetectionRules:
    """The thresholds of every sub-detector."""

    accident: AccidentRules = field(default_factory=AccidentRules)


class Detector:
    """Feed messages in arrival order; get back the events they cause, only on change.

    The clock is the newest timestamp seen, so a replayed trace yields the same events at any
    speed. Staleness is judged per station and per kind (CAM, DENM): MQTT orders messages only
    within one topic, so a DENM may legitimately arrive after a newer CAM of the same vehicle.
    """

    __slots__ = (
        "_accidents",
        "_last_cam_ms",
        "_last_denm_ms",
        "accepted",
        "clock_ms",
        "rules",
        "stale",
    )

    def __init__(self, rules: DetectionRules | None = None) -> None:
        self.rules = rules if rules is not None else DetectionRules()
        self._accidents = AccidentDetector(self.rules.accident)
        self._last_cam_ms: dict[str, int] = {}
        self._last_denm_ms: dict[str, int] = {}
        self.clock_ms: int | None = None
        self.accepted = 0
        self.stale = 0

    def process(self, message: Cam | Denm) -> list[Event]:
        """Apply one message; return the events it causes, oldest cause first."""
        t = message.timestamp_ms
        station_id = message.station_id
        is_denm = isinstance(message, Denm)
        last_seen = self._last_denm_ms if is_denm else self._last_cam_ms
        previous = last_seen.get(station_id)
        if previous is not None and t <= previous:
            self.stale += 1  # late or duplicate delivery (SPEC §2): changes no state
            return []
        last_seen[station_id] = t
        self.accepted += 1
        clock = self.clock_ms
        if clock is None or t > clock:
            clock = self.clock_ms = t
        if isinstance(message, Denm) and message.cause_code == ACCIDENT_CAUSE_CODE:
            return self._accidents.handle(message, clock)
        # Other causes and CAMs only move the clock for now.
        return self._accidents.expire(clock)

    def process_batch(self, messages: Iterable[Cam | Denm]) -> list[Event]:
        """Apply messages in order; the same events as processing them one by one."""
        events: list[Event] = []
        process = self.process
        for message in messages:
            produced = process(message)
            if produced:
                events.extend(produced)
        return events

    def active_events(self) -> list[Event]:
        """Return the latest version of every active event, oldest first."""
        return self._accidents.active_events()
