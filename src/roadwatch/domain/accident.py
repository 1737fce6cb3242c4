"""Accident detection (docs/contract/detection.md §4): accident DENMs from vehicles become accident
events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import GeoGrid, haversine_m, mean_position
from roadwatch.domain.messages import Denm
from roadwatch.domain.reports import PENDING, ReportTracker
from roadwatch.domain.snapshots import SnapshotFormat

# ETSI TS 102 894-2 cause code "accident".
ACCIDENT_CAUSE_CODE = 2


@dataclass(frozen=True, slots=True)
class AccidentRules:
    """Thresholds of docs/contract/detection.md §4; times are milliseconds of event time."""

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


class AccidentDetector(ReportTracker[_Report, AccidentRules]):
    """Turn accident DENMs into accident events, on event time only.

    A DENM not newer than the previous accident DENM of its station is ignored, so a replayed
    report can neither count twice nor mint an event id twice. A pending report expires once
    the clock is more than `window_ms` past it; an accident expires once the clock reaches
    `expiry_ms` past its newest report.

    A station's last report time is forgotten `window_ms + expiry_ms` after it (memory stays
    bounded); a report no newer than the newest forgotten time is then ignored, whatever its
    station, so forgetting never lets a duplicate through.
    """

    __slots__ = ("_next_key", "_pending", "_pending_grid")

    def __init__(self, rules: AccidentRules | None = None) -> None:
        rules = rules if rules is not None else AccidentRules()
        # After this, no report of the station can pair, join or be a duplicate that matters.
        super().__init__(rules, rules.window_ms + rules.expiry_ms)
        self._pending: dict[int, _Report] = {}
        self._pending_grid: GeoGrid[int] = GeoGrid(rules.radius_m)
        self._next_key = 0

    @property
    def pending_count(self) -> int:
        """Return how many single reports wait for a second reporter."""
        return len(self._pending)

    def _report_alone(self, denm: Denm, now_ms: int, events: list[Event]) -> None:
        """Pair a report with waiting ones from other stations, or let it wait for one."""
        rules = self.rules
        station_id = denm.station_id
        t = denm.timestamp_ms
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
            self._push(t + rules.window_ms + 1, PENDING, report.key)

    def _terminated(self, denm: Denm) -> None:
        """Drop the waiting reports near a trusted station's termination."""
        radius = self.rules.radius_m
        for key in self._pending_grid.near(denm.lat, denm.lon, radius):
            report = self._pending[key]
            if haversine_m(denm.lat, denm.lon, report.lat, report.lon) <= radius:
                self._drop_pending(report)

    def _withdrawn(self, denm: Denm) -> None:
        """Drop the withdrawing station's own waiting reports nearby."""
        radius = self.rules.radius_m
        station_id = denm.station_id
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
        self._add(event, reports, newest_ms)
        return event

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

    def _expire_pending(self, key: int) -> None:
        report = self._pending.get(key)
        if report is not None:
            self._drop_pending(report)

    # -- saved state ------------------------------------------------------------------------

    SNAPSHOT: ClassVar[SnapshotFormat] = SnapshotFormat("an accident detector", 1)

    def _state(self) -> dict[str, Any]:
        return {
            "pending": [_report_state(report) for report in self._pending.values()],
            "accidents": self._events_state(lambda _, report: _report_state(report)),
            "last_report_ms": dict(self._last_report_ms),
            "forgotten_ms": self._forgotten_ms,
            "next_key": self._next_key,
        }

    def _from_state(self, state: dict[str, Any]) -> AccidentDetector:
        fresh = AccidentDetector(self.rules)
        for item in state["pending"]:
            _, report = fresh._report_from_state(item)
            fresh._pending[report.key] = report
            fresh._pending_grid.add(report.cell, report.key)
            fresh._push(report.timestamp_ms + self.rules.window_ms + 1, PENDING, report.key)
        fresh._load_events(state["accidents"], fresh._report_from_state)
        fresh._load_reporters(state["last_report_ms"], state["forgotten_ms"])
        fresh._next_key = int(state["next_key"])
        return fresh

    def _report_from_state(self, item: Any) -> tuple[str, _Report]:
        key, station_id, timestamp_ms, lat, lon = item
        lat = float(lat)
        lon = float(lon)
        report = _Report(
            int(key),
            str(station_id),
            int(timestamp_ms),
            lat,
            lon,
            self._pending_grid.cell_of(lat, lon),
        )
        return report.station_id, report


def _report_state(report: _Report) -> list[Any]:
    return [report.key, report.station_id, report.timestamp_ms, report.lat, report.lon]
