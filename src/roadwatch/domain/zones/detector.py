"""Zone detection (docs/contract/detection.md §6): station positions in, zone_enter and
zone_exit events out, on event time only, with hysteresis and timeouts."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.snapshots import InvalidSnapshot, SnapshotFormat, Snapshotting
from roadwatch.domain.zones.geojson import MAX_HYSTERESIS_M, InvalidZone, Zone, zones_from_geojson
from roadwatch.domain.zones.geometry import near_m
from roadwatch.domain.zones.index import ZoneIndex

DEFAULT_TIMEOUT_MS = 600_000


@dataclass(frozen=True, slots=True)
class ZoneRules:
    """Thresholds of docs/contract/detection.md §6; times are milliseconds of event time."""

    timeout_ms: int = DEFAULT_TIMEOUT_MS
    # Used for zones that set no hysteresis_m of their own.
    hysteresis_m: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.timeout_ms, bool) or not isinstance(self.timeout_ms, int):
            raise ValueError("zone timeout must be an integer number of milliseconds")
        if self.timeout_ms <= 0:
            raise ValueError("zone timeout must be positive")
        if not 0.0 <= self.hysteresis_m <= MAX_HYSTERESIS_M:
            raise ValueError(f"zone hysteresis must be in [0, {MAX_HYSTERESIS_M:g}] metres")


class _Station:
    """What is known of one station: its newest position and the zones it is inside."""

    __slots__ = ("gen", "in_forget", "in_timeouts", "last_ms", "lat", "lon", "zones")

    def __init__(self, gen: int, last_ms: int, lat: float, lon: float) -> None:
        self.gen = gen
        # Newest position time; after a timeout exit, the exit's time (older positions are stale).
        self.last_ms = last_ms
        self.lat = lat
        self.lon = lon
        self.zones: tuple[str, ...] = ()
        self.in_timeouts = False
        self.in_forget = False


# Below any event time: the clock before the first message.
_NO_CLOCK = -(1 << 62)


class ZoneDetector(Snapshotting):
    """Turn station positions into zone_enter / zone_exit events, on event time only.

    The clock is the newest `now_ms` seen. A station is timed out once the clock is past its
    last position + `timeout_ms`; its exits are dated last position + `timeout_ms`, and positions
    not newer than that are stale. A position more than `timeout_ms` older than the clock
    changes nothing, which also lets the state of stations outside every zone be forgotten.
    """

    __slots__ = ("_clock", "_forget", "_gen", "_index", "_stations", "_timeouts", "rules")

    def __init__(self, rules: ZoneRules | None = None, zones: Sequence[Zone] = ()) -> None:
        self.rules = rules if rules is not None else ZoneRules()
        self._index = ZoneIndex(zones)
        self._stations: dict[str, _Station] = {}
        # Min-heaps of (due, station id, generation): timeouts of stations inside a zone, and
        # when to forget stations outside every zone. Entries go stale rather than being removed.
        self._timeouts: list[tuple[int, str, int]] = []
        self._forget: list[tuple[int, str, int]] = []
        self._clock = _NO_CLOCK
        self._gen = 0

    @property
    def zones(self) -> tuple[Zone, ...]:
        """Return the zones in force, in id order."""
        return self._index.zones

    @property
    def index(self) -> ZoneIndex:
        """Return the look-up structure over the zones in force."""
        return self._index

    @property
    def clock_ms(self) -> int | None:
        """Return the newest event time seen, if any."""
        return None if self._clock == _NO_CLOCK else self._clock

    def on_position(
        self, station_id: str, timestamp_ms: int, lat: float, lon: float, now_ms: int
    ) -> list[Event]:
        """Apply one position at clock `now_ms`; return the timeouts due, then its own events."""
        clock = self._clock
        # The caller owns the clock: a position ahead of it (a vehicle clock running fast)
        # must not time others out early.
        if now_ms > clock:
            clock = self._clock = now_ms
        timeouts = self._timeouts
        forget = self._forget
        if (timeouts and timeouts[0][0] < clock) or (forget and forget[0][0] < clock):
            events = self.expire(clock)
        else:
            events = []
        if timestamp_ms + self.rules.timeout_ms < clock:
            return events  # older than any timeout: it would already be over
        station = self._stations.get(station_id)
        if station is not None and timestamp_ms <= station.last_ms:
            return events  # late or duplicate (docs/contract/mqtt.md §7): changes no state
        found = self._index.ids_at(lat, lon)
        if station is None:
            self._gen += 1
            station = self._stations[station_id] = _Station(self._gen, timestamp_ms, lat, lon)
            if not found:
                self._queue_forget(station_id, station)
                return events
        else:
            station.last_ms = timestamp_ms
            station.lat = lat
            station.lon = lon
            if found == station.zones:
                return events
        self._move(station_id, station, found, events)
        return events

    def expire(self, now_ms: int) -> list[Event]:
        """Time out silent stations at event time `now_ms`; return their exits, oldest first."""
        clock = self._clock = max(self._clock, now_ms)
        events: list[Event] = []
        timeouts = self._timeouts
        stations = self._stations
        timeout_ms = self.rules.timeout_ms
        while timeouts and timeouts[0][0] < clock:
            _, station_id, gen = heapq.heappop(timeouts)
            station = stations.get(station_id)
            if station is None or station.gen != gen:
                continue
            station.in_timeouts = False
            if not station.zones:
                continue
            due = station.last_ms + timeout_ms
            if due >= clock:
                self._queue_timeout(station_id, station)  # refreshed since it was queued
                continue
            for zone_id in station.zones:
                zone = self._index[zone_id]
                events.append(
                    _zone_event(
                        EventType.ZONE_EXIT, station_id, station, due, zone, reason="timeout"
                    )
                )
            station.zones = ()
            station.last_ms = due
            self._queue_forget(station_id, station)
        forget = self._forget
        while forget and forget[0][0] < clock:
            _, station_id, gen = heapq.heappop(forget)
            station = stations.get(station_id)
            if station is None or station.gen != gen:
                continue
            station.in_forget = False
            if station.zones:
                continue
            if station.last_ms + timeout_ms >= clock:
                self._queue_forget(station_id, station)
            else:
                del stations[station_id]
        if len(events) > 1:
            # By time, then station and zone, so the order never depends on heap history.
            events.sort(key=_event_order)
        return events

    def next_due_ms(self) -> int | None:
        """Return the earliest clock value at which expire() could time a station out."""
        timeouts = self._timeouts
        stations = self._stations
        timeout_ms = self.rules.timeout_ms
        while timeouts:
            due, station_id, gen = timeouts[0]
            station = stations.get(station_id)
            if station is None or station.gen != gen or not station.zones:
                heapq.heappop(timeouts)
                if station is not None and station.gen == gen:
                    station.in_timeouts = False
                continue
            actual = station.last_ms + timeout_ms
            if actual != due:
                heapq.heapreplace(timeouts, (actual, station_id, gen))
                continue
            return due + 1  # a station times out once the clock is past its due time
        return None

    def set_zones(self, zones: Sequence[Zone], now_ms: int) -> list[Event]:
        """Replace the zones at event time `now_ms`; return the exits this causes.

        A removed zone, or a changed one whose new shape (with its hysteresis) no longer holds a
        station's last position, exits that station, dated and placed at that last position.
        Stations inside a new or grown zone are not entered retroactively: their next position
        inside raises the enter, as for any other zone they drive into.
        """
        new_zones = sorted(zones, key=lambda zone: zone.id)
        old_index = self._index
        # The gateway re-reads the zones often; an unchanged set keeps its index.
        new_index = old_index if tuple(new_zones) == old_index.zones else ZoneIndex(new_zones)
        events = self.expire(now_ms)
        removed: set[str] = set()
        changed: set[str] = set()
        for old in old_index.zones:
            new = new_index.get(old.id)
            if new is None:
                removed.add(old.id)
            elif new.polygons != old.polygons or new.hysteresis_m != old.hysteresis_m:
                changed.add(old.id)
        self._index = new_index
        if not removed and not changed:
            return events
        exits: list[Event] = []
        for station_id, station in self._stations.items():
            if not station.zones:
                continue
            kept: list[str] = []
            for zone_id in station.zones:
                if zone_id in removed:
                    reason = "zone_removed"
                    zone = old_index[zone_id]
                elif zone_id in changed:
                    zone = new_index[zone_id]
                    if zone.contains(station.lat, station.lon) or self._in_band(
                        zone, station.lat, station.lon
                    ):
                        kept.append(zone_id)
                        continue
                    reason = "zone_changed"
                else:
                    kept.append(zone_id)
                    continue
                exits.append(
                    _zone_event(
                        EventType.ZONE_EXIT,
                        station_id,
                        station,
                        station.last_ms,
                        zone,
                        reason=reason,
                    )
                )
            if len(kept) != len(station.zones):
                station.zones = tuple(kept)
                if not kept:
                    self._queue_forget(station_id, station)
        exits.sort(key=_event_order)
        events.extend(exits)
        return events

    def occupancy(self) -> dict[str, list[str]]:
        """Return every zone's id with the stations inside it now, in id order."""
        inside: dict[str, list[str]] = {zone.id: [] for zone in self._index.zones}
        for station_id, station in self._stations.items():
            for zone_id in station.zones:
                inside[zone_id].append(station_id)
        for stations in inside.values():
            stations.sort()
        return inside

    # -- saved state ------------------------------------------------------------------------

    SNAPSHOT: ClassVar[SnapshotFormat] = SnapshotFormat("a zone detector", 1)

    def _state(self) -> dict[str, Any]:
        return {
            "clock_ms": self.clock_ms,
            "zones": [zone.to_feature() for zone in self._index.zones],
            "stations": [
                [station_id, s.last_ms, s.lat, s.lon, list(s.zones)]
                for station_id, s in sorted(self._stations.items())
            ],
        }

    def _from_state(self, state: dict[str, Any]) -> ZoneDetector:
        # The zones are the snapshot's own: set_zones() with the current ones afterwards
        # yields the exits of the zones changed in between.
        clock = state.get("clock_ms")
        if clock is not None and (isinstance(clock, bool) or not isinstance(clock, int)):
            raise InvalidSnapshot("clock_ms must be an integer or null")
        raw_zones = state.get("zones")
        raw_stations = state.get("stations")
        if not isinstance(raw_zones, list) or not isinstance(raw_stations, list):
            raise InvalidSnapshot("zones and stations must be lists")
        try:
            zones = zones_from_geojson({"type": "FeatureCollection", "features": raw_zones})
        except InvalidZone as exc:
            raise InvalidSnapshot(f"zones: {exc}") from exc
        fresh = ZoneDetector(self.rules, zones)
        for item in raw_stations:
            station_id, last_ms, lat, lon, zone_ids = _station_record(item)
            if any(zone_id not in fresh._index for zone_id in zone_ids):
                raise InvalidSnapshot(f"station {station_id!r} is inside an unknown zone")
            fresh._gen += 1
            station = _Station(fresh._gen, last_ms, lat, lon)
            station.zones = tuple(sorted(set(zone_ids)))
            fresh._stations[station_id] = station
        fresh._clock = _NO_CLOCK if clock is None else clock
        for station_id, station in fresh._stations.items():
            if station.zones:
                fresh._queue_timeout(station_id, station)
            else:
                fresh._queue_forget(station_id, station)
        return fresh

    def _move(
        self, station_id: str, station: _Station, found: tuple[str, ...], events: list[Event]
    ) -> None:
        """Apply the station's new position, inside zones `found`, to its memberships."""
        members = station.zones
        zones = self._index
        t = station.last_ms
        kept: list[str] = []
        for zone_id in members:
            zone = zones[zone_id]
            # Not found inside by the index, so only the hysteresis band can keep it.
            if zone_id in found or self._in_band(zone, station.lat, station.lon):
                kept.append(zone_id)  # still inside, or within the hysteresis band
            else:
                events.append(
                    _zone_event(EventType.ZONE_EXIT, station_id, station, t, zone, reason="left")
                )
        # Exits first (docs/contract/detection.md §6), then enters; each group in zone id order.
        for zone_id in found:
            if zone_id not in members:
                kept.append(zone_id)
                zone = zones[zone_id]
                events.append(
                    _zone_event(EventType.ZONE_ENTER, station_id, station, t, zone, reason=None)
                )
        kept.sort()
        station.zones = tuple(kept)
        if kept and not members:
            self._queue_timeout(station_id, station)
        elif members and not kept:
            self._queue_forget(station_id, station)

    def _in_band(self, zone: Zone, lat: float, lon: float) -> bool:
        """Tell whether a position outside `zone` is within its hysteresis band
        (docs/contract/detection.md §6)."""
        hysteresis = zone.hysteresis_m or self.rules.hysteresis_m
        return hysteresis > 0.0 and near_m(zone.polygon_tests, zone.bbox, lat, lon, hysteresis)

    def _queue_timeout(self, station_id: str, station: _Station) -> None:
        if not station.in_timeouts:
            station.in_timeouts = True
            heapq.heappush(
                self._timeouts, (station.last_ms + self.rules.timeout_ms, station_id, station.gen)
            )

    def _queue_forget(self, station_id: str, station: _Station) -> None:
        if not station.in_forget:
            station.in_forget = True
            heapq.heappush(
                self._forget, (station.last_ms + self.rules.timeout_ms, station_id, station.gen)
            )


def _zone_event(
    kind: EventType, station_id: str, station: _Station, t: int, zone: Zone, *, reason: str | None
) -> Event:
    """Return a crossing of `zone` by a station, at time `t` and the station's position."""
    return Event(
        # Derived from the crossing itself, so a replayed trace yields the same ids.
        id=new_event_id(t, kind.value, station_id, zone.id, str(t)),
        type=kind,
        status=EventStatus.INSTANT,
        version=1,
        started_ms=t,
        updated_ms=t,
        ended_ms=t,
        lat=station.lat,
        lon=station.lon,
        station_ids=(station_id,),
        zone_id=zone.id,
        zone_name=zone.name,
        details={} if reason is None else {"reason": reason},
    )


def _event_order(event: Event) -> tuple[int, str, str]:
    return event.updated_ms, event.station_ids[0], event.zone_id or ""


def _station_record(item: Any) -> tuple[str, int, float, float, list[str]]:
    if not isinstance(item, list) or len(item) != 5:
        raise InvalidSnapshot("a station must be [id, last_ms, lat, lon, zone ids]")
    station_id, last_ms, lat, lon, zone_ids = item
    if not isinstance(station_id, str) or not station_id:
        raise InvalidSnapshot("a station id must be a non-empty string")
    if isinstance(last_ms, bool) or not isinstance(last_ms, int):
        raise InvalidSnapshot(f"station {station_id!r}: last_ms must be an integer")
    for value, low, high in ((lat, -90.0, 90.0), (lon, -180.0, 180.0)):
        if type(value) not in (int, float) or not low <= value <= high:
            raise InvalidSnapshot(f"station {station_id!r}: position out of range")
    if not isinstance(zone_ids, list) or not all(isinstance(z, str) for z in zone_ids):
        raise InvalidSnapshot(f"station {station_id!r}: zone ids must be a list of strings")
    return station_id, last_ms, float(lat), float(lon), zone_ids
