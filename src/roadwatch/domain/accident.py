"""Accident detection (SPEC §3): accident DENMs from vehicles become accident events."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Final

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import GeoGrid, haversine_m, mean_position
from roadwatch.domain.messages import Denm

# ETSI TS 102 894-2 cause code "accident".
ACCIDENT_CAUSE_CODE = 2


@dataclass(frozen=True, slots=True)
class AccidentRules:
    """Thresholds of SPEC §3 "Accident"; times are milliseconds of event time."""

    radius_m: float = 200.0
    window_ms: int = 600_000
    expiry_ms: int = 1_800_000
    # ETSI station types 10 (special/emergency vehicle) and 15 (road-side unit, road operator).
    trusted_station_types: frozenset[int] = frozenset({10, 15})

    def __post_init__(self) -> None:
        if not self.radius_m > 0:
            raise ValueError("accident radius must be positive")
        if self.window_ms < 0:
            raise ValueError("accident window must not be negative")
        if self.expiry_ms <= 0:
            raise ValueError("accident expiry must be positive")


@dataclass(slots=True)
class _Report:
    """One station's accident DENM, either pending or standing in an accident."""

    key: int
    station_id: str
    timestamp_ms: int
    lat: float
    lon: float
    cell: tuple[int, int]


@dataclass(slots=True)
class _Accident:
    event: Event
    # The standing report of each reporter, in the order they joined.
    reports: dict[str, _Report]
    last_refresh_ms: int
    cell: tuple[int, int]


# What a deadline points at. Entries are never removed from the heap, only found stale when
# popped, so a restored detector may hold fewer of them and still behave the same.
_PENDING: Final = 0  # a waiting report, by key
_ACCIDENT: Final = 1  # an active accident, by event id
_STATION: Final = 2  # a station's last report time, kept only as long as it can matter

_Entry = tuple[int, int, int, int | str]  # due time, tie-breaker, kind, key
SNAPSHOT_FORMAT = 1


class AccidentDetector:
    """Turn accident DENMs into accident events, on event time only.

    A DENM not newer than the previous accident DENM of its station is ignored, so a replayed
    report can neither count twice nor mint an event id twice. A pending report expires once
    the clock is more than `window_ms` past it; an accident expires once the clock reaches
    `expiry_ms` past its newest report.

    A station's last report time is forgotten `window_ms + expiry_ms` after it (memory stays
    bounded); a report no newer than the newest forgotten time is then ignored, whatever its
    station, so forgetting never lets a duplicate through.
    """

    __slots__ = (
        "_accident_grid",
        "_accidents",
        "_by_reporter",
        "_deadlines",
        "_forgotten_ms",
        "_last_report_ms",
        "_next_key",
        "_pending",
        "_pending_grid",
        "_seq",
        "rules",
    )

    def __init__(self, rules: AccidentRules | None = None) -> None:
        self.rules = rules if rules is not None else AccidentRules()
        self._pending: dict[int, _Report] = {}
        self._pending_grid: GeoGrid[int] = GeoGrid(self.rules.radius_m)
        self._accidents: dict[str, _Accident] = {}
        self._accident_grid: GeoGrid[str] = GeoGrid(self.rules.radius_m)
        self._by_reporter: dict[str, dict[str, None]] = {}
        # Min-heap of deadlines: expiry costs O(1) per message until something is due.
        self._deadlines: list[_Entry] = []
        self._last_report_ms: dict[str, int] = {}
        self._forgotten_ms = -1
        self._next_key = 0
        self._seq = 0

    @property
    def pending_count(self) -> int:
        """Return how many single reports wait for a second reporter."""
        return len(self._pending)

    def active_events(self) -> list[Event]:
        """Return the latest version of every active accident, oldest first."""
        return sorted((accident.event for accident in self._accidents.values()), key=_event_key)

    def next_due_ms(self) -> int | None:
        """Return the earliest event time at which `expire` may have something to do."""
        heap = self._deadlines
        return heap[0][0] if heap else None

    def expire(self, now_ms: int) -> list[Event]:
        """Drop pending reports and clear accidents that are due at event time `now_ms`."""
        heap = self._deadlines
        if not heap or heap[0][0] > now_ms:
            return []
        events: list[Event] = []
        while heap and heap[0][0] <= now_ms:
            _, _, kind, key = heapq.heappop(heap)
            if kind == _PENDING:
                report = self._pending.get(key) if isinstance(key, int) else None
                if report is not None:
                    self._drop_pending(report)
            elif kind == _ACCIDENT:
                accident = self._accidents.get(key) if isinstance(key, str) else None
                if accident is None:
                    continue  # already cleared
                due = accident.last_refresh_ms + self.rules.expiry_ms
                if due > now_ms:
                    self._push(due, _ACCIDENT, key)  # refreshed since it was queued
                else:
                    events.append(self._clear(accident, "expired", due))
            elif isinstance(key, str):
                self._forget_station(key, now_ms)
        if len(events) > 1:
            # By due time then id, so the order never depends on when the clock was looked at.
            events.sort(key=_expiry_key)
        return events

    def handle(self, denm: Denm, now_ms: int) -> list[Event]:
        """Apply one accident DENM at event time `now_ms`; return the events it causes."""
        events = self.expire(now_ms)
        t = denm.timestamp_ms
        previous = self._last_report_ms.get(denm.station_id)
        if previous is None:
            if t <= self._forgotten_ms:
                return events
            # One deadline per remembered station, moved on when it comes due.
            self._push(t + self._station_memory_ms, _STATION, denm.station_id)
        elif t <= previous:
            return events
        self._last_report_ms[denm.station_id] = t
        if denm.termination is None:
            self._report(denm, now_ms, events)
        elif denm.station_type in self.rules.trusted_station_types:
            self._terminate(denm, events)
        else:
            self._withdraw(denm, events)
        return events

    def _report(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        rules = self.rules
        station_id = denm.station_id
        t = denm.timestamp_ms
        accident = self._nearest_accident(denm.lat, denm.lon)
        if accident is not None:
            accident.last_refresh_ms = max(accident.last_refresh_ms, t)
            if station_id not in accident.reports:
                accident.reports[station_id] = self._new_report(denm)
                self._by_reporter.setdefault(station_id, {})[accident.event.id] = None
                events.append(self._update(accident, t))
            return

        partners: dict[str, tuple[float, _Report]] = {}
        own: list[_Report] = []
        for key in self._pending_grid.near(denm.lat, denm.lon, rules.radius_m):
            pending = self._pending[key]
            distance = haversine_m(denm.lat, denm.lon, pending.lat, pending.lon)
            if distance > rules.radius_m:
                continue
            if pending.station_id == station_id:
                own.append(pending)
            elif abs(pending.timestamp_ms - t) <= rules.window_ms:
                best = partners.get(pending.station_id)
                if best is None or (distance, pending.key) < (best[0], best[1].key):
                    partners[pending.station_id] = (distance, pending)

        for report in own:
            # The newer report from the same station stands in for its older one nearby.
            self._drop_pending(report)
        if partners or denm.station_type in rules.trusted_station_types:
            founders = [report for _, report in partners.values()]
            founders.append(self._new_report(denm))
            if max(r.timestamp_ms for r in founders) + rules.expiry_ms <= now_ms:
                return  # already over by the time it arrived
            for report in founders[:-1]:
                self._drop_pending(report)
            events.append(self._raise(founders))
        elif t + rules.window_ms >= now_ms:
            report = self._new_report(denm)
            self._pending[report.key] = report
            self._pending_grid.add(report.cell, report.key)
            self._push(t + rules.window_ms + 1, _PENDING, report.key)

    def _terminate(self, denm: Denm, events: list[Event]) -> None:
        """Clear every accident near a trusted station's termination, and the reports near it."""
        radius = self.rules.radius_m
        doomed = [
            self._accidents[accident_id]
            for accident_id in self._accident_grid.near(denm.lat, denm.lon, radius)
            if haversine_m(
                denm.lat,
                denm.lon,
                self._accidents[accident_id].event.lat,
                self._accidents[accident_id].event.lon,
            )
            <= radius
        ]
        # Oldest first, not in grid order: a restored detector files accidents differently.
        doomed.sort(key=lambda accident: _event_key(accident.event))
        for accident in doomed:
            ended_ms = max(denm.timestamp_ms, accident.event.updated_ms)
            events.append(self._clear(accident, "termination", ended_ms))
        for key in self._pending_grid.near(denm.lat, denm.lon, radius):
            report = self._pending[key]
            if haversine_m(denm.lat, denm.lon, report.lat, report.lon) <= radius:
                self._drop_pending(report)

    def _withdraw(self, denm: Denm, events: list[Event]) -> None:
        """Withdraw a non-trusted station's own report; it cannot end anyone else's."""
        radius = self.rules.radius_m
        station_id = denm.station_id
        best: tuple[float, str] | None = None
        for accident_id in self._by_reporter.get(station_id, ()):
            accident = self._accidents[accident_id]
            own = accident.reports[station_id]
            event = accident.event
            distance = min(
                haversine_m(denm.lat, denm.lon, event.lat, event.lon),
                haversine_m(denm.lat, denm.lon, own.lat, own.lon),
            )
            if distance <= radius and (best is None or (distance, accident_id) < best):
                best = (distance, accident_id)
        if best is not None:
            accident = self._accidents[best[1]]
            if len(accident.reports) == 1:
                ended_ms = max(denm.timestamp_ms, accident.event.updated_ms)
                events.append(self._clear(accident, "cancelled", ended_ms))
            else:
                del accident.reports[station_id]
                self._forget_reporter(station_id, accident.event.id)
                events.append(self._update(accident, denm.timestamp_ms))
        for key in self._pending_grid.near(denm.lat, denm.lon, radius):
            report = self._pending[key]
            if (
                report.station_id == station_id
                and haversine_m(denm.lat, denm.lon, report.lat, report.lon) <= radius
            ):
                self._drop_pending(report)

    def _raise(self, founders: list[_Report]) -> Event:
        founders.sort(key=lambda r: (r.timestamp_ms, r.station_id))
        first = founders[0]
        event_id = new_event_id(
            first.timestamp_ms, "accident", first.station_id, str(first.timestamp_ms)
        )
        reports = {report.station_id: report for report in founders}
        lat, lon = mean_position((r.lat, r.lon) for r in reports.values())
        newest_ms = max(r.timestamp_ms for r in founders)
        event = Event(
            id=event_id,
            type=EventType.ACCIDENT,
            status=EventStatus.ACTIVE,
            version=1,
            started_ms=first.timestamp_ms,
            updated_ms=newest_ms,
            ended_ms=None,
            lat=lat,
            lon=lon,
            cause_code=ACCIDENT_CAUSE_CODE,
            station_ids=tuple(sorted(reports)),
            details={"reporter_count": len(reports)},
        )
        accident = _Accident(event, reports, newest_ms, self._accident_grid.cell_of(lat, lon))
        self._accidents[event_id] = accident
        self._accident_grid.add(accident.cell, event_id)
        for station_id in reports:
            self._by_reporter.setdefault(station_id, {})[event_id] = None
        self._push(newest_ms + self.rules.expiry_ms, _ACCIDENT, event_id)
        return event

    def _update(self, accident: _Accident, at_ms: int) -> Event:
        """Publish a changed reporter set as the next version."""
        lat, lon = mean_position((r.lat, r.lon) for r in accident.reports.values())
        previous = accident.event
        accident.event = previous.next_version(
            updated_ms=max(previous.updated_ms, at_ms),
            lat=lat,
            lon=lon,
            station_ids=tuple(sorted(accident.reports)),
            details={"reporter_count": len(accident.reports)},
        )
        cell = self._accident_grid.cell_of(lat, lon)
        if cell != accident.cell:
            self._accident_grid.discard(accident.cell, previous.id)
            self._accident_grid.add(cell, previous.id)
            accident.cell = cell
        return accident.event

    def _clear(self, accident: _Accident, reason: str, ended_ms: int) -> Event:
        event_id = accident.event.id
        del self._accidents[event_id]
        self._accident_grid.discard(accident.cell, event_id)
        for station_id in accident.reports:
            self._forget_reporter(station_id, event_id)
        details: dict[str, Any] = {**accident.event.details, "clear_reason": reason}
        accident.event = accident.event.next_version(
            status=EventStatus.CLEARED, updated_ms=ended_ms, ended_ms=ended_ms, details=details
        )
        return accident.event

    def _nearest_accident(self, lat: float, lon: float) -> _Accident | None:
        radius = self.rules.radius_m
        best: tuple[float, int, str] | None = None
        for accident_id in self._accident_grid.near(lat, lon, radius):
            event = self._accidents[accident_id].event
            distance = haversine_m(lat, lon, event.lat, event.lon)
            if distance <= radius:
                candidate = (distance, event.started_ms, accident_id)
                if best is None or candidate < best:
                    best = candidate
        return None if best is None else self._accidents[best[2]]

    def _new_report(self, denm: Denm) -> _Report:
        self._next_key += 1
        return _Report(
            self._next_key,
            denm.station_id,
            denm.timestamp_ms,
            denm.lat,
            denm.lon,
            self._pending_grid.cell_of(denm.lat, denm.lon),
        )

    def _drop_pending(self, report: _Report) -> None:
        if self._pending.pop(report.key, None) is not None:
            self._pending_grid.discard(report.cell, report.key)

    def _forget_reporter(self, station_id: str, accident_id: str) -> None:
        accidents = self._by_reporter.get(station_id)
        if accidents is not None:
            accidents.pop(accident_id, None)
            if not accidents:
                del self._by_reporter[station_id]

    @property
    def _station_memory_ms(self) -> int:
        # After this, no report of the station can pair, join or be a duplicate that matters.
        return self.rules.window_ms + self.rules.expiry_ms

    def _forget_station(self, station_id: str, now_ms: int) -> None:
        last = self._last_report_ms.get(station_id)
        if last is None:
            return
        due = last + self._station_memory_ms
        if due > now_ms:
            self._push(due, _STATION, station_id)  # it reported again since
        else:
            del self._last_report_ms[station_id]
            self._forgotten_ms = max(self._forgotten_ms, last)

    def _push(self, due_ms: int, kind: int, key: int | str) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (due_ms, self._seq, kind, key))

    def snapshot(self) -> dict[str, Any]:
        """Return the whole state as JSON-ready data (see `restore`)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "pending": [_report_state(report) for report in self._pending.values()],
            "accidents": [
                {
                    "event": accident.event.to_dict(),
                    "reports": [_report_state(report) for report in accident.reports.values()],
                    "last_refresh_ms": accident.last_refresh_ms,
                }
                for accident in self._accidents.values()
            ],
            "last_report_ms": dict(self._last_report_ms),
            "forgotten_ms": self._forgotten_ms,
            "next_key": self._next_key,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with one from `snapshot`; raise ValueError if it is not one."""
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not an accident detector snapshot")
        fresh = AccidentDetector(self.rules)
        try:
            for item in state["pending"]:
                report = fresh._report_from_state(item)
                fresh._pending[report.key] = report
                fresh._pending_grid.add(report.cell, report.key)
                fresh._push(report.timestamp_ms + self.rules.window_ms + 1, _PENDING, report.key)
            for item in state["accidents"]:
                event = Event.from_dict(item["event"])
                reports = [fresh._report_from_state(r) for r in item["reports"]]
                accident = _Accident(
                    event,
                    {report.station_id: report for report in reports},
                    int(item["last_refresh_ms"]),
                    fresh._accident_grid.cell_of(event.lat, event.lon),
                )
                fresh._accidents[event.id] = accident
                fresh._accident_grid.add(accident.cell, event.id)
                for station_id in accident.reports:
                    fresh._by_reporter.setdefault(station_id, {})[event.id] = None
                fresh._push(accident.last_refresh_ms + self.rules.expiry_ms, _ACCIDENT, event.id)
            memory = fresh._station_memory_ms
            for station_id, last in state["last_report_ms"].items():
                fresh._last_report_ms[str(station_id)] = int(last)
                fresh._push(int(last) + memory, _STATION, str(station_id))
            fresh._forgotten_ms = int(state["forgotten_ms"])
            fresh._next_key = int(state["next_key"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not an accident detector snapshot: {exc}") from exc
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def _report_from_state(self, item: Any) -> _Report:
        key, station_id, timestamp_ms, lat, lon = item
        lat = float(lat)
        lon = float(lon)
        return _Report(
            int(key),
            str(station_id),
            int(timestamp_ms),
            lat,
            lon,
            self._pending_grid.cell_of(lat, lon),
        )


def _report_state(report: _Report) -> list[Any]:
    return [report.key, report.station_id, report.timestamp_ms, report.lat, report.lon]


def _event_key(event: Event) -> tuple[int, str]:
    return event.started_ms, event.id


def _expiry_key(event: Event) -> tuple[int, str]:
    return event.updated_ms, event.id
