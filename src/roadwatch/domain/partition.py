"""Which gateway instance handles which message when several share the load.

How to run several, and what they guarantee: docs/scaling.md; why so: docs/DESIGN.md.

Detection state has two kinds of keys, so there are two kinds of owners:

- a *station* owner, by a stable hash of the station id: zone membership is per station, so
  every CAM of a station goes to the same instance;
- *area* owners, by the coarse grid cell of the position: accidents, hazards and jams are
  about places, so every message near a place goes to the instance owning that place. A
  message within `margin_m` of another cell also goes to that cell's owner (the halo), so the
  owner of an event sees every report that can contribute to it, even across a border.

An event about a place is sent only by the owner of the cell where its first version lies;
the other instances that saw it in their halo keep its state silently.

The grid: rows `cell_m` tall (in latitude), each cut into columns about `cell_m` wide at the
row's middle latitude, so cells stay roughly square at any latitude; a cell's owner is a
stable hash of its row and column. The same numbers give the same owners in every process.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

from roadwatch.domain.geo import EARTH_RADIUS_M, METRES_PER_DEGREE

# Rows are never narrower than this share of their height, so polar rows keep a sane number
# of columns (a column there is wider than `cell_m`, which changes nothing but balance).
_MIN_ROW_COS = 0.01
# Widens the halo by a hair so float rounding never drops a point lying exactly at the margin.
_HALO_SLACK = 1.000001


@dataclass(frozen=True, slots=True)
class Route:
    """What one instance does with one message: its station's zones, its place's events."""

    zones: bool
    traffic: bool


@dataclass(frozen=True, slots=True)
class Partitioning:
    """The partition function shared by every gateway instance of a deployment."""

    partitions: int = 1
    cell_m: float = 5000.0
    margin_m: float = 1000.0
    _row_deg: float = field(init=False, repr=False, compare=False)
    _rows: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("at least one partition")
        if not 0 < self.cell_m <= 1_000_000:
            raise ValueError("cell size must be in (0, 1000 km]")
        if not 0 <= self.margin_m < self.cell_m:
            raise ValueError("margin must be at least 0 and less than the cell size")
        row_deg = self.cell_m / METRES_PER_DEGREE
        object.__setattr__(self, "_row_deg", row_deg)
        object.__setattr__(self, "_rows", math.ceil(180.0 / row_deg))

    # -- owners ---------------------------------------------------------------------------

    def station_owner(self, station_id: str) -> int:
        """Return the instance that keeps this station's zone state."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(station_id.encode()) % self.partitions

    def cell(self, lat: float, lon: float) -> tuple[int, int]:
        """Return the (row, column) of the grid cell holding a position."""
        row = self._row(lat)
        return row, self._column(row, lon)

    def cell_owner(self, row: int, column: int) -> int:
        """Return the instance that owns a grid cell."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(f"{row}:{column}".encode()) % self.partitions

    def area_owner(self, lat: float, lon: float) -> int:
        """Return the instance that owns the place of a position (exactly one)."""
        if self.partitions == 1:
            return 0
        return self.cell_owner(*self.cell(lat, lon))

    def area_owners(self, lat: float, lon: float) -> frozenset[int]:
        """Return the owners of every cell within `margin_m` of a position, its own included."""
        if self.partitions == 1:
            return frozenset((0,))
        owners = {self.cell_owner(row, column) for row, column in self.halo_cells(lat, lon)}
        return frozenset(owners)

    def halo_cells(self, lat: float, lon: float) -> set[tuple[int, int]]:
        """Return every cell that holds a point within `margin_m` of a position, its own too.

        A box around the position is scanned, never smaller than the circle: a cell may be
        included without need (a little more work), never left out.
        """
        cells = {self.cell(lat, lon)}
        if self.margin_m == 0:
            return cells
        reach_deg = self.margin_m * _HALO_SLACK / METRES_PER_DEGREE
        first_row = self._row(lat - reach_deg)
        last_row = self._row(lat + reach_deg)
        # The widest longitude span of the halo is at its latitude farthest from the equator.
        widest = min(90.0, abs(lat) + reach_deg)
        span = _lon_reach_deg(widest, self.margin_m * _HALO_SLACK)
        for row in range(first_row, last_row + 1):
            columns = self._columns(row)
            if span is None or 2 * span >= 360.0 - 360.0 / columns:
                cells.update((row, column) for column in range(columns))
                continue
            west = self._column(row, lon - span)
            east = self._column(row, lon + span)
            count = (east - west) % columns + 1
            cells.update((row, (west + step) % columns) for step in range(count))
        return cells

    def routes(self, station_id: str, lat: float, lon: float, *, cam: bool) -> dict[int, Route]:
        """Return, per instance concerned, what it does with a message.

        CAMs feed the zones of their station's owner and the traffic of their place's owners;
        DENMs are only about places.
        """
        traffic = self.area_owners(lat, lon)
        station = self.station_owner(station_id) if cam else -1
        routes = {owner: Route(zones=owner == station, traffic=True) for owner in traffic}
        if cam and station not in traffic:
            routes[station] = Route(zones=True, traffic=False)
        return routes

    # -- the grid -------------------------------------------------------------------------

    def _row(self, lat: float) -> int:
        return min(self._rows - 1, max(0, math.floor((lat + 90.0) / self._row_deg)))

    def _columns(self, row: int) -> int:
        middle = -90.0 + (row + 0.5) * self._row_deg
        width_deg = self._row_deg / max(_MIN_ROW_COS, math.cos(math.radians(middle)))
        return max(1, math.ceil(360.0 / width_deg))

    def _column(self, row: int, lon: float) -> int:
        columns = self._columns(row)
        # Longitude wraps: -180 and 180 are the same meridian.
        return math.floor(((lon + 180.0) % 360.0) / 360.0 * columns) % columns


def _lon_reach_deg(lat: float, distance_m: float) -> float | None:
    """Return how far in longitude `distance_m` reaches at `lat`; None when it goes around."""
    cos_lat = math.cos(math.radians(lat))
    ratio = math.sin(distance_m / (2 * EARTH_RADIUS_M))
    if cos_lat <= ratio:
        return None
    return math.degrees(2 * math.asin(ratio / cos_lat))
