"""Zones (docs/contract/detection.md §6): GeoJSON polygons, a fast point look-up, and zone
enter/exit detection."""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import METRES_PER_DEGREE

# A position is (longitude, latitude): GeoJSON order (RFC 7946 §3.1.1).
Position = tuple[float, float]
Ring = tuple[Position, ...]
Polygon = tuple[Ring, ...]
# One polygon edge as (lon1, lat1, lon2, lat2), flat for a fast inner loop.
_Edge = tuple[float, float, float, float]
# A ring to test: the edges a ray cast east from the point may meet, and whether the ray's far
# end lies inside the ring (False for a ray to infinity; a grid cell may know better).
_RingTest = tuple[tuple[_Edge, ...], bool]
# A polygon to test: its exterior ring, then its holes.
_PolygonTest = tuple[_RingTest, tuple[_RingTest, ...]]

MAX_ZONE_ID_LEN = 64
MAX_ZONE_NAME_LEN = 200
# Enough for a detailed district outline, small enough that one zone never stalls the gateway.
MAX_ZONE_POSITIONS = 10_000
# Hysteresis is about GPS noise and lane width; kilometres would be a configuration mistake.
MAX_HYSTERESIS_M = 10_000.0
DEFAULT_TIMEOUT_MS = 600_000

_ZONE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_GEOJSON_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
        "Feature",
        "FeatureCollection",
    }
)


class InvalidZone(ValueError):
    """A zone that is not a valid GeoJSON Polygon or MultiPolygon Feature; says what is wrong."""


class InvalidSnapshot(ValueError):
    """Saved zone detection state that cannot be restored."""


@dataclass(frozen=True, slots=True)
class Zone:
    """A named area: one or more polygons with holes, in (lon, lat) order like GeoJSON.

    `hysteresis_m` 0 means "use the detector's default". `bbox` is (min_lon, min_lat, max_lon,
    max_lat). The name is plain text from users: it is stored and shown, never interpreted.
    """

    id: str
    name: str
    polygons: tuple[Polygon, ...] = field(repr=False)
    hysteresis_m: float = 0.0
    bbox: tuple[float, float, float, float] = field(init=False, compare=False)
    _rings: tuple[_PolygonTest, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "id", _zone_id(self.id, "id"))
        set_field(self, "name", _zone_name(self.name, "name"))
        set_field(self, "hysteresis_m", _hysteresis(self.hysteresis_m, "hysteresis_m"))
        polygons = _polygons(self.polygons, "polygons")
        set_field(self, "polygons", polygons)
        lons = [lon for polygon in polygons for lon, _ in polygon[0]]
        lats = [lat for polygon in polygons for _, lat in polygon[0]]
        set_field(self, "bbox", (min(lons), min(lats), max(lons), max(lats)))
        set_field(self, "_rings", tuple(_polygon_test(polygon) for polygon in polygons))

    def contains(self, lat: float, lon: float) -> bool:
        """Tell whether the point is inside the zone; a point on its boundary is inside."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        if not (min_lat <= lat <= max_lat and min_lon <= lon <= max_lon):
            return False
        return _in_polygons(self._rings, lon, lat)

    def to_feature(self) -> dict[str, Any]:
        """Return the zone as a GeoJSON Feature (a Polygon when it has one polygon)."""
        properties: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.hysteresis_m:
            properties["hysteresis_m"] = self.hysteresis_m
        coordinates = [[[list(p) for p in ring] for ring in polygon] for polygon in self.polygons]
        if len(coordinates) == 1:
            geometry = {"type": "Polygon", "coordinates": coordinates[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": coordinates}
        return {"type": "Feature", "properties": properties, "geometry": geometry}


def zone_from_feature(feature: Any) -> Zone:
    """Validate a GeoJSON Feature (from a file or a REST client) into a Zone."""
    if not isinstance(feature, dict):
        raise InvalidZone("a zone must be a GeoJSON Feature object")
    if feature.get("type") != "Feature":
        raise InvalidZone('a zone must be a GeoJSON Feature: "type" must be "Feature"')
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise InvalidZone("properties must be an object with id and name")
    if "id" not in properties:
        raise InvalidZone("properties.id is missing")
    if "name" not in properties:
        raise InvalidZone("properties.name is missing")
    zone_id = _zone_id(properties["id"], "properties.id")
    name = _zone_name(properties["name"], "properties.name")
    raw_hysteresis = properties.get("hysteresis_m")
    hysteresis = (
        0.0 if raw_hysteresis is None else _hysteresis(raw_hysteresis, "properties.hysteresis_m")
    )
    # RFC 7946 also allows a Feature-level id; one that disagrees would make two names for a zone.
    feature_id = feature.get("id")
    if feature_id is not None and feature_id != zone_id:
        raise InvalidZone("the feature's id differs from properties.id")
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict):
        raise InvalidZone("geometry must be a Polygon or MultiPolygon object")
    kind = geometry.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        if isinstance(kind, str) and kind in _GEOJSON_TYPES:
            raise InvalidZone(f"geometry type must be Polygon or MultiPolygon, not {kind}")
        raise InvalidZone("geometry type must be Polygon or MultiPolygon")
    if "coordinates" not in geometry:
        raise InvalidZone("geometry.coordinates is missing")
    coordinates = geometry["coordinates"]
    if kind == "Polygon":
        polygons: tuple[Polygon, ...] = (_polygon(coordinates, "geometry.coordinates", _Budget()),)
    else:
        polygons = _polygons(coordinates, "geometry.coordinates")
    return Zone(zone_id, name, polygons, hysteresis)


def zones_from_geojson(doc: Any) -> list[Zone]:
    """Validate a GeoJSON FeatureCollection of zones; ids must be unique."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise InvalidZone("zones must be a GeoJSON FeatureCollection")
    features = doc.get("features")
    if not isinstance(features, list):
        raise InvalidZone("features must be a list of Feature objects")
    zones: list[Zone] = []
    seen: set[str] = set()
    for i, feature in enumerate(features):
        try:
            zone = zone_from_feature(feature)
        except InvalidZone as exc:
            raise InvalidZone(f"features[{i}]: {exc}") from exc
        if zone.id in seen:
            raise InvalidZone(f"features[{i}]: duplicate zone id {zone.id!r}")
        seen.add(zone.id)
        zones.append(zone)
    return zones


def zones_to_geojson(zones: Iterable[Zone]) -> dict[str, Any]:
    """Return zones as a GeoJSON FeatureCollection."""
    return {"type": "FeatureCollection", "features": [zone.to_feature() for zone in zones]}


def distance_outside_m(zone: Zone, lat: float, lon: float) -> float:
    """Return how many metres the point lies outside the zone (0 when inside or on the edge)."""
    if zone.contains(lat, lon):
        return 0.0
    return _boundary_distance_m(zone, lat, lon)


def _boundary_distance_m(zone: Zone, lat: float, lon: float) -> float:
    """Return the distance in metres from the point to the nearest edge of the zone."""
    # A local flat projection around the point: exact enough over hysteresis distances.
    kx = METRES_PER_DEGREE * math.cos(math.radians(lat))
    ky = METRES_PER_DEGREE
    best = math.inf
    for exterior, holes in zone._rings:
        for x1, y1, x2, y2 in itertools.chain(exterior[0], *(hole[0] for hole in holes)):
            ax = (x1 - lon) * kx
            ay = (y1 - lat) * ky
            dx = (x2 - lon) * kx - ax
            dy = (y2 - lat) * ky - ay
            length2 = dx * dx + dy * dy
            t = 0.0 if length2 == 0.0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / length2))
            px = ax + t * dx
            py = ay + t * dy
            d2 = px * px + py * py
            best = min(best, d2)
    return math.sqrt(best)


def _near_m(zone: Zone, lat: float, lon: float, metres: float) -> bool:
    """Tell whether a point outside the zone is at most `metres` from it."""
    min_lon, min_lat, max_lon, max_lat = zone.bbox
    # The distance to the bounding box is a lower bound: far points skip the exact search.
    dy = max(0.0, min_lat - lat, lat - max_lat) * METRES_PER_DEGREE
    dx = max(0.0, min_lon - lon, lon - max_lon) * METRES_PER_DEGREE * math.cos(math.radians(lat))
    if dx * dx + dy * dy > metres * metres:
        return False
    return _boundary_distance_m(zone, lat, lon) <= metres


# ---------------------------------------------------------------------------------------------
# Validation


class _Budget:
    """Counts positions across one zone's rings to enforce MAX_ZONE_POSITIONS."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_ZONE_POSITIONS

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise InvalidZone(f"too many positions: a zone may have at most {MAX_ZONE_POSITIONS}")


def _zone_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or _ZONE_ID.fullmatch(value) is None:
        raise InvalidZone(
            f"{where} must be 1 to {MAX_ZONE_ID_LEN} characters of letters, digits, _ and -"
        )
    return value


def _zone_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ZONE_NAME_LEN:
        raise InvalidZone(f"{where} must be a string of 1 to {MAX_ZONE_NAME_LEN} characters")
    if not value.strip():
        raise InvalidZone(f"{where} must not be blank")
    return value


def _hysteresis(value: Any, where: str) -> float:
    if type(value) not in (int, float) or not 0.0 <= value <= MAX_HYSTERESIS_M:
        raise InvalidZone(f"{where} must be a number of metres in [0, {MAX_HYSTERESIS_M:g}]")
    return float(value)


def _polygons(value: Any, where: str) -> tuple[Polygon, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidZone(f"{where} must be a non-empty list of polygons")
    budget = _Budget()
    return tuple(_polygon(item, f"{where}[{i}]", budget) for i, item in enumerate(value))


def _polygon(value: Any, where: str, budget: _Budget) -> Polygon:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidZone(f"{where} must be a non-empty list of linear rings")
    return tuple(_ring(item, f"{where}[{i}]", budget) for i, item in enumerate(value))


def _ring(value: Any, where: str, budget: _Budget) -> Ring:
    if not isinstance(value, list | tuple):
        raise InvalidZone(f"{where} must be a list of positions")
    if len(value) < 4:
        raise InvalidZone(f"{where}: a linear ring needs at least 4 positions")
    budget.take(len(value))
    ring = tuple(_position(item, f"{where}[{i}]") for i, item in enumerate(value))
    if ring[0] != ring[-1]:
        raise InvalidZone(f"{where}: a linear ring must end at the position it starts from")
    # Taken from the first position: near ±180° the products of absolute coordinates are so
    # large that a small ring's area cancels out to 0.0 and a valid zone was refused.
    x0, y0 = ring[0]
    twice_area = sum(
        (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        for (x1, y1), (x2, y2) in itertools.pairwise(ring)
    )
    if twice_area == 0.0:
        raise InvalidZone(f"{where}: the ring encloses no area")
    return ring


def _position(value: Any, where: str) -> Position:
    # RFC 7946 §3.1.1: longitude, latitude and an optional altitude, which zones ignore.
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise InvalidZone(f"{where} must be a [longitude, latitude] position")
    lon, lat = value[0], value[1]
    # `type(...) in` refuses bool; the range test also refuses NaN and infinities.
    if type(lon) not in (int, float) or not -180.0 <= lon <= 180.0:
        raise InvalidZone(f"{where}: longitude must be a number in [-180, 180]")
    if type(lat) not in (int, float) or not -90.0 <= lat <= 90.0:
        raise InvalidZone(f"{where}: latitude must be a number in [-90, 90]")
    if len(value) == 3 and (type(value[2]) not in (int, float) or not math.isfinite(value[2])):
        raise InvalidZone(f"{where}: altitude must be a number")
    return float(lon), float(lat)


# ---------------------------------------------------------------------------------------------
# Point in polygon


def _polygon_test(polygon: Polygon) -> _PolygonTest:
    rings = [
        (
            tuple(
                (x1, y1, x2, y2)
                for (x1, y1), (x2, y2) in itertools.pairwise(ring)
                if (x1, y1) != (x2, y2)
            ),
            False,
        )
        for ring in polygon
    ]
    return rings[0], tuple(rings[1:])


_OUT, _IN, _ON = 0, 1, 2


def _ring_state(edges: Iterable[_Edge], inside: bool, x: float, y: float) -> int:
    """Tell whether (x, y) is outside, inside or on a ring, casting a ray towards +x.

    `inside` is the state at the ray's far end; each edge crossed flips it (even-odd rule).
    Orientation signs instead of an intersection abscissa keep the test exact on grid-aligned
    coordinates, so a point on an edge is always found there.
    """
    for x1, y1, x2, y2 in edges:
        if (y1 > y) != (y2 > y):
            side = (x2 - x1) * (y - y1) - (x - x1) * (y2 - y1)
            if side == 0.0:
                return _ON
            if (side > 0.0) == (y2 > y1):
                inside = not inside
        elif y in (y1, y2):
            # Touches the ray's line without crossing it: only the boundary test matters.
            if (x1 == x and y1 == y) or (x2 == x and y2 == y):
                return _ON
            if y1 == y2 and (x1 <= x <= x2 or x2 <= x <= x1):
                return _ON
    return _IN if inside else _OUT


def _in_polygons(polygons: Iterable[_PolygonTest], x: float, y: float) -> bool:
    """Tell whether (x, y) is in any polygon: inside or on its exterior, not strictly in a hole.

    docs/contract/detection.md §6: the boundary is inside, a hole's edge included. Judging rings one
    by one keeps a hole that strays outside its exterior from adding area, whatever a client sends.
    """
    for (edges, far), holes in polygons:
        if _ring_state(edges, far, x, y) == _OUT:
            continue
        for hole_edges, hole_far in holes:
            if _ring_state(hole_edges, hole_far, x, y) == _IN:
                break
        else:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Index

# Cells never get smaller than this (about 220 m of latitude); they grow when zones are huge.
_MIN_CELL_DEG = 0.002
_MAX_CELLS = 1 << 16
# Cells are keyed row * stride + column; 2**20 columns cover 360° at the smallest cell.
_ROW_STRIDE = 1 << 20
# Edges are attributed to every cell they pass within this distance of, so float rounding in
# a look-up's cell arithmetic can never put a point in a cell judged without its edges.
_EPS_DEG = 1e-9

# Per cell: ids of the zones covering it whole, then (id, edges to test) of those crossing it.
_CellEntry = tuple[tuple[str, ...], tuple[tuple[str, tuple[_PolygonTest, ...]], ...]]
_Building = tuple[list[str], list[tuple[str, tuple[_PolygonTest, ...]]]]


class ZoneIndex:
    """Find the zones containing a point with a grid of cells over the zones' bounding boxes.

    Each cell lists the zones that cover it entirely and, for the zones whose boundary crosses
    it, only the edges a ray cast from inside that cell can meet; most look-ups are one dict
    access. Results are zone ids in id order.
    """

    __slots__ = ("_cell_deg", "_cells", "_inv", "_zones")

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        by_id: dict[str, Zone] = {}
        for zone in zones:
            if zone.id in by_id:
                raise InvalidZone(f"duplicate zone id {zone.id!r}")
            by_id[zone.id] = zone
        self._zones = dict(sorted(by_id.items()))
        self._cell_deg = _cell_size(self._zones.values())
        self._inv = 1.0 / self._cell_deg
        building: dict[int, _Building] = {}
        for zone in self._zones.values():
            self._add(zone, building)
        self._cells: dict[int, _CellEntry] = {
            key: (tuple(full), tuple(partial)) for key, (full, partial) in building.items()
        }

    def __len__(self) -> int:
        return len(self._zones)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._zones

    @property
    def zones(self) -> tuple[Zone, ...]:
        """Return the indexed zones in id order."""
        return tuple(self._zones.values())

    def __getitem__(self, zone_id: str) -> Zone:
        return self._zones[zone_id]

    def get(self, zone_id: str) -> Zone | None:
        """Return the zone with this id, if indexed."""
        return self._zones.get(zone_id)

    def ids_at(self, lat: float, lon: float) -> tuple[str, ...]:
        """Return the ids of the zones containing the point (boundary included), in id order."""
        inv = self._inv
        entry = self._cells.get(int((lat + 90.0) * inv) * _ROW_STRIDE + int((lon + 180.0) * inv))
        if entry is None:
            return ()
        full, partial = entry
        if not partial:
            return full
        hits = [zone_id for zone_id, polygons in partial if _in_polygons(polygons, lon, lat)]
        if not hits:
            return full
        if not full:
            return tuple(hits)
        return tuple(sorted((*full, *hits)))

    def zones_at(self, lat: float, lon: float) -> list[Zone]:
        """Return the zones containing the point (boundary included), in id order."""
        zones = self._zones
        return [zones[zone_id] for zone_id in self.ids_at(lat, lon)]

    def _add(self, zone: Zone, building: dict[int, _Building]) -> None:
        cell = self._cell_deg
        inv = self._inv
        # Rings numbered flat; `layout` gives each polygon's exterior and hole numbers.
        rings: list[tuple[_Edge, ...]] = []
        layout: list[tuple[int, list[int]]] = []
        for (exterior, _), holes in zone._rings:
            layout.append((len(rings), list(range(len(rings) + 1, len(rings) + 1 + len(holes)))))
            rings.append(exterior)
            rings.extend(edges for edges, _ in holes)
        # Per row and ring: each edge reaching the row, with its longitude span within the row.
        row_edges: dict[int, list[list[tuple[float, float, _Edge]]]] = {}
        touched: dict[int, set[int]] = {}
        for r, edges in enumerate(rings):
            for edge in edges:
                y1, y2 = edge[1], edge[3]
                first = math.floor((min(y1, y2) - _EPS_DEG + 90.0) * inv)
                last = math.floor((max(y1, y2) + _EPS_DEG + 90.0) * inv)
                for row in range(first, last + 1):
                    low, high = _x_span(
                        edge, row * cell - 90.0 - _EPS_DEG, (row + 1) * cell - 90.0 + _EPS_DEG
                    )
                    row_edges.setdefault(row, [[] for _ in rings])[r].append((low, high, edge))
                    west = math.floor((low - _EPS_DEG + 180.0) * inv)
                    east = math.floor((high + _EPS_DEG + 180.0) * inv)
                    touched.setdefault(row, set()).update(range(west, east + 1))
        min_lon, _, max_lon, _ = zone.bbox
        first_col = math.floor((min_lon - _EPS_DEG + 180.0) * inv)
        last_col = math.floor((max_lon + _EPS_DEG + 180.0) * inv)
        # A row no edge reaches is wholly outside: a ray along it would cross nothing.
        for row, per_ring in row_edges.items():
            cols = touched[row]
            centre_lat = (row + 0.5) * cell - 90.0
            # Walking west, remember the nearest untouched cell to the east: every ring's state
            # is the same all over it, so a ray from a touched cell can stop there.
            stop_lon = math.inf
            stop_col = last_col + 2
            far: list[bool] = [False] * len(rings)
            for col in range(last_col, first_col - 1, -1):
                key = row * _ROW_STRIDE + col
                west_lon = col * cell - 180.0
                if col in cols:
                    kept = [
                        tuple(
                            edge
                            for low, high, edge in spans
                            if high >= west_lon - _EPS_DEG and low <= stop_lon + _EPS_DEG
                        )
                        for spans in per_ring
                    ]
                    polygons = _assemble(kept, far, layout)
                    if polygons:
                        building.setdefault(key, ([], []))[1].append((zone.id, polygons))
                    continue
                if stop_col != col + 1:
                    # The first cell of a run of untouched ones: judge its centre once.
                    x = west_lon + 0.5 * cell
                    far = [
                        _ring_state((edge for _, _, edge in spans), False, x, centre_lat) == _IN
                        for spans in per_ring
                    ]
                stop_lon = west_lon
                stop_col = col
                if any(
                    far[exterior] and not any(far[h] for h in holes) for exterior, holes in layout
                ):
                    building.setdefault(key, ([], []))[0].append(zone.id)


def _assemble(
    kept: list[tuple[_Edge, ...]], far: list[bool], layout: list[tuple[int, list[int]]]
) -> tuple[_PolygonTest, ...]:
    """Regroup one cell's ring tests by polygon, leaving out what cannot hold a point there."""
    polygons: list[_PolygonTest] = []
    for exterior, holes in layout:
        if not kept[exterior] and not far[exterior]:
            continue  # the ray meets nothing and ends outside: outside that polygon
        tests = tuple((kept[h], far[h]) for h in holes if kept[h] or far[h])
        polygons.append(((kept[exterior], far[exterior]), tests))
    return tuple(polygons)


def _x_span(edge: _Edge, low_lat: float, high_lat: float) -> tuple[float, float]:
    """Return the longitude range of the part of `edge` between two latitudes."""
    x1, y1, x2, y2 = edge
    if y1 == y2:
        return min(x1, x2), max(x1, x2)
    t1 = min(1.0, max(0.0, (low_lat - y1) / (y2 - y1)))
    t2 = min(1.0, max(0.0, (high_lat - y1) / (y2 - y1)))
    xa = x1 + (x2 - x1) * t1
    xb = x1 + (x2 - x1) * t2
    return min(xa, xb), max(xa, xb)


def _cell_size(zones: Iterable[Zone]) -> float:
    """Return the smallest cell size that keeps the grid within _MAX_CELLS cells."""
    boxes = [zone.bbox for zone in zones]
    cell = _MIN_CELL_DEG
    while True:
        total = sum(
            (math.floor((x2 + 180.0) / cell) - math.floor((x1 + 180.0) / cell) + 1)
            * (math.floor((y2 + 90.0) / cell) - math.floor((y1 + 90.0) / cell) + 1)
            for x1, y1, x2, y2 in boxes
        )
        if total <= _MAX_CELLS:
            return cell
        cell *= 1.5


# ---------------------------------------------------------------------------------------------
# Detection


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
_SNAPSHOT_FORMAT = 1


class ZoneDetector:
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

    def snapshot(self) -> dict[str, Any]:
        """Return the detection state as plain JSON values, for restore() after a restart."""
        return {
            "format": _SNAPSHOT_FORMAT,
            "clock_ms": self.clock_ms,
            "zones": [zone.to_feature() for zone in self._index.zones],
            "stations": [
                [station_id, s.last_ms, s.lat, s.lon, list(s.zones)]
                for station_id, s in sorted(self._stations.items())
            ],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the state, zones included, with a snapshot() taken earlier.

        The zones are the snapshot's; call set_zones() afterwards with the current ones, so
        zones changed in between yield their exits.
        """
        if not isinstance(data, dict) or data.get("format") != _SNAPSHOT_FORMAT:
            raise InvalidSnapshot("not a zone detector snapshot of a known format")
        clock = data.get("clock_ms")
        if clock is not None and (isinstance(clock, bool) or not isinstance(clock, int)):
            raise InvalidSnapshot("clock_ms must be an integer or null")
        raw_zones = data.get("zones")
        raw_stations = data.get("stations")
        if not isinstance(raw_zones, list) or not isinstance(raw_stations, list):
            raise InvalidSnapshot("zones and stations must be lists")
        try:
            index = ZoneIndex(
                zones_from_geojson({"type": "FeatureCollection", "features": raw_zones})
            )
        except InvalidZone as exc:
            raise InvalidSnapshot(f"zones: {exc}") from exc
        stations: dict[str, _Station] = {}
        gen = 0
        for item in raw_stations:
            station_id, last_ms, lat, lon, zone_ids = _station_record(item)
            if any(zone_id not in index for zone_id in zone_ids):
                raise InvalidSnapshot(f"station {station_id!r} is inside an unknown zone")
            gen += 1
            station = _Station(gen, last_ms, lat, lon)
            station.zones = tuple(sorted(set(zone_ids)))
            stations[station_id] = station
        self._index = index
        self._stations = stations
        self._clock = _NO_CLOCK if clock is None else clock
        self._gen = gen
        self._timeouts = []
        self._forget = []
        for station_id, station in stations.items():
            if station.zones:
                self._queue_timeout(station_id, station)
            else:
                self._queue_forget(station_id, station)

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
        return hysteresis > 0.0 and _near_m(zone, lat, lon, hysteresis)

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
