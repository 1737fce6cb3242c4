"""`roadwatch seed-events`: fill the database with many realistic events, fast.

For measuring the API at scale (docs/contract/targets.md §3: REST queries over 1,000,000 events) and
for showing the statistics pages something. Events of every type, on the Reims road network and in
its zones, spread over the last days with a daily rhythm, reported by stations from a fixed pool.
The same seed, count, days and end time give the same rows, and seeding twice inserts nothing new
(ids are derived from the seed and the event number).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pymysql.cursors import Cursor

from roadwatch.adapters.mysql.connection import DbConnection, connect
from roadwatch.adapters.mysql.store import ms_to_datetime
from roadwatch.domain.events import EventStatus, EventType, new_event_id
from roadwatch.domain.hazard import CAUSE_NAMES
from roadwatch.paths import deploy_dir
from roadwatch.settings import Settings
from roadwatch.simulation.network import REIMS_NETWORK_PATH

log = logging.getLogger(__name__)

# Rows per INSERT statement: far fewer round trips than one per row, and a few hundred KiB
# per statement, well under max_allowed_packet.
BATCH_SIZE = 2000
STATION_POOL = 5000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Shares of each event type: zone crossings dominate, accidents are rare.
TYPE_WEIGHTS: tuple[tuple[EventType, float], ...] = (
    (EventType.ZONE_ENTER, 0.30),
    (EventType.ZONE_EXIT, 0.30),
    (EventType.TRAFFIC_JAM, 0.22),
    (EventType.HAZARD, 0.11),
    (EventType.ACCIDENT, 0.07),
)
# Relative traffic per hour of the day (UTC, close enough to Reims time): rush hours peak.
HOURLY_WEIGHTS = (
    1, 1, 1, 1, 1, 2, 5, 9, 10, 7, 6, 6, 7, 6, 6, 7, 9, 10, 8, 6, 4, 3, 2, 1,
)  # fmt: skip
# Accidents gather at a few black spots; about this share of them, the rest anywhere.
BLACK_SPOTS = 25
BLACK_SPOT_SHARE = 0.6
# Events still going on at the end of the seeded period (the rest have ended).
ACTIVE_WITHIN_MS = 2 * HOUR_MS
TRAFFIC_JAM_CAUSE = 1
ACCIDENT_CAUSE = 2
METRES_PER_DEGREE_LAT = 111_320.0
# Candidate points drawn in each zone's bounding box; those inside are the zone's positions.
ZONE_POINT_TRIES = 2000
# Batches generated ahead while the previous ones are being inserted.
QUEUE_DEPTH = 4

_INSERT_EVENTS = (
    "INSERT IGNORE INTO events (id, type, status, version, started_at, updated_at, ended_at, "
    "lat, lon, cause_code, zone_id, zone_name, station_count, station_ids, details) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_INSERT_STATIONS = (
    "INSERT IGNORE INTO event_stations (event_id, station_id, started_at) VALUES (%s, %s, %s)"
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SeedReport:
    """What one seeding run did."""

    requested: int
    inserted: int
    seconds: float
    first_ms: int
    end_ms: int


@dataclass(frozen=True)
class _Zone:
    id: str
    name: str
    ring: tuple[tuple[float, float], ...]  # (lon, lat), closed


class _Places:
    """Positions along the road network (weighted by length) and inside the zones."""

    def __init__(self, network: Any, zones: Any, rng: random.Random) -> None:
        self._segments: list[tuple[float, float, float, float]] = []
        self._cumulative: list[float] = []
        total = 0.0
        for feature in network["features"]:
            coordinates = feature["geometry"]["coordinates"]
            for (lon1, lat1), (lon2, lat2) in itertools.pairwise(coordinates):
                total += math.hypot(lat2 - lat1, (lon2 - lon1) * math.cos(math.radians(lat1)))
                self._segments.append((lat1, lon1, lat2, lon2))
                self._cumulative.append(total)
        if not self._segments:
            raise ValueError("the road network has no segments")
        self._total = total
        self.zones = [_zone(feature) for feature in zones["features"]]
        if not self.zones:
            raise ValueError("the zones file has no zone")
        self.black_spots = [self.on_road(rng) for _ in range(BLACK_SPOTS)]
        # Drawn once: rejection sampling per event would cost more than everything else.
        self._zone_points = {zone.id: _points_inside(rng, zone) for zone in self.zones}

    def on_road(self, rng: random.Random, jitter_m: float = 15.0) -> tuple[float, float]:
        """A point on a road, chosen in proportion to road length."""
        index = bisect.bisect_left(self._cumulative, rng.random() * self._total)
        lat1, lon1, lat2, lon2 = self._segments[min(index, len(self._segments) - 1)]
        along = rng.random()
        return _jittered(rng, lat1 + (lat2 - lat1) * along, lon1 + (lon2 - lon1) * along, jitter_m)

    def near_black_spot(self, rng: random.Random) -> tuple[float, float]:
        lat, lon = rng.choice(self.black_spots)
        return _jittered(rng, lat, lon, 60.0)

    def in_zone(self, rng: random.Random, zone: _Zone) -> tuple[float, float]:
        """A point inside the zone's polygon."""
        return rng.choice(self._zone_points[zone.id])


def _points_inside(rng: random.Random, zone: _Zone) -> list[tuple[float, float]]:
    """Points inside the zone's polygon, by rejection sampling in its bounding box."""
    lons = [lon for lon, _ in zone.ring]
    lats = [lat for _, lat in zone.ring]
    points: list[tuple[float, float]] = []
    for _ in range(ZONE_POINT_TRIES):
        lon = rng.uniform(min(lons), max(lons))
        lat = rng.uniform(min(lats), max(lats))
        if _inside(lon, lat, zone.ring):
            points.append((round(lat, 6), round(lon, 6)))
    return points or [(zone.ring[0][1], zone.ring[0][0])]


def _zone(feature: Any) -> _Zone:
    geometry = feature["geometry"]
    polygon = (
        geometry["coordinates"] if geometry["type"] == "Polygon" else geometry["coordinates"][0]
    )
    ring = tuple((float(lon), float(lat)) for lon, lat in polygon[0])
    return _Zone(str(feature["properties"]["id"]), str(feature["properties"]["name"]), ring)


def _inside(lon: float, lat: float, ring: Sequence[tuple[float, float]]) -> bool:
    """Ray casting: whether the point is inside the closed ring."""
    inside = False
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _jittered(rng: random.Random, lat: float, lon: float, metres: float) -> tuple[float, float]:
    d_lat = rng.gauss(0.0, metres) / METRES_PER_DEGREE_LAT
    d_lon = rng.gauss(0.0, metres) / (METRES_PER_DEGREE_LAT * math.cos(math.radians(lat)))
    return round(lat + d_lat, 6), round(lon + d_lon, 6)


def _start_times(rng: random.Random, count: int, first_ms: int, end_ms: int) -> list[int]:
    """`count` start times in [first_ms, end_ms), denser at rush hours, in ascending order."""
    peak = max(HOURLY_WEIGHTS)
    span = end_ms - first_ms
    times: list[int] = []
    while len(times) < count:
        moment = first_ms + int(rng.random() * span)
        if rng.random() * peak < HOURLY_WEIGHTS[(moment // HOUR_MS) % 24]:
            times.append(moment)
    times.sort()
    return times


class _Generator:
    """Turns an event number and start time into the rows of one event."""

    def __init__(self, seed: int, end_ms: int, places: _Places) -> None:
        self._seed = str(seed)
        self._end_ms = end_ms
        self._places = places
        self._kinds = [kind for kind, _ in TYPE_WEIGHTS]
        self._weights = [weight for _, weight in TYPE_WEIGHTS]
        self._hazard_causes = sorted(CAUSE_NAMES)

    def rows(
        self, rng: random.Random, number: int, started_ms: int
    ) -> tuple[tuple[Any, ...], list[str]]:
        kind = rng.choices(self._kinds, self._weights)[0]
        places = self._places
        station_count = {
            EventType.ACCIDENT: rng.randint(1, 4),
            EventType.TRAFFIC_JAM: rng.randint(3, 8),
        }.get(kind, 1)
        stations = sorted({f"veh-{rng.randrange(STATION_POOL):05d}" for _ in range(station_count)})
        zone: _Zone | None = None
        cause: int | None = None
        details: dict[str, Any]
        if kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT):
            zone = rng.choice(places.zones)
            lat, lon = places.in_zone(rng, zone)
            details = {} if rng.random() < 0.9 else {"reason": "timeout"}
            duration_ms = 0
            version = 1
        elif kind is EventType.ACCIDENT:
            black_spot = rng.random() < BLACK_SPOT_SHARE
            lat, lon = places.near_black_spot(rng) if black_spot else places.on_road(rng)
            cause = ACCIDENT_CAUSE
            details = {"reporter_count": len(stations)}
            duration_ms = rng.randint(10, 90) * 60_000
            version = rng.randint(1, 4)
        elif kind is EventType.TRAFFIC_JAM:
            lat, lon = places.on_road(rng)
            cause = TRAFFIC_JAM_CAUSE
            speed = round(rng.uniform(3.0, 28.0), 1)
            details = {
                "direction": rng.choice(("N", "E", "S", "W")),
                "cells": rng.randint(1, 6),
                "vehicle_count": len(stations),
                "mean_speed_kmh": speed,
                "extent": _square(lat, lon, rng.uniform(80.0, 400.0)),
            }
            duration_ms = rng.randint(5, 60) * 60_000
            version = rng.randint(1, 12)
        else:
            lat, lon = places.on_road(rng)
            cause = rng.choice(self._hazard_causes)
            details = {
                "cause_name": CAUSE_NAMES[cause],
                "sub_cause_code": rng.randint(0, 5),
                "reporter_count": 1,
            }
            duration_ms = rng.randint(15, 240) * 60_000
            version = rng.randint(1, 3)
        if zone is not None:
            status, ended_ms, updated_ms = EventStatus.INSTANT, started_ms, started_ms
        elif (
            started_ms + duration_ms < self._end_ms or started_ms < self._end_ms - ACTIVE_WITHIN_MS
        ):
            ended_ms = min(started_ms + duration_ms, self._end_ms - 1)
            status, updated_ms = EventStatus.CLEARED, ended_ms
        else:
            status, ended_ms = EventStatus.ACTIVE, None
            updated_ms = min(started_ms + version * 30_000, self._end_ms - 1)
        event_id = new_event_id(started_ms, "seed", self._seed, str(number))
        row = (
            event_id,
            kind.value,
            status.value,
            version,
            ms_to_datetime(started_ms),
            ms_to_datetime(max(updated_ms, started_ms)),
            None if ended_ms is None else ms_to_datetime(max(ended_ms, started_ms)),
            lat,
            lon,
            cause,
            None if zone is None else zone.id,
            None if zone is None else zone.name,
            len(stations),
            orjson.dumps(stations).decode(),
            orjson.dumps(details).decode(),
        )
        return row, stations


def _square(lat: float, lon: float, half_m: float) -> dict[str, Any]:
    """A small GeoJSON Polygon around a point, standing for a jam's extent."""
    d_lat = half_m / METRES_PER_DEGREE_LAT
    d_lon = half_m / (METRES_PER_DEGREE_LAT * math.cos(math.radians(lat)))
    corners = [
        (lon - d_lon, lat - d_lat),
        (lon + d_lon, lat - d_lat),
        (lon + d_lon, lat + d_lat),
        (lon - d_lon, lat + d_lat),
        (lon - d_lon, lat - d_lat),
    ]
    return {"type": "Polygon", "coordinates": [[[round(x, 6), round(y, 6)] for x, y in corners]]}


_Batch = tuple[list[tuple[Any, ...]], list[tuple[str, str, Any]]]


def _batches(generator: _Generator, rng: random.Random, times: Sequence[int]) -> Iterator[_Batch]:
    for start in range(0, len(times), BATCH_SIZE):
        events: list[tuple[Any, ...]] = []
        stations: list[tuple[str, str, Any]] = []
        for number in range(start, min(start + BATCH_SIZE, len(times))):
            row, station_ids = generator.rows(rng, number, times[number])
            events.append(row)
            stations.extend((row[0], station, row[4]) for station in station_ids)
        yield events, stations


def seed_events(
    connection: DbConnection,
    count: int,
    *,
    seed: int = 1,
    days: float = 30.0,
    end_ms: int | None = None,
    network_path: Path | None = None,
    zones_path: Path | None = None,
    progress: Progress | None = None,
) -> SeedReport:
    """Insert `count` events started over the `days` before `end_ms` (default now)."""
    if count < 0:
        raise ValueError("count must not be negative")
    if not days > 0:
        raise ValueError("days must be positive")
    started = time.perf_counter()
    end = int(time.time() * 1000) if end_ms is None else end_ms
    first = end - int(days * DAY_MS)
    rng = random.Random(seed)
    network = orjson.loads((network_path or REIMS_NETWORK_PATH).read_bytes())
    zones = orjson.loads((zones_path or deploy_dir() / "zones" / "reims.geojson").read_bytes())
    generator = _Generator(seed, end, _Places(network, zones, rng))
    times = _start_times(rng, count, first, end)
    inserted = 0
    done = 0
    # One thread generates rows while this one waits on the server inserting the previous
    # batch: the two overlap on a 2-core machine.
    batches: queue.Queue[_Batch | None] = queue.Queue(QUEUE_DEPTH)
    failure: list[BaseException] = []
    stopped = threading.Event()

    def hand_over(batch: _Batch | None) -> bool:
        while not stopped.is_set():
            try:
                batches.put(batch, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in _batches(generator, rng, times):
                if not hand_over(batch):
                    return
        except BaseException as exc:  # handed to the inserting thread, which raises it
            failure.append(exc)
        hand_over(None)

    producer = threading.Thread(target=produce, name="seed-generator", daemon=True)
    producer.start()
    try:
        with connection.cursor() as cur:
            while (batch := batches.get()) is not None:
                events, stations = batch
                inserted += _insert(cur, events, stations)
                connection.commit()
                done += len(events)
                if progress is not None:
                    progress(done, count)
    finally:
        stopped.set()
        producer.join()
    if failure:
        raise failure[0]
    seconds = time.perf_counter() - started
    log.info("seeded %d of %d events in %.1f s", inserted, count, seconds)
    return SeedReport(count, inserted, seconds, first, end)


def _insert(
    cur: Cursor, events: list[tuple[Any, ...]], stations: list[tuple[str, str, Any]]
) -> int:
    # executemany() turns each list into multi-row INSERT statements (placeholders only).
    inserted = cur.executemany(_INSERT_EVENTS, events) or 0
    if stations:
        cur.executemany(_INSERT_STATIONS, stations)
    return inserted


def main(
    settings: Settings,
    count: int,
    *,
    seed: int,
    days: float,
    progress: Progress | None = None,
) -> SeedReport:
    """Seed the configured database (migrated first) with `count` events."""
    from roadwatch.adapters.mysql.migrate import apply_migrations  # noqa: PLC0415

    connection = connect(settings)
    try:
        apply_migrations(connection)
        return seed_events(connection, count, seed=seed, days=days, progress=progress)
    finally:
        connection.close()
