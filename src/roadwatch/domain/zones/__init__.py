"""Zones (docs/contract/detection.md §6): named areas, and who enters and leaves them.

- `geojson`: the validated `Zone`, read from and written as GeoJSON Features;
- `geometry`: point in polygon and edge distances, on (lon, lat) rings;
- `index`: `ZoneIndex`, which zones contain a point, mostly in one dict access;
- `detector`: `ZoneDetector`, positions in, zone_enter and zone_exit events out.

Callers import from `roadwatch.domain.zones` itself; the names below are its whole interface.
"""

from roadwatch.domain.snapshots import InvalidSnapshot
from roadwatch.domain.zones.detector import DEFAULT_TIMEOUT_MS, ZoneDetector, ZoneRules
from roadwatch.domain.zones.geojson import (
    MAX_HYSTERESIS_M,
    MAX_ZONE_ID_LEN,
    MAX_ZONE_NAME_LEN,
    MAX_ZONE_POSITIONS,
    InvalidZone,
    Zone,
    distance_outside_m,
    zone_from_feature,
    zones_from_geojson,
    zones_to_geojson,
)
from roadwatch.domain.zones.geometry import Polygon, Position, Ring
from roadwatch.domain.zones.index import ZoneIndex

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "MAX_HYSTERESIS_M",
    "MAX_ZONE_ID_LEN",
    "MAX_ZONE_NAME_LEN",
    "MAX_ZONE_POSITIONS",
    "InvalidSnapshot",
    "InvalidZone",
    "Polygon",
    "Position",
    "Ring",
    "Zone",
    "ZoneDetector",
    "ZoneIndex",
    "ZoneRules",
    "distance_outside_m",
    "zone_from_feature",
    "zones_from_geojson",
    "zones_to_geojson",
]
