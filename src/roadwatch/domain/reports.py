"""Events raised and kept alive by DENM reporters: the tracking shared by accidents and hazards.

A tracked event stands where its reporters saw it (their mean position). A report within the
radius from a new station joins it (a new version), a trusted station's termination clears it,
the withdrawal of its last reporter cancels it, and it expires `expiry_ms` after its newest
report. What raises an event, and what it says, is left to the subclasses.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from roadwatch.domain.events import Event, EventStatus
from roadwatch.domain.geo import GeoGrid, haversine_m, mean_position
from roadwatch.domain.messages import Denm
from roadwatch.domain.snapshots import Snapshotting

# What a deadline points at. Entries are never removed from the heap, only found stale when
# popped, so a restored tracker may hold fewer of them and still behave the same.
EVENT: Final = 0  # an active event, by event id
STATION: Final = 1  # a station's last report time, kept only as long as it can matter
PENDING: Final = 2  # a report waiting to raise an event, by key

_Entry = tuple[int, int, int, int | str]  # due time, tie-breaker, kind, key


class Located(Protocol):
    """Where one reporter saw the event."""

    @property
    def lat(self) -> float:
        """Return the latitude in degrees."""
        ...

    @property
    def lon(self) -> float:
        """Return the longitude in degrees."""
        ...


class TrackerRules(Protocol):
    """The thresholds every reporter-based tracker reads; times are milliseconds."""

    @property
    def radius_m(self) -> float:
        """Return how far a report may be from an event it concerns."""
        ...

    @property
    def expiry_ms(self) -> int:
        """Return how long an event stays active after its newest report."""
        ...

    @property
    def trusted_station_types(self) -> frozenset[int]:
        """Return the station types whose termination clears any nearby event."""
        ...


R = TypeVar("R", bound=Located)
RulesT = TypeVar("RulesT", bound=TrackerRules)


@dataclass(slots=True)
class Tracked(Generic[R]):
    """An active event with the standing report of each reporter."""

    event: Event
    # In the order the reporters joined (the mean position follows them).
    reports: dict[str, R]
    last_refresh_ms: int
    cell: tuple[int, int]


class ReportTracker(Snapshotting, Generic[R, RulesT]):
    """Track events raised by DENM reporters, on event time only.

    A DENM not newer than the previous DENM of its station is ignored, so a replayed report can
    neither count twice nor mint an event id twice. A station's last report time is forgotten
    `_memory_ms` after it (memory stays bounded); a report no newer than the newest forgotten
    time is then ignored, whatever its station, so forgetting never lets a duplicate through.
    """

    __slots__ = (
        "_by_reporter",
        "_deadlines",
        "_events",
        "_forgotten_ms",
        "_grid",
        "_last_report_ms",
        "_memory_ms",
        "_seq",
        "rules",
    )

    # Whether a report concerns only the events of its own cause code.
    _BY_CAUSE: ClassVar[bool] = False

    def __init__(self, rules: RulesT, memory_ms: int) -> None:
        self.rules = rules
        self._events: dict[str, Tracked[R]] = {}
        self._grid: GeoGrid[str] = GeoGrid(rules.radius_m)
        self._by_reporter: dict[str, dict[str, None]] = {}
        # Min-heap of deadlines: expiry costs O(1) per message until something is due.
        self._deadlines: list[_Entry] = []
        self._last_report_ms: dict[str, int] = {}
        self._forgotten_ms = -1
        # After this, no report of a station can join or be a duplicate that matters.
        self._memory_ms = memory_ms
        self._seq = 0

    def active_events(self) -> list[Event]:
        """Return the latest version of every active event, oldest first."""
        return sorted((tracked.event for tracked in self._events.values()), key=_event_key)

    def next_due_ms(self) -> int | None:
        """Return the earliest event time at which `expire` may have something to do."""
        heap = self._deadlines
        return heap[0][0] if heap else None

    def expire(self, now_ms: int) -> list[Event]:
        """Clear the events and drop the reports that are due at event time `now_ms`."""
        heap = self._deadlines
        if not heap or heap[0][0] > now_ms:
            return []
        events: list[Event] = []
        expiry_ms = self.rules.expiry_ms
        while heap and heap[0][0] <= now_ms:
            _, _, kind, key = heapq.heappop(heap)
            if kind == EVENT:
                tracked = self._events.get(key) if isinstance(key, str) else None
                if tracked is None:
                    continue  # already cleared
                due = tracked.last_refresh_ms + expiry_ms
                if due > now_ms:
                    self._push(due, EVENT, key)  # refreshed since it was queued
                else:
                    events.append(self._clear(tracked, "expired", due))
            elif kind == STATION:
                if isinstance(key, str):
                    self._forget_station(key, now_ms)
            elif isinstance(key, int):
                self._expire_pending(key)
        if len(events) > 1:
            # By due time then id, so the order never depends on when the clock was looked at.
            events.sort(key=_expiry_key)
        return events

    def handle(self, denm: Denm, now_ms: int) -> list[Event]:
        """Apply one DENM at event time `now_ms`; return the events it causes."""
        events = self.expire(now_ms)
        station_id = denm.station_id
        t = denm.timestamp_ms
        previous = self._last_report_ms.get(station_id)
        if previous is None:
            if t <= self._forgotten_ms:
                return events
            # One deadline per remembered station, moved on when it comes due.
            self._push(t + self._memory_ms, STATION, station_id)
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

    def _report(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        tracked = self._nearest(denm.cause_code, denm.lat, denm.lon)
        if tracked is None:
            self._report_alone(denm, now_ms, events)
            return
        t = denm.timestamp_ms
        tracked.last_refresh_ms = max(tracked.last_refresh_ms, t)
        station_id = denm.station_id
        if station_id not in tracked.reports:
            tracked.reports[station_id] = self._new_report(denm)
            self._by_reporter.setdefault(station_id, {})[tracked.event.id] = None
            events.append(self._update(tracked, t))

    def _report_alone(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        """Take a report that joins no active event."""
        raise NotImplementedError

    def _new_report(self, denm: Denm) -> R:
        """Return the standing report of the DENM's station."""
        raise NotImplementedError

    def _expire_pending(self, key: int) -> None:
        """Drop a waiting report that has come due, if it still waits."""

    def _terminated(self, denm: Denm) -> None:
        """Clear what else a trusted station's termination ends besides the events."""

    def _withdrawn(self, denm: Denm) -> None:
        """Drop what else a station's withdrawal takes back besides its event report."""

    def _terminate(self, denm: Denm, events: list[Event]) -> None:
        """Clear every event near a trusted station's termination."""
        radius = self.rules.radius_m
        by_cause = self._BY_CAUSE
        doomed = [
            tracked
            for tracked in (self._events[i] for i in self._grid.near(denm.lat, denm.lon, radius))
            if (not by_cause or tracked.event.cause_code == denm.cause_code)
            and haversine_m(denm.lat, denm.lon, tracked.event.lat, tracked.event.lon) <= radius
        ]
        # Oldest first, not in grid order: a restored tracker files its events differently.
        doomed.sort(key=lambda tracked: _event_key(tracked.event))
        for tracked in doomed:
            ended_ms = max(denm.timestamp_ms, tracked.event.updated_ms)
            events.append(self._clear(tracked, "termination", ended_ms))
        self._terminated(denm)

    def _withdraw(self, denm: Denm, events: list[Event]) -> None:
        """Withdraw a non-trusted station's own report; it cannot end anyone else's."""
        radius = self.rules.radius_m
        by_cause = self._BY_CAUSE
        station_id = denm.station_id
        best: tuple[float, str] | None = None
        for event_id in self._by_reporter.get(station_id, ()):
            tracked = self._events[event_id]
            event = tracked.event
            if by_cause and event.cause_code != denm.cause_code:
                continue
            own = tracked.reports[station_id]
            distance = min(
                haversine_m(denm.lat, denm.lon, event.lat, event.lon),
                haversine_m(denm.lat, denm.lon, own.lat, own.lon),
            )
            if distance <= radius and (best is None or (distance, event_id) < best):
                best = (distance, event_id)
        if best is not None:
            tracked = self._events[best[1]]
            if len(tracked.reports) == 1:
                ended_ms = max(denm.timestamp_ms, tracked.event.updated_ms)
                events.append(self._clear(tracked, "cancelled", ended_ms))
            else:
                del tracked.reports[station_id]
                self._forget_reporter(station_id, tracked.event.id)
                events.append(self._update(tracked, denm.timestamp_ms))
        self._withdrawn(denm)

    def _add(self, event: Event, reports: dict[str, R], last_refresh_ms: int) -> None:
        """Start tracking an active event and its reporters."""
        event_id = event.id
        tracked = Tracked(event, reports, last_refresh_ms, self._grid.cell_of(event.lat, event.lon))
        self._events[event_id] = tracked
        self._grid.add(tracked.cell, event_id)
        for station_id in reports:
            self._by_reporter.setdefault(station_id, {})[event_id] = None
        self._push(last_refresh_ms + self.rules.expiry_ms, EVENT, event_id)

    def _update(self, tracked: Tracked[R], at_ms: int) -> Event:
        """Publish a changed reporter set as the next version."""
        lat, lon = mean_position((r.lat, r.lon) for r in tracked.reports.values())
        previous = tracked.event
        tracked.event = previous.next_version(
            updated_ms=max(previous.updated_ms, at_ms),
            lat=lat,
            lon=lon,
            station_ids=tuple(sorted(tracked.reports)),
            details={**previous.details, "reporter_count": len(tracked.reports)},
        )
        cell = self._grid.cell_of(lat, lon)
        if cell != tracked.cell:
            self._grid.discard(tracked.cell, previous.id)
            self._grid.add(cell, previous.id)
            tracked.cell = cell
        return tracked.event

    def _clear(self, tracked: Tracked[R], reason: str, ended_ms: int) -> Event:
        event_id = tracked.event.id
        del self._events[event_id]
        self._grid.discard(tracked.cell, event_id)
        for station_id in tracked.reports:
            self._forget_reporter(station_id, event_id)
        details: dict[str, Any] = {**tracked.event.details, "clear_reason": reason}
        tracked.event = tracked.event.next_version(
            status=EventStatus.CLEARED, updated_ms=ended_ms, ended_ms=ended_ms, details=details
        )
        return tracked.event

    def _nearest(self, cause_code: int, lat: float, lon: float) -> Tracked[R] | None:
        radius = self.rules.radius_m
        by_cause = self._BY_CAUSE
        best: tuple[float, int, str] | None = None
        for event_id in self._grid.near(lat, lon, radius):
            event = self._events[event_id].event
            if by_cause and event.cause_code != cause_code:
                continue
            distance = haversine_m(lat, lon, event.lat, event.lon)
            if distance <= radius:
                candidate = (distance, event.started_ms, event_id)
                if best is None or candidate < best:
                    best = candidate
        return None if best is None else self._events[best[2]]

    def _forget_reporter(self, station_id: str, event_id: str) -> None:
        tracked = self._by_reporter.get(station_id)
        if tracked is not None:
            tracked.pop(event_id, None)
            if not tracked:
                del self._by_reporter[station_id]

    def _forget_station(self, station_id: str, now_ms: int) -> None:
        last = self._last_report_ms.get(station_id)
        if last is None:
            return
        due = last + self._memory_ms
        if due > now_ms:
            self._push(due, STATION, station_id)  # it reported again since
        else:
            del self._last_report_ms[station_id]
            self._forgotten_ms = max(self._forgotten_ms, last)

    def _push(self, due_ms: int, kind: int, key: int | str) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (due_ms, self._seq, kind, key))

    # -- saved state: the parts every tracker shares, laid out by each subclass's `_state()`

    def _events_state(self, report_state: Callable[[str, R], list[Any]]) -> list[dict[str, Any]]:
        """Return the active events and their standing reports as JSON-ready data."""
        return [
            {
                "event": tracked.event.to_dict(),
                "reports": [report_state(s, r) for s, r in tracked.reports.items()],
                "last_refresh_ms": tracked.last_refresh_ms,
            }
            for tracked in self._events.values()
        ]

    def _load_events(self, items: Any, report_from_state: Callable[[Any], tuple[str, R]]) -> None:
        """Track the events of `_events_state` again, in this fresh tracker."""
        for item in items:
            event = Event.from_dict(item["event"])
            reports = dict(report_from_state(r) for r in item["reports"])
            self._add(event, reports, int(item["last_refresh_ms"]))

    def _load_reporters(self, last_report_ms: Any, forgotten_ms: Any) -> None:
        """Remember the stations' last report times again, in this fresh tracker."""
        for station_id, last in last_report_ms.items():
            self._last_report_ms[str(station_id)] = int(last)
            self._push(int(last) + self._memory_ms, STATION, str(station_id))
        self._forgotten_ms = int(forgotten_ms)


def _event_key(event: Event) -> tuple[int, str]:
    return event.started_ms, event.id


def _expiry_key(event: Event) -> tuple[int, str]:
    return event.updated_ms, event.id
