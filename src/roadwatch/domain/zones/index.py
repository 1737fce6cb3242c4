"""The zones' look-up structure: which zones contain a point, mostly in one dict access."""

from __future__ import annotations

import math
from collections.abc import Iterable

from roadwatch.domain.zones.geojson import InvalidZone, Zone
from roadwatch.domain.zones.geometry import IN, Edge, PolygonTest, in_polygons, ring_state

# Cells never get smaller than this (about 220 m of latitude); they grow when zones are huge.
_MIN_CELL_DEG = 0.002
_MAX_CELLS = 1 << 16
# Cells are keyed row * stride + column; 2**20 columns cover 360° at the smallest cell.
_ROW_STRIDE = 1 << 20
# Edges are attributed to every cell they pass within this distance of, so float rounding in
# a look-up's cell arithmetic can never put a point in a cell judged without its edges.
_EPS_DEG = 1e-9

# Per cell: ids of the zones covering it whole, then (id, edges to test) of those crossing it.
_CellEntry = tuple[tuple[str, ...], tuple[tuple[str, tuple[PolygonTest, ...]], ...]]
_Building = tuple[list[str], list[tuple[str, tuple[PolygonTest, ...]]]]


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
        hits = [zone_id for zone_id, polygons in partial if in_polygons(polygons, lon, lat)]
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
        rings: list[tuple[Edge, ...]] = []
        layout: list[tuple[int, list[int]]] = []
        for (exterior, _), holes in zone.polygon_tests:
            layout.append((len(rings), list(range(len(rings) + 1, len(rings) + 1 + len(holes)))))
            rings.append(exterior)
            rings.extend(edges for edges, _ in holes)
        # Per row and ring: each edge reaching the row, with its longitude span within the row.
        row_edges: dict[int, list[list[tuple[float, float, Edge]]]] = {}
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
                        ring_state((edge for _, _, edge in spans), False, x, centre_lat) == IN
                        for spans in per_ring
                    ]
                stop_lon = west_lon
                stop_col = col
                if any(
                    far[exterior] and not any(far[h] for h in holes) for exterior, holes in layout
                ):
                    building.setdefault(key, ([], []))[0].append(zone.id)


def _assemble(
    kept: list[tuple[Edge, ...]], far: list[bool], layout: list[tuple[int, list[int]]]
) -> tuple[PolygonTest, ...]:
    """Regroup one cell's ring tests by polygon, leaving out what cannot hold a point there."""
    polygons: list[PolygonTest] = []
    for exterior, holes in layout:
        if not kept[exterior] and not far[exterior]:
            continue  # the ray meets nothing and ends outside: outside that polygon
        tests = tuple((kept[h], far[h]) for h in holes if kept[h] or far[h])
        polygons.append(((kept[exterior], far[exterior]), tests))
    return tuple(polygons)


def _x_span(edge: Edge, low_lat: float, high_lat: float) -> tuple[float, float]:
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
