"""Hazards (docs/contract/detection.md §7): roadworks, slippery road, low visibility… relayed.

One active `hazard` event stands for one cause at one place: the first report raises it (any
station may report a hazard, unlike an accident), a report of the same cause within the
radius from a new station joins it (a new version), and it is cleared by a trusted station's
termination, by the withdrawal of its last reporter, or after `expiry_ms` without a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.messages import Denm
from roadwatch.domain.reports import ReportTracker
from roadwatch.domain.snapshots import SnapshotFormat

# ETSI TS 102 894-2 cause codes handled elsewhere: traffic condition (jams) and accident.
NOT_HAZARD_CAUSES: frozenset[int] = frozenset({1, 2})

# ETSI TS 102 894-2 CauseCodeType, in words a road user reads.
CAUSE_NAMES: dict[int, str] = {
    3: "roadworks",
    5: "impassable road",
    6: "slippery road",
    9: "hazardous road surface",
    10: "obstacle on the road",
    11: "animal on the road",
    12: "people on the road",
    14: "wrong-way driving",
    15: "rescue and recovery work",
    17: "extreme weather",
    18: "low visibility",
    19: "heavy precipitation",
    26: "slow vehicle",
    27: "dangerous end of queue",
    91: "vehicle breakdown",
    92: "post-crash",
    93: "human problem",
    94: "stationary vehicle",
    95: "emergency vehicle approaching",
    96: "dangerous curve",
    97: "collision risk",
    98: "signal violation",
    99: "dangerous situation",
}


def cause_name(cause_code: int) -> str:
    """Return the ETSI cause in words, or `cause N` for a code without a name."""
    return CAUSE_NAMES.get(cause_code, f"cause {cause_code}")


@dataclass(frozen=True, slots=True)
class HazardRules:
    """Thresholds of hazard relaying; times are milliseconds of event time."""

    radius_m: float = 200.0
    expiry_ms: int = 1_800_000
    # ETSI station types 10 (special/emergency vehicle) and 15 (road-side unit, road operator).
    trusted_station_types: frozenset[int] = frozenset({10, 15})

    def __post_init__(self) -> None:
        if not self.radius_m > 0:
            raise ValueError("hazard radius must be positive")
        if self.expiry_ms <= 0:
            raise ValueError("hazard expiry must be positive")


class _Sighting(NamedTuple):
    """Where one reporter saw the hazard."""

    lat: float
    lon: float


class HazardDetector(ReportTracker[_Sighting, HazardRules]):
    """Turn DENMs of the other causes into `hazard` events, on event time only.

    A DENM not newer than the previous hazard DENM of its station is ignored. A station's last
    report time is forgotten `expiry_ms` after it; a report no newer than the newest forgotten
    time is then ignored whatever its station, so forgetting never lets a duplicate through.
    """

    __slots__ = ()

    # One hazard stands for one cause: reports of another cause never join or end it.
    _BY_CAUSE: ClassVar[bool] = True

    def __init__(self, rules: HazardRules | None = None) -> None:
        rules = rules if rules is not None else HazardRules()
        super().__init__(rules, rules.expiry_ms)

    def on_denm(self, denm: Denm, now_ms: int) -> list[Event]:
        """Apply one DENM of a hazard cause at event time `now_ms`; return the events it causes."""
        return self.handle(denm, now_ms)

    def _report_alone(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        """Raise a hazard on its first report."""
        t = denm.timestamp_ms
        if t + self.rules.expiry_ms <= now_ms:
            return  # already over by the time it arrived
        event = Event(
            id=new_event_id(t, "hazard", str(denm.cause_code), denm.station_id, str(t)),
            type=EventType.HAZARD,
            status=EventStatus.ACTIVE,
            version=1,
            started_ms=t,
            updated_ms=t,
            ended_ms=None,
            lat=denm.lat,
            lon=denm.lon,
            cause_code=denm.cause_code,
            station_ids=(denm.station_id,),
            details={
                "cause_name": cause_name(denm.cause_code),
                "sub_cause_code": denm.sub_cause_code,
                "reporter_count": 1,
            },
        )
        self._add(event, {denm.station_id: _Sighting(denm.lat, denm.lon)}, t)
        events.append(event)

    def _new_report(self, denm: Denm) -> _Sighting:
        return _Sighting(denm.lat, denm.lon)

    # -- saved state ------------------------------------------------------------------------

    SNAPSHOT: ClassVar[SnapshotFormat] = SnapshotFormat("a hazard detector", 1)

    def _state(self) -> dict[str, Any]:
        return {
            "hazards": self._events_state(_sighting_state),
            "last_report_ms": dict(self._last_report_ms),
            "forgotten_ms": self._forgotten_ms,
        }

    def _from_state(self, state: dict[str, Any]) -> HazardDetector:
        fresh = HazardDetector(self.rules)
        fresh._load_events(state["hazards"], _sighting_from_state)
        fresh._load_reporters(state["last_report_ms"], state["forgotten_ms"])
        return fresh


def _sighting_state(station_id: str, sighting: _Sighting) -> list[Any]:
    return [station_id, sighting.lat, sighting.lon]


def _sighting_from_state(item: Any) -> tuple[str, _Sighting]:
    station, lat, lon = item
    return str(station), _Sighting(float(lat), float(lon))
