"""Traffic-jam detection (docs/contract/detection.md §5): slow traffic per H3 cell and direction
becomes jam events.

Each (H3 cell, heading quadrant) keeps a sliding window of its reporters' latest speeds. A cell
jams when enough slow stations report there; neighbouring jammed cells of one direction form one
jam event. Everything runs on event time: work that falls due between messages sits in a heap
ordered by (due time, kind, key), so the outcome never depends on how often the clock is looked
at, and a snapshot taken between calls restores to exactly the same future.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import h3
import orjson

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import mean_position
from roadwatch.domain.messages import Cam, Denm
from roadwatch.domain.snapshots import SnapshotFormat, Snapshotting

# ETSI TS 102 894-2 cause code "traffic condition".
TRAFFIC_JAM_CAUSE_CODE: Final = 1
# Heading quadrants, clockwise from north: N is [315°, 45°), E is [45°, 135°) and so on.
DIRECTIONS: Final = ("N", "E", "S", "W")
# An event lists at most this many reporters (the first by id); vehicle_count has the full number.
MAX_STATION_IDS: Final = 50
# Extent coordinates keep 7 decimals (about 1 cm), plenty for a map and much shorter on the wire.
_COORD_DIGITS = 7
# Speeds are summed as integer thousandths of km/h: running sums never drift, so a detector
# restored from a snapshot adds up bit for bit like the one that wrote it.
_MILLI = 1000
# Heap entry kinds: at one instant every cell's window moves before any jam is re-published.
_WAKE = 0
_CHECK = 1
_MAX_RESOLUTION = 15
_MAX_SPEED_KMH = 400.0


@dataclass(frozen=True, slots=True)
class JamRules:
    """Thresholds of docs/contract/detection.md §5; times are milliseconds of event time."""

    cell_resolution: int = 9
    window_ms: int = 60_000
    min_stations: int = 3
    slow_speed_kmh: float = 30.0
    free_speed_kmh: float = 50.0
    clear_after_ms: int = 120_000
    clear_min_stations: int = 2
    update_interval_ms: int = 30_000

    def __post_init__(self) -> None:
        if not 0 <= self.cell_resolution <= _MAX_RESOLUTION:
            raise ValueError(f"jam cell resolution must be in [0, {_MAX_RESOLUTION}]")
        if self.window_ms <= 0:
            raise ValueError("jam window must be positive")
        if self.min_stations < 1:
            raise ValueError("jam minimum station count must be at least 1")
        if not 0.0 <= self.slow_speed_kmh < self.free_speed_kmh <= _MAX_SPEED_KMH:
            # The gap between the two speeds is the hysteresis that stops a jam flapping.
            raise ValueError("jam speeds must satisfy 0 <= slow < free <= 400 km/h")
        if self.clear_after_ms <= 0:
            raise ValueError("jam clear delay must be positive")
        if not 1 <= self.clear_min_stations <= self.min_stations:
            # Otherwise one cell could qualify as jammed and as deserted at the same moment.
            raise ValueError("jam clear station count must be in [1, min_stations]")
        if self.update_interval_ms < 0:
            raise ValueError("jam update interval must not be negative")


@dataclass(slots=True, eq=False)
class _Cell:
    """One H3 cell in one direction of travel, with its window of reports."""

    cell: str
    direction: int
    # (time, station) in time order; an entry is stale once its station reported again here.
    samples: deque[tuple[int, str]] = field(default_factory=deque)
    # Each station's latest report here: (time, speed in thousandths of km/h).
    latest: dict[str, tuple[int, int]] = field(default_factory=dict)
    speed_sum: int = 0
    newest_ms: int = -1
    jam: _Jam | None = None
    jammed_since: int = 0
    free_since: int | None = None
    # Due time of this cell's one valid entry in the wake heap (jammed) or the sweep heap (idle).
    wake_ms: int | None = None
    sweep_ms: int | None = None


@dataclass(slots=True, eq=False)
class _Jam:
    """Connected jammed cells of one direction, published as one event."""

    id: str
    direction: int
    anchor: str
    started_ms: int
    next_slot_ms: int
    cells: dict[str, _Cell] = field(default_factory=dict)
    # Stations counted in any of the cells, with how many cells count each.
    stations: dict[str, int] = field(default_factory=dict)
    speed_sum: int = 0
    sample_count: int = 0
    published: Event | None = None
    published_cells: frozenset[str] = frozenset()
    published_speed: int | None = None
    extent_changed: bool = True
    check_ms: int | None = None
    # Published jams merged into this one; they are cleared when this one next publishes, so
    # the map never shows a gap between the merge and the survivor's grown extent.
    absorbed: list[Event] = field(default_factory=list)


class TrafficJamDetector(Snapshotting):
    """Turn CAM speeds and traffic-jam DENMs into traffic_jam events, on event time only.

    A cell's mean speed is the mean of each station's latest report there within the window:
    every vehicle weighs the same whatever its CAM rate (ETSI vehicles send more often when
    fast), and the mean follows the current traffic rather than the past minute's average.
    A cell starts a jam when a report arrives that makes it qualify (the window emptying alone
    never starts one: a real jam keeps reporting), and leaves its jam once free for
    `clear_after_ms`; the jam clears with its last cell. The jam's mean speed is over every
    (cell, station) report it counts; its vehicle_count counts distinct stations.

    A DENM takes its reporter's heading from a CAM of the last `window_ms`. Reports stamped
    ahead of the detection clock count as made at the clock. No version is published while a
    jam counts no vehicle at all (its reports have left the window): the clear follows.
    """

    __slots__ = (
        "_cells",
        "_clear_after",
        "_clear_min",
        "_free",
        "_headings",
        "_heap",
        "_interval",
        "_jams",
        "_min_stations",
        "_resolution",
        "_slow",
        "_sweep",
        "_sweep_headings_ms",
        "_window",
        "rules",
    )

    def __init__(self, rules: JamRules | None = None) -> None:
        self.rules = rules if rules is not None else JamRules()
        rules = self.rules
        self._resolution = rules.cell_resolution
        self._window = rules.window_ms
        self._min_stations = rules.min_stations
        self._slow = rules.slow_speed_kmh * _MILLI
        self._free = rules.free_speed_kmh * _MILLI
        self._clear_after = rules.clear_after_ms
        self._clear_min = rules.clear_min_stations
        self._interval = rules.update_interval_ms
        self._cells: dict[tuple[str, int], _Cell] = {}
        self._jams: dict[str, _Jam] = {}
        # (due, kind, cell or jam id, direction or 0): wakes of jammed cells and jam checks.
        self._heap: list[tuple[int, int, str, int]] = []
        # (due, cell, direction): when an idle cell's window may be empty, to forget the cell.
        self._sweep: list[tuple[int, str, int]] = []
        # Each station's last CAM heading (time, quadrant), for its DENMs.
        self._headings: dict[str, tuple[int, int]] = {}
        self._sweep_headings_ms = 0

    # ----------------------------------------------------------------- public API

    def on_cam(self, cam: Cam, now_ms: int) -> list[Event]:
        """Count one CAM at detection time `now_ms`; return the events due by then."""
        events: list[Event] = []
        heap = self._heap
        if heap and heap[0][0] <= now_ms:
            self._run(now_ms, events)
        if self._sweep and self._sweep[0][0] <= now_ms:
            self._forget_idle(now_ms)
        # A report stamped ahead of the detection clock counts as made now.
        t = min(cam.timestamp_ms, now_ms)
        quadrant = int((cam.heading_deg + 45.0) % 360.0 // 90.0)
        station = cam.station_id
        self._headings[station] = (t, quadrant)
        if now_ms >= self._sweep_headings_ms:
            self._forget_headings(now_ms)
        if t + self._window <= now_ms:
            return events  # already out of the window
        key = (h3.latlng_to_cell(cam.lat, cam.lon, self._resolution), quadrant)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(key[0], quadrant)
        self._add(cell, station, t, round(cam.speed_kmh * _MILLI), now_ms)
        if heap and heap[0][0] <= now_ms:
            self._run(now_ms, events)
        return events

    def on_denm(self, denm: Denm, now_ms: int) -> list[Event]:
        """Count a traffic-jam DENM as a report at 0 km/h; return the events due by `now_ms`."""
        events = self.expire(now_ms)
        t = min(denm.timestamp_ms, now_ms)
        if (
            denm.cause_code != TRAFFIC_JAM_CAUSE_CODE
            or denm.termination is not None  # a withdrawal is not a slow report
            or t + self._window <= now_ms
        ):
            return events
        cell_id: str = h3.latlng_to_cell(denm.lat, denm.lon, self._resolution)
        heading = self._headings.get(denm.station_id)
        if heading is not None and heading[0] + self._window > now_ms:
            quadrants: Iterable[int] = (heading[1],)
        else:
            # Heading unknown: the report is about every carriageway seen in that cell.
            quadrants = [q for q in range(4) if self._is_present((cell_id, q), now_ms)]
        for quadrant in quadrants:
            key = (cell_id, quadrant)
            cell = self._cells.get(key)
            if cell is None:
                cell = self._cells[key] = _Cell(cell_id, quadrant)
            self._add(cell, denm.station_id, t, 0, now_ms)
        self._run(now_ms, events)
        return events

    def expire(self, now_ms: int) -> list[Event]:
        """Apply what is due by detection time `now_ms` alone: window moves, updates, clears."""
        events: list[Event] = []
        if self._heap and self._heap[0][0] <= now_ms:
            self._run(now_ms, events)
        if self._sweep and self._sweep[0][0] <= now_ms:
            self._forget_idle(now_ms)
        return events

    def next_due_ms(self) -> int | None:
        """Return the earliest event time at which expire() may produce something."""
        heap = self._heap
        while heap:
            due, kind, name, quadrant = heap[0]
            if kind == _WAKE:
                cell = self._cells.get((name, quadrant))
                if cell is not None and cell.jam is not None and cell.wake_ms == due:
                    return due
            else:
                jam = self._jams.get(name)
                if jam is not None and jam.check_ms == due:
                    return due
            heapq.heappop(heap)  # superseded entry
        return None

    def active_events(self) -> list[Event]:
        """Return the latest published version of every active jam, oldest first."""
        events: list[Event] = []
        for jam in self._jams.values():
            if jam.published is not None:
                events.append(jam.published)
            # Merged jams stay on the map until their survivor publishes its grown extent.
            events.extend(jam.absorbed)
        return sorted(events, key=lambda e: (e.started_ms, e.id))

    # ----------------------------------------------------------------- windows

    def _add(self, cell: _Cell, station: str, t: int, speed: int, now_ms: int) -> None:
        """Count `station`'s report in `cell` and re-evaluate the cell at `now_ms`."""
        samples = cell.samples
        latest = cell.latest
        if samples and samples[0][0] <= now_ms - self._window:
            self._trim(cell, now_ms)
        jam = cell.jam
        previous = latest.get(station)
        if previous is None:
            latest[station] = (t, speed)
            cell.speed_sum += speed
            if jam is not None:
                jam.sample_count += 1
                jam.speed_sum += speed
                jam.stations[station] = jam.stations.get(station, 0) + 1
        else:
            if previous[0] > t:
                return  # a DENM older than this station's CAM here: the CAM is its latest word
            latest[station] = (t, speed)
            cell.speed_sum += speed - previous[1]
            if jam is not None:
                jam.speed_sum += speed - previous[1]
            if samples[0] == (previous[0], station):
                samples.popleft()  # superseded; the common case of one reporter in the cell
        if not samples or t >= samples[-1][0]:
            samples.append((t, station))
            cell.newest_ms = t
        else:
            insort(samples, (t, station))  # stations interleave freely within the clock
        if jam is None:
            count = len(latest)
            if count >= self._min_stations and cell.speed_sum <= self._slow * count:
                self._jam_cell(cell, now_ms)
            elif cell.sweep_ms is None:
                self._schedule_sweep(cell)
        else:
            self._settle(cell, now_ms)
            self._schedule_wake(cell)
            self._touch(jam, now_ms)

    def _trim(self, cell: _Cell, now_ms: int) -> bool:
        """Drop reports out of the window at `now_ms`; tell whether a counted one went."""
        samples = cell.samples
        latest = cell.latest
        horizon = now_ms - self._window
        removed = False
        while samples:
            t, station = samples[0]
            held = latest.get(station)
            if held is None or held[0] != t:
                samples.popleft()  # superseded by a newer report of that station
                continue
            if t > horizon:
                break
            samples.popleft()
            del latest[station]
            cell.speed_sum -= held[1]
            removed = True
            jam = cell.jam
            if jam is not None:
                jam.sample_count -= 1
                jam.speed_sum -= held[1]
                left = jam.stations[station] - 1
                if left:
                    jam.stations[station] = left
                else:
                    del jam.stations[station]
        return removed

    def _is_present(self, key: tuple[str, int], now_ms: int) -> bool:
        cell = self._cells.get(key)
        if cell is None:
            return False
        if cell.jam is not None:
            return True
        self._trim(cell, now_ms)
        return bool(cell.latest)

    def _settle(self, cell: _Cell, at_ms: int) -> None:
        """Start or stop the free-flow clock of a jammed cell after a change at `at_ms`."""
        count = len(cell.latest)
        if count < self._clear_min or cell.speed_sum >= self._free * count:
            if cell.free_since is None:
                cell.free_since = at_ms
        else:
            cell.free_since = None

    def _schedule_wake(self, cell: _Cell) -> None:
        """Make sure a jammed cell wakes when its oldest report leaves or it may clear."""
        samples = cell.samples
        latest = cell.latest
        while samples:
            t, station = samples[0]
            held = latest.get(station)
            if held is not None and held[0] == t:
                break
            samples.popleft()  # superseded: waking for it would be wasted
        due: int | None = None
        if samples:
            due = samples[0][0] + self._window
        if cell.free_since is not None:
            clear_ms = cell.free_since + self._clear_after
            if due is None or clear_ms < due:
                due = clear_ms
        # An earlier pending wake is kept: waking early finds nothing new and reschedules.
        if due is not None and (cell.wake_ms is None or due < cell.wake_ms):
            cell.wake_ms = due
            heapq.heappush(self._heap, (due, _WAKE, cell.cell, cell.direction))

    def _schedule_sweep(self, cell: _Cell) -> None:
        due = cell.newest_ms + self._window
        cell.sweep_ms = due
        heapq.heappush(self._sweep, (due, cell.cell, cell.direction))

    def _forget_idle(self, now_ms: int) -> None:
        """Forget idle cells whose window is empty; nothing observable depends on them."""
        sweep = self._sweep
        cells = self._cells
        while sweep and sweep[0][0] <= now_ms:
            due, cell_id, quadrant = heapq.heappop(sweep)
            key = (cell_id, quadrant)
            cell = cells.get(key)
            if cell is None or cell.jam is not None or cell.sweep_ms != due:
                continue
            cell.sweep_ms = None
            self._trim(cell, now_ms)
            if cell.latest:
                self._schedule_sweep(cell)
            else:
                del cells[key]

    def _forget_headings(self, now_ms: int) -> None:
        """Drop headings too old to be used; amortised over a window's worth of CAMs."""
        horizon = now_ms - self._window
        self._headings = {s: h for s, h in self._headings.items() if h[0] > horizon}
        self._sweep_headings_ms = now_ms + self._window

    # ----------------------------------------------------------------- timeline

    def _run(self, now_ms: int, events: list[Event]) -> None:
        """Process every wake and check due by `now_ms`, in (due, kind, key) order."""
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, kind, name, quadrant = heapq.heappop(heap)
            if kind == _WAKE:
                cell = self._cells.get((name, quadrant))
                if cell is None or cell.jam is None or cell.wake_ms != due:
                    continue
                cell.wake_ms = None
                self._wake(cell, due, events)
            else:
                jam = self._jams.get(name)
                if jam is None or jam.check_ms != due:
                    continue
                jam.check_ms = None
                self._check(jam, due, events)

    def _wake(self, cell: _Cell, at_ms: int, events: list[Event]) -> None:
        jam = cell.jam
        assert jam is not None
        if self._trim(cell, at_ms):
            self._touch(jam, at_ms)
        self._settle(cell, at_ms)
        if cell.free_since is not None and cell.free_since + self._clear_after <= at_ms:
            self._unjam_cell(cell, at_ms, events)
        else:
            self._schedule_wake(cell)

    def _touch(self, jam: _Jam, at_ms: int) -> None:
        """Note that `jam` may have changed: check it as soon as its update interval allows."""
        if jam.check_ms is None:
            due = max(at_ms, jam.next_slot_ms)
            jam.check_ms = due
            heapq.heappush(self._heap, (due, _CHECK, jam.id, 0))

    # ----------------------------------------------------------------- jams

    def _jam_cell(self, cell: _Cell, at_ms: int) -> None:
        """Make `cell` jammed: found a jam, join the neighbouring one, or merge several."""
        cell.jammed_since = at_ms
        cell.free_since = None
        cell.sweep_ms = None
        found: dict[str, _Jam] = {}
        for neighbour in h3.grid_disk(cell.cell, 1):
            other = self._cells.get((neighbour, cell.direction))
            if other is not None and other.jam is not None:
                found[other.jam.id] = other.jam
        if not found:
            jam = self._new_jam(cell.cell, cell.direction, at_ms, at_ms)
        else:
            survivor, *others = sorted(found.values(), key=lambda j: (j.started_ms, j.id))
            for other_jam in others:
                self._absorb(survivor, other_jam)
            jam = survivor
        self._attach(jam, cell)
        self._schedule_wake(cell)
        self._touch(jam, at_ms)

    def _new_jam(self, founding: str, direction: int, at_ms: int, first_slot_ms: int) -> _Jam:
        jam_id = new_event_id(at_ms, "traffic_jam", founding, DIRECTIONS[direction], str(at_ms))
        jam = _Jam(jam_id, direction, founding, at_ms, first_slot_ms)
        self._jams[jam_id] = jam
        return jam

    def _attach(self, jam: _Jam, cell: _Cell) -> None:
        jam.cells[cell.cell] = cell
        jam.extent_changed = True
        cell.jam = jam
        stations = jam.stations
        for station, (_, speed) in cell.latest.items():
            stations[station] = stations.get(station, 0) + 1
            jam.speed_sum += speed
        jam.sample_count += len(cell.latest)

    def _detach(self, jam: _Jam, cell: _Cell) -> None:
        del jam.cells[cell.cell]
        jam.extent_changed = True
        cell.jam = None
        stations = jam.stations
        for station, (_, speed) in cell.latest.items():
            left = stations[station] - 1
            if left:
                stations[station] = left
            else:
                del stations[station]
            jam.speed_sum -= speed
        jam.sample_count -= len(cell.latest)

    def _absorb(self, survivor: _Jam, other: _Jam) -> None:
        """Merge `other` into the older `survivor`, which keeps its id."""
        del self._jams[other.id]
        other.check_ms = None
        for cell in list(other.cells.values()):
            self._detach(other, cell)
            self._attach(survivor, cell)
        if other.published is not None:
            survivor.absorbed.append(other.published)
        survivor.absorbed.extend(other.absorbed)

    def _unjam_cell(self, cell: _Cell, at_ms: int, events: list[Event]) -> None:
        """Take a cell free for long enough out of its jam; shrink, split or clear the jam."""
        jam = cell.jam
        assert jam is not None
        reason = "few_reports" if len(cell.latest) < self._clear_min else "free_flow"
        self._detach(jam, cell)
        cell.free_since = None
        cell.wake_ms = None
        if cell.latest:
            self._schedule_sweep(cell)
        else:
            del self._cells[(cell.cell, cell.direction)]
        if not jam.cells:
            self._end(jam, at_ms, reason, events)
            return
        remaining = jam.cells
        if jam.anchor not in remaining:
            jam.anchor = _oldest(remaining)
        parts = _components(remaining)
        for part in parts:
            if jam.anchor in part:
                continue
            # The part without the founding (or oldest) cell becomes a new jam; it first
            # appears together with the parent's shrunk extent, at the parent's next update.
            founding = _oldest({c: remaining[c] for c in part})
            child = self._new_jam(founding, jam.direction, at_ms, max(at_ms, jam.next_slot_ms))
            for cell_id in part:
                moved = remaining[cell_id]
                self._detach(jam, moved)
                self._attach(child, moved)
            self._touch(child, at_ms)
        self._touch(jam, at_ms)

    def _end(self, jam: _Jam, at_ms: int, reason: str, events: list[Event]) -> None:
        del self._jams[jam.id]
        jam.check_ms = None
        if jam.published is not None:
            details = {**jam.published.details, "reason": reason}
            events.append(_cleared(jam.published, at_ms, details))
        self._clear_absorbed(jam, at_ms, events)

    def _clear_absorbed(self, jam: _Jam, at_ms: int, events: list[Event]) -> None:
        for merged in jam.absorbed:
            details = {**merged.details, "reason": "merged", "merged_into": jam.id}
            events.append(_cleared(merged, at_ms, details))
        jam.absorbed = []

    def _check(self, jam: _Jam, at_ms: int, events: list[Event]) -> None:
        """Publish `jam` if its count, rounded mean speed or extent changed since last time."""
        count = len(jam.stations)
        if count == 0:
            # Every report has left the window: the jam is on its way to clearing, and a
            # version saying "no vehicles" would tell the user nothing; the clear will.
            return
        mean = jam.speed_sum / jam.sample_count / _MILLI
        speed = round(mean)
        previous = jam.published
        if jam.extent_changed:
            jam.extent_changed = False
            extent_same = jam.published_cells == jam.cells.keys()
        else:
            extent_same = True
        if (
            previous is not None
            and not jam.absorbed
            and extent_same
            and speed == jam.published_speed
            and count == previous.details["vehicle_count"]
        ):
            return
        if previous is not None and extent_same:
            extent = previous.details["extent"]
            lat, lon = previous.lat, previous.lon
        else:
            cell_ids = sorted(jam.cells)
            extent = _extent(cell_ids)
            lat, lon = mean_position(h3.cell_to_latlng(c) for c in cell_ids)
            jam.published_cells = frozenset(cell_ids)
        details: dict[str, Any] = {
            "direction": DIRECTIONS[jam.direction],
            "cells": len(jam.cells),
            "vehicle_count": count,
            "mean_speed_kmh": round(mean, 1),
            "extent": extent,
        }
        station_ids = tuple(sorted(jam.stations)[:MAX_STATION_IDS])
        if previous is None:
            event = Event(
                id=jam.id,
                type=EventType.TRAFFIC_JAM,
                status=EventStatus.ACTIVE,
                version=1,
                started_ms=jam.started_ms,
                updated_ms=at_ms,
                ended_ms=None,
                lat=lat,
                lon=lon,
                cause_code=TRAFFIC_JAM_CAUSE_CODE,
                station_ids=station_ids,
                details=details,
            )
        else:
            event = previous.next_version(
                updated_ms=at_ms, lat=lat, lon=lon, station_ids=station_ids, details=details
            )
        jam.published = event
        jam.published_speed = speed
        jam.next_slot_ms = at_ms + self._interval
        events.append(event)
        self._clear_absorbed(jam, at_ms, events)

    # ----------------------------------------------------------------- saved state

    SNAPSHOT: ClassVar[SnapshotFormat] = SnapshotFormat("a traffic-jam detector", 1)

    def _state(self) -> dict[str, Any]:
        cells = []
        for cell in self._cells.values():
            samples = sorted((t, s) for s, (t, _) in cell.latest.items())
            cells.append(
                [
                    cell.cell,
                    cell.direction,
                    [[s, t, cell.latest[s][1]] for t, s in samples],
                    cell.newest_ms,
                    None if cell.jam is None else cell.jam.id,
                    cell.jammed_since,
                    cell.free_since,
                    cell.wake_ms,
                    cell.sweep_ms,
                ]
            )
        jams = [
            {
                "id": jam.id,
                "direction": jam.direction,
                "anchor": jam.anchor,
                "started_ms": jam.started_ms,
                "next_slot_ms": jam.next_slot_ms,
                "check_ms": jam.check_ms,
                "published": None if jam.published is None else _encode(jam.published),
                "published_cells": sorted(jam.published_cells),
                "published_speed": jam.published_speed,
                "absorbed": [_encode(event) for event in jam.absorbed],
            }
            for jam in self._jams.values()
        ]
        headings = [[s, t, q] for s, (t, q) in self._headings.items()]
        return {"cells": cells, "jams": jams, "headings": headings}

    def _from_state(self, state: dict[str, Any]) -> TrafficJamDetector:
        fresh = TrafficJamDetector(self.rules)
        fresh._headings = {str(s): (int(t), int(q)) for s, t, q in state["headings"]}
        for item in state["jams"]:
            jam = _Jam(
                str(item["id"]),
                int(item["direction"]),
                str(item["anchor"]),
                int(item["started_ms"]),
                int(item["next_slot_ms"]),
            )
            jam.check_ms = item["check_ms"]
            if item["published"] is not None:
                jam.published = _decode(item["published"])
            jam.published_cells = frozenset(item["published_cells"])
            jam.published_speed = item["published_speed"]
            jam.absorbed = [_decode(event) for event in item["absorbed"]]
            fresh._jams[jam.id] = jam
            if jam.check_ms is not None:
                fresh._heap.append((jam.check_ms, _CHECK, jam.id, 0))
        for row in state["cells"]:
            cell_id, quadrant, samples, newest, jam_id, jammed_since, free_since, wake, sweep = row
            cell = _Cell(str(cell_id), int(quadrant))
            for station, t, speed in samples:
                cell.samples.append((int(t), str(station)))
                cell.latest[str(station)] = (int(t), int(speed))
                cell.speed_sum += int(speed)
            cell.newest_ms = int(newest)
            cell.jammed_since = int(jammed_since)
            cell.free_since = free_since
            fresh._cells[(cell.cell, cell.direction)] = cell
            if jam_id is not None:
                fresh._attach(fresh._jams[jam_id], cell)
                cell.wake_ms = wake
                if wake is not None:
                    fresh._heap.append((wake, _WAKE, cell.cell, cell.direction))
            elif sweep is not None:
                cell.sweep_ms = sweep
                fresh._sweep.append((sweep, cell.cell, cell.direction))
        heapq.heapify(fresh._heap)
        heapq.heapify(fresh._sweep)
        return fresh


def _oldest(cells: dict[str, _Cell]) -> str:
    """Return the cell jammed first (then the smallest id): a stable founder for a jam."""
    return min(cells, key=lambda c: (cells[c].jammed_since, c))


def _components(cells: dict[str, _Cell]) -> list[set[str]]:
    """Split cells into groups connected through H3 neighbours."""
    seen: set[str] = set()
    parts: list[set[str]] = []
    for start in sorted(cells):
        if start in seen:
            continue
        part = {start}
        stack = [start]
        while stack:
            for neighbour in h3.grid_disk(stack.pop(), 1):
                if neighbour in cells and neighbour not in part:
                    part.add(neighbour)
                    stack.append(neighbour)
        seen |= part
        parts.append(part)
    return parts


def _extent(cell_ids: list[str]) -> dict[str, Any]:
    """Return the outline of the cells as a GeoJSON Polygon or MultiPolygon (lon, lat)."""
    shape = h3.cells_to_geo(cell_ids)
    return {"type": shape["type"], "coordinates": _rounded(shape["coordinates"])}


def _rounded(value: Any) -> Any:
    """Turn h3's nested tuples into JSON lists, coordinates rounded."""
    if isinstance(value, float):
        return round(value, _COORD_DIGITS)
    return [_rounded(item) for item in value]


def _cleared(event: Event, at_ms: int, details: dict[str, Any]) -> Event:
    return event.next_version(
        status=EventStatus.CLEARED, updated_ms=at_ms, ended_ms=at_ms, details=details
    )


def _encode(event: Event) -> dict[str, Any]:
    """Return an active jam event as plain JSON values, times in milliseconds."""
    return {
        "id": event.id,
        "version": event.version,
        "started_ms": event.started_ms,
        "updated_ms": event.updated_ms,
        "lat": event.lat,
        "lon": event.lon,
        "station_ids": list(event.station_ids),
        "details": _copied(event.details),
    }


def _decode(data: dict[str, Any]) -> Event:
    return Event(
        id=str(data["id"]),
        type=EventType.TRAFFIC_JAM,
        status=EventStatus.ACTIVE,
        version=int(data["version"]),
        started_ms=int(data["started_ms"]),
        updated_ms=int(data["updated_ms"]),
        ended_ms=None,
        lat=float(data["lat"]),
        lon=float(data["lon"]),
        cause_code=TRAFFIC_JAM_CAUSE_CODE,
        station_ids=tuple(str(s) for s in data["station_ids"]),
        details=_copied(data["details"]),
    )


def _copied(details: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of JSON details, so a snapshot and the detector share nothing."""
    copy: dict[str, Any] = orjson.loads(orjson.dumps(details))
    return copy
