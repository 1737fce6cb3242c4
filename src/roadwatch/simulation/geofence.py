"""Zone outlines for staging zone crossings, and the crossings docs/contract/detection.md §6 says
they cause.

Written apart from the detector on purpose: the simulator's ground truth is derived from the
published positions and the polygons by those rules alone, so it checks
the detector rather than repeating it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadwatch.domain.geo import METRES_PER_DEGREE

# A ring as (lat, lon) vertices, closed (first == last).
Ring = tuple[tuple[float, float], ...]
# A polygon: its exterior ring, then its holes.
Polygon = tuple[Ring, ...]

# docs/contract/detection.md §6: a station silent this long while inside a zone gets a timeout exit.
DEFAULT_TIMEOUT_MS = 600_000


class InvalidZoneFile(ValueError):
    """The zones document cannot be read as GeoJSON Polygon or MultiPolygon features."""


@dataclass(frozen=True, slots=True)
class ZoneShape:
    """One zone: its id, name, polygons and exit hysteresis in metres (0: the default)."""

    id: str
    name: str
    polygons: tuple[Polygon, ...] = field(repr=False)
    hysteresis_m: float = 0.0

    def contains(self, lat: float, lon: float) -> bool:
        """Tell whether the point is inside; docs/contract/detection.md §6: a point on the boundary
        is inside."""
        for exterior, *holes in self.polygons:
            if _ring_side(exterior, lat, lon) < 0:
                continue
            if any(_ring_side(hole, lat, lon) > 0 for hole in holes):
                continue
            return True
        return False

    def distance_outside_m(self, lat: float, lon: float) -> float:
        """Return how far the point lies outside the zone, in metres (0 inside)."""
        if self.contains(lat, lon):
            return 0.0
        # A flat projection around the point: exact enough over hysteresis distances.
        kx = METRES_PER_DEGREE * math.cos(math.radians(lat))
        ky = METRES_PER_DEGREE
        best = math.inf
        for polygon in self.polygons:
            for ring in polygon:
                for (lat1, lon1), (lat2, lon2) in itertools.pairwise(ring):
                    ax, ay = (lon1 - lon) * kx, (lat1 - lat) * ky
                    dx, dy = (lon2 - lon) * kx - ax, (lat2 - lat) * ky - ay
                    length2 = dx * dx + dy * dy
                    t = 0.0 if length2 == 0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
                    best = min(best, (ax + t * dx) ** 2 + (ay + t * dy) ** 2)
        return math.sqrt(best)


def _ring_side(ring: Ring, lat: float, lon: float) -> int:
    """Return 1 inside the ring, 0 on its boundary, -1 outside (even-odd ray cast eastwards)."""
    inside = False
    for (y1, x1), (y2, x2) in itertools.pairwise(ring):
        cross = (x2 - x1) * (lat - y1) - (lon - x1) * (y2 - y1)
        if cross == 0.0 and min(x1, x2) <= lon <= max(x1, x2) and min(y1, y2) <= lat <= max(y1, y2):
            return 0
        if (y1 > lat) != (y2 > lat) and (cross > 0.0) == (y2 > y1):
            inside = not inside
    return 1 if inside else -1


def zone_shapes_from_geojson(doc: Any) -> list[ZoneShape]:
    """Read the Polygon and MultiPolygon features of a zones FeatureCollection."""
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise InvalidZoneFile("zones must be a GeoJSON FeatureCollection")
    shapes: list[ZoneShape] = []
    for index, feature in enumerate(doc.get("features") or []):
        try:
            properties = feature["properties"]
            geometry = feature["geometry"]
            kind = geometry["type"]
            if kind == "Polygon":
                raw = [geometry["coordinates"]]
            elif kind == "MultiPolygon":
                raw = geometry["coordinates"]
            else:
                continue
            # GeoJSON positions are [lon, lat] (RFC 7946 §3.1.1); rings are kept as (lat, lon).
            polygons = tuple(
                tuple(tuple((float(p[1]), float(p[0])) for p in ring) for ring in polygon)
                for polygon in raw
            )
            shapes.append(
                ZoneShape(
                    id=str(properties["id"]),
                    name=str(properties.get("name", properties["id"])),
                    polygons=polygons,
                    hysteresis_m=float(properties.get("hysteresis_m") or 0.0),
                )
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidZoneFile(f"feature {index} is not a zone: {exc}") from exc
    return shapes


def load_zone_shapes(path: str | Path) -> list[ZoneShape]:
    """Read the zones of a GeoJSON file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidZoneFile(f"{path}: not valid JSON ({exc})") from exc
    return zone_shapes_from_geojson(doc)


@dataclass(slots=True)
class _Membership:
    last_ms: int = 0
    inside: tuple[str, ...] = ()


class CrossingTruth:
    """The zone_enter / zone_exit events that docs/contract/detection.md §6 derives from stations'
    positions.

    Feed each station's published positions in time order; `expected()` lists the crossings,
    with the timeout exits of stations gone silent inside a zone by the given clock.
    """

    def __init__(
        self,
        zones: Sequence[ZoneShape],
        *,
        hysteresis_m: float = 0.0,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        self.zones = {zone.id: zone for zone in sorted(zones, key=lambda zone: zone.id)}
        self.hysteresis_m = hysteresis_m
        self.timeout_ms = timeout_ms
        self._stations: dict[str, _Membership] = {}
        self._events: list[dict[str, Any]] = []

    def position(self, station: str, t_ms: int, lat: float, lon: float) -> None:
        """Apply one published position of `station`."""
        state = self._stations.setdefault(station, _Membership())
        state.last_ms = t_ms
        found = [zone_id for zone_id, zone in self.zones.items() if zone.contains(lat, lon)]
        kept: list[str] = []
        for zone_id in state.inside:
            zone = self.zones[zone_id]
            band = zone.hysteresis_m or self.hysteresis_m
            if zone_id in found or (band > 0 and zone.distance_outside_m(lat, lon) <= band):
                kept.append(zone_id)
            else:
                self._events.append(_crossing("zone_exit", station, zone_id, t_ms, "left"))
        # docs/contract/detection.md §6: the exits of one message come before its enters.
        for zone_id in found:
            if zone_id not in state.inside:
                kept.append(zone_id)
                self._events.append(_crossing("zone_enter", station, zone_id, t_ms, None))
        state.inside = tuple(sorted(kept))

    def inside(self, station: str) -> tuple[str, ...]:
        """Return the zones a station is inside after its last position."""
        state = self._stations.get(station)
        return () if state is None else state.inside

    def expected(self, now_ms: int) -> list[dict[str, Any]]:
        """Return every crossing so far, and the timeouts due by `now_ms`, oldest first."""
        events = list(self._events)
        for station, state in self._stations.items():
            due = state.last_ms + self.timeout_ms
            if state.inside and now_ms > due:
                events += [
                    _crossing("zone_exit", station, zone_id, due, "timeout")
                    for zone_id in state.inside
                ]
        events.sort(key=lambda event: (event["at_ms"], event["station_ids"][0]))
        return events


def _crossing(
    kind: str, station: str, zone_id: str, t_ms: int, reason: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "status": "instant",
        "station_ids": [station],
        "zone_id": zone_id,
        "exact_stations": True,
        "at_ms": t_ms,
    }
    if reason is not None:
        event["reason"] = reason
    return event


def route_points(
    coordinates: Iterable[Sequence[tuple[float, float]]], step_m: float
) -> list[tuple[float, float]]:
    """Return points every `step_m` or closer along polylines of (lat, lon) vertices."""
    points: list[tuple[float, float]] = []
    for line in coordinates:
        for (lat1, lon1), (lat2, lon2) in itertools.pairwise(line):
            dy = (lat2 - lat1) * METRES_PER_DEGREE
            dx = (lon2 - lon1) * METRES_PER_DEGREE * math.cos(math.radians(lat1))
            steps = max(1, math.ceil(math.hypot(dx, dy) / step_m))
            points += [
                (lat1 + (lat2 - lat1) * k / steps, lon1 + (lon2 - lon1) * k / steps)
                for k in range(steps)
            ]
        if line:
            points.append(line[-1])
    return points
