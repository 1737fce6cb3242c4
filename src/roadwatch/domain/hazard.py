"""Hazards (SPEC §3 "Other DENM causes"): roadworks, slippery road, low visibility… relayed.

One active `hazard` event stands for one cause at one place: the first report raises it (any
station may report a hazard, unlike an accident), a report of the same cause within the
radius from a new station joins it (a new version), and it is cleared by a trusted station's
termination, by the withdrawal of its last reporter, or after `expiry_ms` without a report.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Final

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import GeoGrid, haversine_m, mean_position
from roadwatch.domain.messages import Denm

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

SNAPSHOT_FORMAT = 1

_HAZARD: Final = 0  # deadline of an active hazard, by event id
_STATION: Final = 1  # a station's last hazard report time, kept while it can matter
_Entry = tuple[int, int, int, str]  # due time, tie-breaker, kind, key


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


@dataclass(slots=True)
class _Hazard:
    event: Event
    # Where each reporter saw it, in the order they joined (the mean position follows them).
    reports: dict[str, tuple[float, float]]
    last_refresh_ms: int
    cell: tuple[int, int]


class HazardDetector:
    """Turn DENMs of the other causes into `hazard` events, on event time only.

    A DENM not newer than the previous hazard DENM of its station is ignored. A station's last
    report time is forgotten `expiry_ms` after it; a report no newer than the newest forgotten
    time is then ignored whatever its station, so forgetting never lets a duplicate through.
    """

    __slots__ = (
        "_by_reporter",
        "_deadlines",
        "_forgotten_ms",
        "_grid",
        "_hazards",
        "_last_report_ms",
        "_seq",
        "rules",
    )

    def __init__(self, rules: HazardRules | None = None) -> None:
        self.rules = rules if rules is not None else HazardRules()
        self._hazards: dict[str, _Hazard] = {}
        self._grid: GeoGrid[str] = GeoGrid(self.rules.radius_m)
        self._by_reporter: dict[str, dict[str, None]] = {}
        self._deadlines: list[_Entry] = []
        self._last_report_ms: dict[str, int] = {}
        self._forgotten_ms = -1
        self._seq = 0

    def active_events(self) -> list[Event]:
        """Return the latest version of every active hazard, oldest first."""
        return sorted((hazard.event for hazard in self._hazards.values()), key=_event_key)

    def next_due_ms(self) -> int | None:
        """Return the earliest event time at which `expire` may have something to do."""
        heap = self._deadlines
        return heap[0][0] if heap else None

    def expire(self, now_ms: int) -> list[Event]:
        """Clear the hazards nobody has reported for `expiry_ms` at event time `now_ms`."""
        heap = self._deadlines
        if not heap or heap[0][0] > now_ms:
            return []
        events: list[Event] = []
        expiry_ms = self.rules.expiry_ms
        while heap and heap[0][0] <= now_ms:
            _, _, kind, key = heapq.heappop(heap)
            if kind == _STATION:
                self._forget_station(key, now_ms)
                continue
            hazard = self._hazards.get(key)
            if hazard is None:
                continue  # already cleared
            due = hazard.last_refresh_ms + expiry_ms
            if due > now_ms:
                self._push(due, _HAZARD, key)  # refreshed since it was queued
            else:
                events.append(self._clear(hazard, "expired", due))
        if len(events) > 1:
            # By due time then id, so the order never depends on when the clock was looked at.
            events.sort(key=_expiry_key)
        return events

    def on_denm(self, denm: Denm, now_ms: int) -> list[Event]:
        """Apply one DENM of a hazard cause at event time `now_ms`; return the events it causes."""
        events = self.expire(now_ms)
        station_id = denm.station_id
        t = denm.timestamp_ms
        previous = self._last_report_ms.get(station_id)
        if previous is None:
            if t <= self._forgotten_ms:
                return events
            self._push(t + self.rules.expiry_ms, _STATION, station_id)
        elif t <= previous:
            return events
        self._last_report_ms[station_id] = t
        if denm.termination is None:
            self._report(denm, now_ms, events)
        elif denm.station_type in self.rules.trusted_station_types:
            self._terminate(denm, events)
        else:
            self._withdraw(denm, events)
        return events

    def snapshot(self) -> dict[str, Any]:
        """Return the whole state as JSON-ready data (see `restore`)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "hazards": [
                {
                    "event": hazard.event.to_dict(),
                    "reports": [[s, lat, lon] for s, (lat, lon) in hazard.reports.items()],
                    "last_refresh_ms": hazard.last_refresh_ms,
                }
                for hazard in self._hazards.values()
            ],
            "last_report_ms": dict(self._last_report_ms),
            "forgotten_ms": self._forgotten_ms,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with one from `snapshot`; raise ValueError if it is not one."""
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a hazard detector snapshot")
        fresh = HazardDetector(self.rules)
        try:
            for item in state["hazards"]:
                event = Event.from_dict(item["event"])
                reports = {
                    str(station): (float(lat), float(lon)) for station, lat, lon in item["reports"]
                }
                hazard = _Hazard(
                    event,
                    reports,
                    int(item["last_refresh_ms"]),
                    fresh._grid.cell_of(event.lat, event.lon),
                )
                fresh._add(hazard)
            for station_id, last in state["last_report_ms"].items():
                fresh._last_report_ms[str(station_id)] = int(last)
                fresh._push(int(last) + self.rules.expiry_ms, _STATION, str(station_id))
            fresh._forgotten_ms = int(state["forgotten_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a hazard detector snapshot: {exc}") from exc
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def _report(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        t = denm.timestamp_ms
        hazard = self._nearest(denm.cause_code, denm.lat, denm.lon)
        if hazard is not None:
            hazard.last_refresh_ms = max(hazard.last_refresh_ms, t)
            if denm.station_id not in hazard.reports:
                hazard.reports[denm.station_id] = (denm.lat, denm.lon)
                self._by_reporter.setdefault(denm.station_id, {})[hazard.event.id] = None
                events.append(self._update(hazard, t))
            return
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
        hazard = _Hazard(
            event,
            {denm.station_id: (denm.lat, denm.lon)},
            t,
            self._grid.cell_of(denm.lat, denm.lon),
        )
        self._add(hazard)
        events.append(event)

    def _terminate(self, denm: Denm, events: list[Event]) -> None:
        """Clear every hazard of this cause near a trusted station's termination."""
        radius = self.rules.radius_m
        doomed = [
            hazard
            for hazard in (self._hazards[i] for i in self._grid.near(denm.lat, denm.lon, radius))
            if hazard.event.cause_code == denm.cause_code
            and haversine_m(denm.lat, denm.lon, hazard.event.lat, hazard.event.lon) <= radius
        ]
        doomed.sort(key=lambda hazard: _event_key(hazard.event))
        for hazard in doomed:
            ended_ms = max(denm.timestamp_ms, hazard.event.updated_ms)
            events.append(self._clear(hazard, "termination", ended_ms))

    def _withdraw(self, denm: Denm, events: list[Event]) -> None:
        """Withdraw an untrusted station's own report; it cannot end anyone else's."""
        radius = self.rules.radius_m
        station_id = denm.station_id
        best: tuple[float, str] | None = None
        for hazard_id in self._by_reporter.get(station_id, ()):
            hazard = self._hazards[hazard_id]
            if hazard.event.cause_code != denm.cause_code:
                continue
            own_lat, own_lon = hazard.reports[station_id]
            event = hazard.event
            distance = min(
                haversine_m(denm.lat, denm.lon, event.lat, event.lon),
                haversine_m(denm.lat, denm.lon, own_lat, own_lon),
            )
            if distance <= radius and (best is None or (distance, hazard_id) < best):
                best = (distance, hazard_id)
        if best is None:
            return
        hazard = self._hazards[best[1]]
        if len(hazard.reports) == 1:
            ended_ms = max(denm.timestamp_ms, hazard.event.updated_ms)
            events.append(self._clear(hazard, "cancelled", ended_ms))
        else:
            del hazard.reports[station_id]
            self._forget_reporter(station_id, hazard.event.id)
            events.append(self._update(hazard, denm.timestamp_ms))

    def _update(self, hazard: _Hazard, at_ms: int) -> Event:
        """Publish a changed reporter set as the next version."""
        lat, lon = mean_position(hazard.reports.values())
        previous = hazard.event
        hazard.event = previous.next_version(
            updated_ms=max(previous.updated_ms, at_ms),
            lat=lat,
            lon=lon,
            station_ids=tuple(sorted(hazard.reports)),
            details={**previous.details, "reporter_count": len(hazard.reports)},
        )
        cell = self._grid.cell_of(lat, lon)
        if cell != hazard.cell:
            self._grid.discard(hazard.cell, previous.id)
            self._grid.add(cell, previous.id)
            hazard.cell = cell
        return hazard.event

    def _clear(self, hazard: _Hazard, reason: str, ended_ms: int) -> Event:
        event_id = hazard.event.id
        del self._hazards[event_id]
        self._grid.discard(hazard.cell, event_id)
        for station_id in hazard.reports:
            self._forget_reporter(station_id, event_id)
        details: dict[str, Any] = {**hazard.event.details, "clear_reason": reason}
        hazard.event = hazard.event.next_version(
            status=EventStatus.CLEARED, updated_ms=ended_ms, ended_ms=ended_ms, details=details
        )
        return hazard.event

    def _add(self, hazard: _Hazard) -> None:
        event_id = hazard.event.id
        self._hazards[event_id] = hazard
        self._grid.add(hazard.cell, event_id)
        for station_id in hazard.reports:
            self._by_reporter.setdefault(station_id, {})[event_id] = None
        self._push(hazard.last_refresh_ms + self.rules.expiry_ms, _HAZARD, event_id)

    def _nearest(self, cause_code: int, lat: float, lon: float) -> _Hazard | None:
        radius = self.rules.radius_m
        best: tuple[float, int, str] | None = None
        for hazard_id in self._grid.near(lat, lon, radius):
            event = self._hazards[hazard_id].event
            if event.cause_code != cause_code:
                continue
            distance = haversine_m(lat, lon, event.lat, event.lon)
            if distance <= radius:
                candidate = (distance, event.started_ms, hazard_id)
                if best is None or candidate < best:
                    best = candidate
        return None if best is None else self._hazards[best[2]]

    def _forget_reporter(self, station_id: str, hazard_id: str) -> None:
        hazards = self._by_reporter.get(station_id)
        if hazards is not None:
            hazards.pop(hazard_id, None)
            if not hazards:
                del self._by_reporter[station_id]

    def _forget_station(self, station_id: str, now_ms: int) -> None:
        last = self._last_report_ms.get(station_id)
        if last is None:
            return
        due = last + self.rules.expiry_ms
        if due > now_ms:
            self._push(due, _STATION, station_id)  # it reported again since
        else:
            del self._last_report_ms[station_id]
            self._forgotten_ms = max(self._forgotten_ms, last)

    def _push(self, due_ms: int, kind: int, key: str) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (due_ms, self._seq, kind, key))


def _event_key(event: Event) -> tuple[int, str]:
    return event.started_ms, event.id


def _expiry_key(event: Event) -> tuple[int, str]:
    return event.updated_ms, event.id
