"""Distances and positions on the WGS84 sphere, and a grid index for radius look-ups."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

# Mean Earth radius (IUGG); a sphere is within 0.5 % of WGS84, plenty for 200 m thresholds.
EARTH_RADIUS_M = 6_371_008.8
METRES_PER_DEGREE = math.pi * EARTH_RADIUS_M / 180.0

# Look-ups widen their box by this factor so float rounding never loses a point on the edge.
_SEARCH_MARGIN = 1.001

T = TypeVar("T")


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the great-circle distance between two points in metres."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    half_dphi = (phi2 - phi1) * 0.5
    half_dlambda = math.radians(lon2 - lon1) * 0.5
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """Return the point `distance_m` away from (lat, lon) along `bearing_deg` from north."""
    phi1 = math.radians(lat)
    lambda1 = math.radians(lon)
    theta = math.radians(bearing_deg)
    delta = distance_m / EARTH_RADIUS_M
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lambda2 = lambda1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    return math.degrees(phi2), wrap_lon(math.degrees(lambda2))


def wrap_lon(lon: float) -> float:
    """Bring a longitude into [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def mean_position(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Return the mean (lat, lon) of nearby points, correct across the antimeridian."""
    count = 0
    lat_sum = 0.0
    offset_sum = 0.0
    ref_lon = 0.0
    for lat, lon in points:
        if count == 0:
            ref_lon = lon
        # Offsets from the first longitude keep a cluster at ±180° together.
        offset_sum += (lon - ref_lon + 180.0) % 360.0 - 180.0
        lat_sum += lat
        count += 1
    if count == 0:
        raise ValueError("mean of no points")
    lon = ref_lon + offset_sum / count
    if not -180.0 <= lon <= 180.0:
        lon = wrap_lon(lon)
    return lat_sum / count, lon


def lon_reach_deg(lat: float, distance_m: float) -> float:
    """Return the largest longitude difference of any point within `distance_m` of latitude `lat`.

    At least 180 when the circle contains a pole (every longitude is then in reach).
    """
    sin_delta = math.sin(min(math.pi, distance_m / EARTH_RADIUS_M))
    cos_lat = math.cos(math.radians(lat))
    if distance_m >= EARTH_RADIUS_M * math.pi / 2 or sin_delta >= cos_lat:
        return 180.0
    return math.degrees(math.asin(sin_delta / cos_lat))


class GeoGrid(Generic[T]):
    """Buckets items by position so that a radius look-up visits only a few cells.

    Rows are `cell_m` high; each row is cut into a whole number of columns about `cell_m` wide
    at its poleward edge, so cells stay square-ish at any latitude and wrap at the antimeridian.
    """

    __slots__ = ("_cell_deg", "_cells", "_cols_by_row")

    def __init__(self, cell_m: float) -> None:
        if not cell_m > 0:
            raise ValueError("cell size must be positive")
        self._cell_deg = cell_m / METRES_PER_DEGREE
        # An insertion-ordered dict per cell, so iteration order never depends on hashing.
        self._cells: dict[tuple[int, int], dict[T, None]] = {}
        self._cols_by_row: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._cells.values())

    def _columns(self, row: int) -> int:
        cols = self._cols_by_row.get(row)
        if cols is None:
            edge = min(90.0, max(abs(row), abs(row + 1)) * self._cell_deg)
            cols = max(1, int(360.0 * math.cos(math.radians(edge)) / self._cell_deg))
            self._cols_by_row[row] = cols
        return cols

    def cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        """Return the cell that holds (lat, lon)."""
        row = math.floor(lat / self._cell_deg)
        cols = self._columns(row)
        return row, math.floor((lon + 180.0) * cols / 360.0) % cols

    def add(self, cell: tuple[int, int], item: T) -> None:
        """Put `item` in `cell` (from `cell_of`)."""
        bucket = self._cells.get(cell)
        if bucket is None:
            self._cells[cell] = {item: None}
        else:
            bucket[item] = None

    def discard(self, cell: tuple[int, int], item: T) -> None:
        """Take `item` out of `cell` if it is there."""
        bucket = self._cells.get(cell)
        if bucket is not None:
            bucket.pop(item, None)
            if not bucket:
                del self._cells[cell]

    def near(self, lat: float, lon: float, radius_m: float) -> Iterator[T]:
        """Yield every item whose cell may hold points within `radius_m` of (lat, lon).

        A superset: callers still check the exact distance.
        """
        if not self._cells:
            return
        reach_m = radius_m * _SEARCH_MARGIN
        dlat = reach_m / METRES_PER_DEGREE
        dlon = lon_reach_deg(lat, reach_m)
        first_row = math.floor(max(-90.0, lat - dlat) / self._cell_deg)
        last_row = math.floor(min(90.0, lat + dlat) / self._cell_deg)
        cells = self._cells
        for row in range(first_row, last_row + 1):
            cols = self._columns(row)
            if dlon >= 180.0:
                col_range = range(cols)
            else:
                low = math.floor((lon - dlon + 180.0) * cols / 360.0)
                high = math.floor((lon + dlon + 180.0) * cols / 360.0)
                col_range = range(cols) if high - low + 1 >= cols else range(low, high + 1)
            for col in col_range:
                bucket = cells.get((row, col % cols))
                if bucket:
                    # A copy, so callers may add or discard while iterating.
                    yield from list(bucket)
