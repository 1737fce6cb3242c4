"""Zones as GeoJSON: the validated `Zone`, read from and written as Features (RFC 7946).

Everything a client or a file sends goes through here, and is refused with an `InvalidZone`
that says what is wrong and where (`features[2]: geometry.coordinates[0][1]: ...`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from roadwatch.domain.zones.geometry import (
    BBox,
    Polygon,
    PolygonTest,
    Position,
    Ring,
    boundary_distance_m,
    in_polygons,
    polygon_test,
)

MAX_ZONE_ID_LEN = 64
MAX_ZONE_NAME_LEN = 200
# Enough for a detailed district outline, small enough that one zone never stalls the gateway.
MAX_ZONE_POSITIONS = 10_000
# Hysteresis is about GPS noise and lane width; kilometres would be a configuration mistake.
MAX_HYSTERESIS_M = 10_000.0

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
    bbox: BBox = field(init=False, compare=False)
    # Each polygon's rings, ready for the point tests of geometry.py.
    polygon_tests: tuple[PolygonTest, ...] = field(init=False, repr=False, compare=False)

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
        set_field(self, "polygon_tests", tuple(polygon_test(polygon) for polygon in polygons))

    def contains(self, lat: float, lon: float) -> bool:
        """Tell whether the point is inside the zone; a point on its boundary is inside."""
        min_lon, min_lat, max_lon, max_lat = self.bbox
        if not (min_lat <= lat <= max_lat and min_lon <= lon <= max_lon):
            return False
        return in_polygons(self.polygon_tests, lon, lat)

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
    return boundary_distance_m(zone.polygon_tests, lat, lon)


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
