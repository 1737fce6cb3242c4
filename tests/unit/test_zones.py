"""Zones (docs/contract/detection.md §6, docs/contract/rest-api.md §8): GeoJSON validation, point
look-up and enter/exit events."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.geo import METRES_PER_DEGREE
from roadwatch.domain.zones import (
    MAX_ZONE_POSITIONS,
    InvalidSnapshot,
    InvalidZone,
    Zone,
    ZoneDetector,
    ZoneIndex,
    ZoneRules,
    distance_outside_m,
    zone_from_feature,
    zones_from_geojson,
    zones_to_geojson,
)
from roadwatch.settings import Settings
from roadwatch.simulation.demo import DemoTraffic

T0 = 1_700_000_000_000
SECOND = 1000
MINUTE = 60_000
REIMS_ZONES = Path(__file__).resolve().parents[2] / "deploy" / "zones" / "reims.geojson"

# Two squares sharing the edge lon = 4.01; "west" has a square hole in its middle.
WEST_RING = ((4.00, 49.00), (4.01, 49.00), (4.01, 49.01), (4.00, 49.01), (4.00, 49.00))
HOLE_RING = ((4.004, 49.004), (4.004, 49.006), (4.006, 49.006), (4.006, 49.004), (4.004, 49.004))
EAST_RING = ((4.01, 49.00), (4.02, 49.00), (4.02, 49.01), (4.01, 49.01), (4.01, 49.00))
MID_LAT = 49.005


def square(zone_id: str, ring: tuple[tuple[float, float], ...], **kwargs: Any) -> Zone:
    return Zone(zone_id, kwargs.pop("name", zone_id.title()), ((ring,),), **kwargs)


WEST = Zone("west", "West", ((WEST_RING, HOLE_RING),))
EAST = square("east", EAST_RING)


def feature(**changes: Any) -> dict[str, Any]:
    """A valid zone Feature with top-level members replaced by `changes`."""
    base: dict[str, Any] = {
        "type": "Feature",
        "properties": {"id": "z1", "name": "Zone one"},
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in WEST_RING]]},
    }
    base.update(changes)
    return base


def with_properties(**changes: Any) -> dict[str, Any]:
    doc = feature()
    doc["properties"].update(changes)
    return doc


def with_coordinates(coordinates: Any, kind: str = "Polygon") -> dict[str, Any]:
    return feature(geometry={"type": kind, "coordinates": coordinates})


def east_of(lon: float, metres: float, lat: float = MID_LAT) -> float:
    return lon + metres / (METRES_PER_DEGREE * math.cos(math.radians(lat)))


class Feed:
    """Drive a ZoneDetector the way the gateway does: the clock is the newest timestamp."""

    def __init__(self, zones: list[Zone], rules: ZoneRules | None = None) -> None:
        self.detector = ZoneDetector(rules, zones)
        self.clock = 0
        self.events: list[Event] = []

    def at(self, station: str, t: int, lat: float, lon: float) -> list[Event]:
        self.clock = max(self.clock, t)
        produced = self.detector.on_position(station, t, lat, lon, self.clock)
        self.events.extend(produced)
        return produced

    def tick(self, t: int) -> list[Event]:
        self.clock = max(self.clock, t)
        produced = self.detector.expire(self.clock)
        self.events.extend(produced)
        return produced

    def set_zones(self, zones: list[Zone]) -> list[Event]:
        produced = self.detector.set_zones(zones, self.clock)
        self.events.extend(produced)
        return produced


def kinds(events: list[Event]) -> list[tuple[str, str | None, str | None]]:
    return [(e.type.value, e.zone_id, e.details.get("reason")) for e in events]


# --- Parsing and validation -----------------------------------------------------------------


def test_a_polygon_feature_becomes_a_zone_and_back() -> None:
    zone = zone_from_feature(feature())
    assert (zone.id, zone.name, zone.hysteresis_m) == ("z1", "Zone one", 0.0)
    assert zone.polygons == ((WEST_RING,),)
    assert zone.bbox == (4.00, 49.00, 4.01, 49.01)
    assert zone.to_feature() == feature()
    assert zone_from_feature(json.loads(json.dumps(zone.to_feature()))) == zone


def test_a_multipolygon_with_a_hole_keeps_every_polygon_and_ring() -> None:
    coordinates = [
        [[list(p) for p in WEST_RING], [list(p) for p in HOLE_RING]],
        [[list(p) for p in EAST_RING]],
    ]
    zone = zone_from_feature(with_coordinates(coordinates, "MultiPolygon"))
    assert zone.polygons == ((WEST_RING, HOLE_RING), (EAST_RING,))
    assert zone.bbox == (4.00, 49.00, 4.02, 49.01)
    assert zone.to_feature()["geometry"] == {"type": "MultiPolygon", "coordinates": coordinates}


def test_hysteresis_is_read_from_the_properties_and_written_back_only_when_set() -> None:
    zone = zone_from_feature(with_properties(hysteresis_m=25))
    assert zone.hysteresis_m == 25.0
    assert zone.to_feature()["properties"] == {"id": "z1", "name": "Zone one", "hysteresis_m": 25.0}
    assert zone_from_feature(with_properties(hysteresis_m=None)).hysteresis_m == 0.0
    assert "hysteresis_m" not in zone_from_feature(feature()).to_feature()["properties"]


def test_an_altitude_is_accepted_and_ignored() -> None:
    ring = [[lon, lat, 80.5] for lon, lat in WEST_RING]
    assert zone_from_feature(with_coordinates([ring])).polygons == ((WEST_RING,),)


def test_a_name_with_markup_is_kept_as_plain_text() -> None:
    name = '<img src=x onerror="alert(1)"> & <b>Zone</b>'
    zone = zone_from_feature(with_properties(name=name))
    assert zone.name == name
    assert zone.to_feature()["properties"]["name"] == name


def test_extra_properties_and_a_matching_feature_id_are_accepted() -> None:
    zone = zone_from_feature(feature(id="z1", properties={"id": "z1", "name": "n", "colour": 3}))
    assert zone.to_feature()["properties"] == {"id": "z1", "name": "n"}


def _ring_of(count: int) -> list[list[float]]:
    """A closed ring of `count` positions on a circle."""
    points = [
        [
            4.0 + 0.01 * math.cos(2 * math.pi * i / (count - 1)),
            49.0 + 0.01 * math.sin(2 * math.pi * i / (count - 1)),
        ]
        for i in range(count - 1)
    ]
    return [*points, points[0]]


REJECTIONS: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "a zone must be a GeoJSON Feature object"),
    ("not a Feature", feature(type="FeatureCollection"), '"type" must be "Feature"'),
    ("no properties", feature(properties=None), "properties must be an object with id and name"),
    ("no id", feature(properties={"name": "n"}), "properties.id is missing"),
    ("no name", feature(properties={"id": "z1"}), "properties.name is missing"),
    (
        "id with a space",
        with_properties(id="zone 1"),
        "properties.id must be 1 to 64 characters of letters, digits, _ and -",
    ),
    ("empty id", with_properties(id=""), "properties.id must be 1 to 64 characters"),
    ("id too long", with_properties(id="z" * 65), "properties.id must be 1 to 64 characters"),
    ("numeric id", with_properties(id=12), "properties.id must be 1 to 64 characters"),
    ("id with a slash", with_properties(id="../x"), "properties.id must be 1 to 64 characters"),
    ("empty name", with_properties(name=""), "properties.name must be a string of 1 to 200"),
    (
        "name too long",
        with_properties(name="n" * 201),
        "properties.name must be a string of 1 to 200",
    ),
    ("name not text", with_properties(name=["x"]), "properties.name must be a string of 1 to 200"),
    ("blank name", with_properties(name="   "), "properties.name must not be blank"),
    (
        "negative hysteresis",
        with_properties(hysteresis_m=-1),
        "properties.hysteresis_m must be a number of metres in [0, 10000]",
    ),
    ("boolean hysteresis", with_properties(hysteresis_m=True), "properties.hysteresis_m must be"),
    ("text hysteresis", with_properties(hysteresis_m="5"), "properties.hysteresis_m must be"),
    ("NaN hysteresis", with_properties(hysteresis_m=math.nan), "properties.hysteresis_m must be"),
    ("huge hysteresis", with_properties(hysteresis_m=1e6), "properties.hysteresis_m must be"),
    ("other feature id", feature(id="z2"), "the feature's id differs from properties.id"),
    ("no geometry", feature(geometry=None), "geometry must be a Polygon or MultiPolygon object"),
    (
        "a point",
        feature(geometry={"type": "Point", "coordinates": [4.0, 49.0]}),
        "geometry type must be Polygon or MultiPolygon, not Point",
    ),
    ("no coordinates", feature(geometry={"type": "Polygon"}), "geometry.coordinates is missing"),
    (
        "no rings",
        with_coordinates([]),
        "geometry.coordinates must be a non-empty list of linear rings",
    ),
    (
        "a ring of three positions",
        with_coordinates([[[4.0, 49.0], [4.01, 49.0], [4.0, 49.0]]]),
        "geometry.coordinates[0]: a linear ring needs at least 4 positions",
    ),
    (
        "an open ring",
        with_coordinates([[[4.0, 49.0], [4.01, 49.0], [4.01, 49.01], [4.0, 49.01]]]),
        "geometry.coordinates[0]: a linear ring must end at the position it starts from",
    ),
    (
        "a flat ring",
        with_coordinates([[[4.0, 49.0], [4.01, 49.0], [4.02, 49.0], [4.0, 49.0]]]),
        "geometry.coordinates[0]: the ring encloses no area",
    ),
    (
        "a ring that is not a list",
        with_coordinates(["ring"]),
        "geometry.coordinates[0] must be a list of positions",
    ),
    (
        "a one-number position",
        with_coordinates([[[4.0, 49.0], [4.01], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1] must be a [longitude, latitude] position",
    ),
    (
        "a boolean longitude",
        with_coordinates([[[4.0, 49.0], [True, 49.0], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1]: longitude must be a number in [-180, 180]",
    ),
    (
        "a NaN longitude",
        with_coordinates([[[4.0, 49.0], [math.nan, 49.0], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1]: longitude must be a number in [-180, 180]",
    ),
    (
        "a longitude out of range",
        with_coordinates([[[4.0, 49.0], [181.0, 49.0], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1]: longitude must be a number in [-180, 180]",
    ),
    (
        "a latitude out of range",
        with_coordinates([[[4.0, 49.0], [4.01, 91.0], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1]: latitude must be a number in [-90, 90]",
    ),
    (
        "a latitude as text",
        with_coordinates([[[4.0, 49.0], [4.01, "49"], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][1]: latitude must be a number in [-90, 90]",
    ),
    (
        "an infinite altitude",
        with_coordinates([[[4.0, 49.0, math.inf], [4.01, 49.0], [4.01, 49.01], [4.0, 49.0]]]),
        "geometry.coordinates[0][0]: altitude must be a number",
    ),
    (
        "an empty multipolygon",
        with_coordinates([], "MultiPolygon"),
        "geometry.coordinates must be a non-empty list of polygons",
    ),
    (
        "a bad ring in the second polygon",
        with_coordinates(
            [[[list(p) for p in WEST_RING]], [[[4.0, 49.0], [4.01, 49.0], [4.0, 49.0]]]],
            "MultiPolygon",
        ),
        "geometry.coordinates[1][0]: a linear ring needs at least 4 positions",
    ),
    (
        "too many positions",
        with_coordinates([_ring_of(MAX_ZONE_POSITIONS + 1)]),
        "too many positions: a zone may have at most 10000",
    ),
]


@pytest.mark.parametrize(("case", "doc", "message"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_an_invalid_feature_is_rejected_saying_what_is_wrong(
    case: str, doc: Any, message: str
) -> None:
    with pytest.raises(InvalidZone) as caught:
        zone_from_feature(doc)
    assert message in str(caught.value)


def test_a_rejection_never_echoes_an_unknown_geometry_type() -> None:
    with pytest.raises(InvalidZone) as caught:
        zone_from_feature(feature(geometry={"type": "<script>x</script>", "coordinates": []}))
    assert str(caught.value) == "geometry type must be Polygon or MultiPolygon"


def test_a_zone_of_exactly_the_maximum_positions_is_accepted() -> None:
    zone = zone_from_feature(with_coordinates([_ring_of(MAX_ZONE_POSITIONS)]))
    assert len(zone.polygons[0][0]) == MAX_ZONE_POSITIONS


@pytest.mark.parametrize(("lon", "lat"), [(-180.0, -90.0), (180.0, 90.0), (-180.0, 90.0)])
def test_a_tiny_ring_at_a_corner_of_the_map_encloses_its_area(lon: float, lat: float) -> None:
    # About 10 cm a side: products of coordinates near 180 degrees used to cancel it to 0.
    dx = 1e-6 if lon < 0 else -1e-6
    dy = 1e-6 if lat < 0 else -1e-6
    ring = [[lon, lat], [lon + dx, lat], [lon + dx, lat + dy], [lon, lat + dy], [lon, lat]]
    assert zone_from_feature(with_coordinates([ring])).polygons[0][0][0] == (lon, lat)


def test_invalid_zone_is_a_value_error_and_the_constructor_validates_too() -> None:
    assert issubclass(InvalidZone, ValueError)
    with pytest.raises(InvalidZone, match="id must be 1 to 64 characters"):
        Zone("no spaces allowed", "n", ((WEST_RING,),))
    with pytest.raises(InvalidZone, match=r"polygons\[0\]\[0\]: a linear ring must end"):
        Zone("z", "n", ((WEST_RING[:-1],),))


def test_a_feature_collection_becomes_zones_in_file_order() -> None:
    doc = zones_to_geojson([EAST, WEST])
    assert zones_from_geojson(json.loads(json.dumps(doc))) == [EAST, WEST]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "Feature"}, "zones must be a GeoJSON FeatureCollection"),
        ([], "zones must be a GeoJSON FeatureCollection"),
        ({"type": "FeatureCollection"}, "features must be a list of Feature objects"),
        (
            {
                "type": "FeatureCollection",
                "features": [feature(), feature(properties={"name": "n"})],
            },
            "features[1]: properties.id is missing",
        ),
        (
            {"type": "FeatureCollection", "features": [feature(), feature()]},
            "features[1]: duplicate zone id 'z1'",
        ),
    ],
)
def test_an_invalid_feature_collection_is_rejected_saying_where(doc: Any, message: str) -> None:
    with pytest.raises(InvalidZone) as caught:
        zones_from_geojson(doc)
    assert str(caught.value) == message


def test_an_index_refuses_two_zones_with_one_id() -> None:
    with pytest.raises(InvalidZone, match="duplicate zone id 'west'"):
        ZoneIndex([WEST, WEST])


# --- Point in zone ----------------------------------------------------------------------------

POINTS = [
    ("inside", 49.002, 4.002, True),
    ("on an outer edge", 49.00, 4.005, True),
    ("on an outer vertex", 49.01, 4.00, True),
    ("on the hole's edge", 49.005, 4.004, True),
    ("on the hole's vertex", 49.006, 4.006, True),
    ("inside the hole", 49.005, 4.005, False),
    ("just outside", 49.005, 3.9999, False),
    ("level with a vertex, outside", 49.01, 3.99, False),
    ("far away", 10.0, 20.0, False),
]


@pytest.mark.parametrize(("case", "lat", "lon", "inside"), POINTS, ids=[p[0] for p in POINTS])
def test_the_boundary_is_inside_and_a_hole_is_outside(
    case: str, lat: float, lon: float, inside: bool
) -> None:
    assert WEST.contains(lat, lon) is inside
    assert ("west" in ZoneIndex([WEST, EAST]).ids_at(lat, lon)) is inside


def test_a_point_on_a_shared_edge_is_in_both_zones() -> None:
    index = ZoneIndex([EAST, WEST])
    assert index.ids_at(MID_LAT, 4.01) == ("east", "west")
    assert [zone.id for zone in index.zones_at(MID_LAT, 4.015)] == ["east"]


def test_a_point_on_a_slanted_edge_is_inside() -> None:
    # Dyadic coordinates: the midpoint of the hypotenuse is exactly representable.
    triangle = Zone(
        "t", "T", ((((4.0, 49.0), (4.0078125, 49.0), (4.0, 49.0078125), (4.0, 49.0)),),)
    )
    assert triangle.contains(49.00390625, 4.00390625)
    assert ZoneIndex([triangle]).ids_at(49.00390625, 4.00390625) == ("t",)
    assert not triangle.contains(49.00390625, 4.0039063)


def test_the_distance_outside_is_measured_to_the_nearest_edge() -> None:
    assert distance_outside_m(WEST, 49.002, 4.002) == 0.0
    assert distance_outside_m(EAST, MID_LAT, east_of(4.02, 100.0)) == pytest.approx(100.0, abs=0.5)
    below = 49.0 - 250.0 / METRES_PER_DEGREE
    assert distance_outside_m(EAST, below, 4.015) == pytest.approx(250.0, abs=0.5)


# --- Enter and exit ---------------------------------------------------------------------------


def test_a_first_position_inside_raises_an_enter() -> None:
    feed = Feed([WEST])
    [event] = feed.at("car-1", T0, 49.002, 4.002)
    assert event == Event(
        id=new_event_id(T0, "zone_enter", "car-1", "west", str(T0)),
        type=EventType.ZONE_ENTER,
        status=EventStatus.INSTANT,
        version=1,
        started_ms=T0,
        updated_ms=T0,
        ended_ms=T0,
        lat=49.002,
        lon=4.002,
        station_ids=("car-1",),
        zone_id="west",
        zone_name="West",
        details={},
    )


def test_enter_once_while_inside_then_exit_when_outside() -> None:
    feed = Feed([WEST])
    assert feed.at("car", T0, 49.02, 4.002) == []
    assert kinds(feed.at("car", T0 + SECOND, 49.002, 4.002)) == [("zone_enter", "west", None)]
    assert feed.at("car", T0 + 2 * SECOND, 49.003, 4.002) == []
    [exit_] = feed.at("car", T0 + 3 * SECOND, 49.005, 4.005)  # into the hole
    assert kinds([exit_]) == [("zone_exit", "west", "left")]
    assert (exit_.updated_ms, exit_.lat, exit_.lon) == (T0 + 3 * SECOND, 49.005, 4.005)
    assert exit_.id == new_event_id(T0 + 3 * SECOND, "zone_exit", "car", "west", str(T0 + 3000))
    assert feed.at("car", T0 + 4 * SECOND, 49.02, 4.002) == []


def test_a_position_on_the_boundary_enters() -> None:
    feed = Feed([WEST])
    assert kinds(feed.at("car", T0, 49.0, 4.005)) == [("zone_enter", "west", None)]


def test_leaving_one_zone_for_its_neighbour_exits_before_it_enters() -> None:
    feed = Feed([WEST, EAST])
    feed.at("car", T0, MID_LAT, 4.008)
    assert kinds(feed.at("car", T0 + SECOND, MID_LAT, 4.012)) == [
        ("zone_exit", "west", "left"),
        ("zone_enter", "east", None),
    ]
    assert kinds(feed.at("car", T0 + 2 * SECOND, MID_LAT, 4.008)) == [
        ("zone_exit", "east", "left"),
        ("zone_enter", "west", None),
    ]


def test_crossing_on_the_shared_edge_enters_the_neighbour_before_leaving() -> None:
    feed = Feed([WEST, EAST])
    feed.at("car", T0, MID_LAT, 4.008)
    assert kinds(feed.at("car", T0 + SECOND, MID_LAT, 4.01)) == [("zone_enter", "east", None)]
    assert kinds(feed.at("car", T0 + 2 * SECOND, MID_LAT, 4.012)) == [("zone_exit", "west", "left")]


def test_late_and_duplicate_positions_change_nothing() -> None:
    feed = Feed([WEST])
    feed.at("car", T0, 49.002, 4.002)
    feed.at("car", T0 + 2 * SECOND, 49.02, 4.002)
    assert feed.at("car", T0 + 2 * SECOND, 49.002, 4.002) == []
    assert feed.at("car", T0 + SECOND, 49.002, 4.002) == []
    assert feed.at("car", T0, 49.002, 4.002) == []
    assert kinds(feed.events) == [("zone_enter", "west", None), ("zone_exit", "west", "left")]


# --- Timeout ----------------------------------------------------------------------------------


def test_a_station_silent_for_ten_minutes_inside_gets_a_timeout_exit_not_before() -> None:
    feed = Feed([WEST])
    feed.at("parked", T0, 49.002, 4.002)
    for minute in range(1, 11):
        assert feed.at("other", T0 + minute * MINUTE, 50.0, 5.0) == []
    [exit_] = feed.at("other", T0 + 10 * MINUTE + 1, 50.0, 5.0)
    assert kinds([exit_]) == [("zone_exit", "west", "timeout")]
    assert (exit_.started_ms, exit_.updated_ms, exit_.ended_ms) == (T0 + 10 * MINUTE,) * 3
    assert (exit_.lat, exit_.lon, exit_.station_ids) == (49.002, 4.002, ("parked",))
    assert feed.detector.occupancy() == {"west": []}


def test_the_timeout_is_on_event_time_whoever_moves_the_clock() -> None:
    feed = Feed([WEST])
    feed.at("parked", T0, 49.002, 4.002)
    assert feed.detector.next_due_ms() == T0 + 10 * MINUTE + 1
    assert feed.tick(T0 + 10 * MINUTE) == []
    assert kinds(feed.tick(T0 + 30 * MINUTE)) == [("zone_exit", "west", "timeout")]
    assert feed.tick(T0 + 60 * MINUTE) == []
    assert feed.detector.next_due_ms() is None


def test_a_station_that_keeps_reporting_is_never_timed_out() -> None:
    feed = Feed([WEST])
    for minute in range(0, 60, 9):
        feed.at("bus", T0 + minute * MINUTE, 49.002, 4.002)
    assert kinds(feed.events) == [("zone_enter", "west", None)]
    assert feed.detector.next_due_ms() == T0 + 54 * MINUTE + 10 * MINUTE + 1


def test_a_station_back_after_a_timeout_enters_again_and_its_late_positions_are_ignored() -> None:
    feed = Feed([WEST])
    feed.at("car", T0, 49.002, 4.002)
    feed.at("other", T0 + 11 * MINUTE, 50.0, 5.0)
    assert feed.at("car", T0 + 5 * MINUTE, 49.002, 4.002) == []  # older than its timeout exit
    assert kinds(feed.at("car", T0 + 12 * MINUTE, 49.002, 4.002)) == [("zone_enter", "west", None)]
    assert kinds(feed.events) == [
        ("zone_enter", "west", None),
        ("zone_exit", "west", "timeout"),
        ("zone_enter", "west", None),
    ]


def test_a_position_ahead_of_the_clock_does_not_time_others_out() -> None:
    detector = ZoneDetector(zones=[WEST])
    detector.on_position("parked", T0, 49.002, 4.002, T0)
    # A vehicle whose clock runs 11 minutes fast; the caller's clock says one minute passed.
    assert detector.on_position("fast", T0 + 11 * MINUTE, 50.0, 5.0, T0 + MINUTE) == []
    assert detector.occupancy() == {"west": ["parked"]}


def test_a_timeout_counts_from_the_configured_rules() -> None:
    feed = Feed([WEST], ZoneRules(timeout_ms=30 * SECOND))
    feed.at("car", T0, 49.002, 4.002)
    assert kinds(feed.tick(T0 + 31 * SECOND)) == [("zone_exit", "west", "timeout")]


def test_timeout_exits_of_several_stations_come_in_time_order() -> None:
    feed = Feed([WEST, EAST])
    feed.at("b", T0, MID_LAT, 4.012)
    feed.at("a", T0 + SECOND, 49.002, 4.002)
    feed.at("c", T0, 49.002, 4.002)
    events = feed.tick(T0 + 20 * MINUTE)
    assert [(e.station_ids[0], e.updated_ms - T0) for e in events] == [
        ("b", 10 * MINUTE),
        ("c", 10 * MINUTE),
        ("a", 10 * MINUTE + SECOND),
    ]


# --- Hysteresis -------------------------------------------------------------------------------


def test_with_hysteresis_an_exit_counts_only_beyond_the_band() -> None:
    zone = square("east", EAST_RING, hysteresis_m=50.0)
    feed = Feed([zone])
    feed.at("car", T0, MID_LAT, 4.015)
    assert feed.at("car", T0 + SECOND, MID_LAT, east_of(4.02, 30.0)) == []
    assert feed.detector.occupancy() == {"east": ["car"]}
    assert feed.at("car", T0 + 2 * SECOND, MID_LAT, east_of(4.02, 49.0)) == []
    [exit_] = feed.at("car", T0 + 3 * SECOND, MID_LAT, east_of(4.02, 80.0))
    assert kinds([exit_]) == [("zone_exit", "east", "left")]
    # Coming back into the band is not an enter: only a position inside is.
    assert feed.at("car", T0 + 4 * SECOND, MID_LAT, east_of(4.02, 30.0)) == []
    assert kinds(feed.at("car", T0 + 5 * SECOND, MID_LAT, 4.02)) == [("zone_enter", "east", None)]


def test_the_default_hysteresis_applies_to_zones_without_their_own() -> None:
    own = square("east", EAST_RING, hysteresis_m=10.0)
    feed = Feed([own, WEST], ZoneRules(hysteresis_m=50.0))
    feed.at("a", T0, MID_LAT, 4.015)
    feed.at("b", T0, 49.002, 4.002)
    assert kinds(feed.at("a", T0 + SECOND, MID_LAT, east_of(4.02, 30.0))) == [
        ("zone_exit", "east", "left")
    ]
    assert feed.at("b", T0 + SECOND, 49.002, east_of(4.00, -30.0)) == []


# --- Zones changed at run time ----------------------------------------------------------------


def test_removing_a_zone_exits_the_stations_inside_at_their_last_position() -> None:
    feed = Feed([WEST, EAST])
    feed.at("a", T0, 49.002, 4.002)
    feed.at("b", T0 + SECOND, MID_LAT, 4.015)
    feed.at("c", T0 + 2 * SECOND, 49.003, 4.003)
    feed.clock = T0 + 5 * SECOND
    events = feed.set_zones([EAST])
    assert [(e.station_ids[0], e.updated_ms, e.lat, e.lon) for e in events] == [
        ("a", T0, 49.002, 4.002),
        ("c", T0 + 2 * SECOND, 49.003, 4.003),
    ]
    assert kinds(events) == [("zone_exit", "west", "zone_removed")] * 2
    assert feed.detector.occupancy() == {"east": ["b"]}
    assert feed.at("a", T0 + 6 * SECOND, 49.002, 4.002) == []


def test_a_changed_zone_exits_only_the_stations_it_no_longer_holds() -> None:
    feed = Feed([WEST])
    feed.at("north", T0, 49.008, 4.002)
    feed.at("south", T0, 49.002, 4.002)
    south_half = (*WEST_RING[:2], (4.01, 49.005), (4.00, 49.005), WEST_RING[0])
    smaller = Zone("west", "West (south half)", ((south_half,),))
    events = feed.set_zones([smaller])
    assert kinds(events) == [("zone_exit", "west", "zone_changed")]
    assert (events[0].station_ids, events[0].zone_name) == (("north",), "West (south half)")
    assert feed.detector.occupancy() == {"west": ["south"]}


def test_a_new_or_grown_zone_enters_stations_at_their_next_position_not_before() -> None:
    feed = Feed([])
    feed.at("car", T0, 49.002, 4.002)
    assert feed.set_zones([WEST]) == []
    assert feed.detector.occupancy() == {"west": []}
    assert kinds(feed.at("car", T0 + SECOND, 49.002, 4.002)) == [("zone_enter", "west", None)]


def test_renaming_a_zone_keeps_the_stations_inside_and_names_later_events_anew() -> None:
    feed = Feed([WEST])
    feed.at("car", T0, 49.002, 4.002)
    renamed = Zone("west", "Western district", WEST.polygons)
    assert feed.set_zones([renamed]) == []
    [exit_] = feed.at("car", T0 + SECOND, 49.02, 4.002)
    assert exit_.zone_name == "Western district"


def test_zones_refused_for_a_duplicate_id_change_nothing() -> None:
    feed = Feed([WEST])
    feed.at("car", T0, 49.002, 4.002)
    feed.clock = T0 + 11 * MINUTE
    with pytest.raises(InvalidZone, match="duplicate zone id 'east'"):
        feed.set_zones([WEST, EAST, EAST])
    assert kinds(feed.tick(feed.clock)) == [("zone_exit", "west", "timeout")]


def test_reading_the_same_zones_again_changes_nothing() -> None:
    feed = Feed([WEST, EAST])
    feed.at("car", T0, 49.002, 4.002)
    assert feed.set_zones([EAST, WEST]) == []
    assert feed.detector.occupancy() == {"east": [], "west": ["car"]}


def test_a_changed_zone_keeps_a_station_within_its_hysteresis_band() -> None:
    feed = Feed([EAST])
    feed.at("car", T0, MID_LAT, 4.0199)
    moved = square("east", tuple((lon - 0.0002, lat) for lon, lat in EAST_RING), hysteresis_m=30.0)
    assert feed.set_zones([moved]) == []
    assert feed.detector.occupancy() == {"east": ["car"]}


def test_a_timeout_already_due_when_zones_change_keeps_its_reason() -> None:
    feed = Feed([WEST])
    feed.at("car", T0, 49.002, 4.002)
    feed.clock = T0 + 11 * MINUTE
    assert kinds(feed.set_zones([])) == [("zone_exit", "west", "timeout")]


# --- Occupancy, snapshot and restore ----------------------------------------------------------


def test_occupancy_lists_every_zone_with_the_stations_inside() -> None:
    feed = Feed([WEST, EAST])
    feed.at("b", T0, 49.002, 4.002)
    feed.at("a", T0, 49.003, 4.003)
    feed.at("c", T0, MID_LAT, 4.01)
    feed.at("d", T0, 48.0, 4.0)
    assert feed.detector.occupancy() == {"east": ["c"], "west": ["a", "b", "c"]}


def _json_only(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_only(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _demo_trace(vehicles: int, seconds: int) -> list[tuple[str, int, float, float]]:
    """Demo traffic round the cathedral; a third of the vehicles fall silent halfway."""
    traffic = DemoTraffic(vehicles, seed=3, start_ms=T0)
    trace: list[tuple[str, int, float, float]] = []
    for second in range(seconds):
        for topic, payload, _ in traffic.tick(1.0):
            if not topic.endswith("/cam"):
                continue
            station = payload["stationId"]
            if second < seconds // 2 or int(station[-4:]) % 3 != 0:
                trace.append((station, payload["timestamp"], payload["lat"], payload["lon"]))
    return trace


def _run(
    detector: ZoneDetector, trace: list[tuple[str, int, float, float]], clock: int = 0
) -> list[Event]:
    events: list[Event] = []
    for station, t, lat, lon in trace:
        clock = max(clock, t)
        events.extend(detector.on_position(station, t, lat, lon, clock))
    return events


@pytest.fixture(scope="module")
def reims() -> list[Zone]:
    return zones_from_geojson(json.loads(REIMS_ZONES.read_text(encoding="utf-8")))


def test_a_detector_restored_mid_trace_emits_what_an_uninterrupted_one_would(
    reims: list[Zone],
) -> None:
    rules = ZoneRules(timeout_ms=2 * MINUTE)
    trace = _demo_trace(60, 6 * 60)
    expected = _run(ZoneDetector(rules, reims), trace)
    assert any(e.details.get("reason") == "timeout" for e in expected)
    for cut in (1, len(trace) // 3, len(trace) // 2 + 7, len(trace) - 1):
        first = ZoneDetector(rules, reims)
        events = _run(first, trace[:cut])
        snapshot = first.snapshot()
        assert _json_only(snapshot)
        second = ZoneDetector(rules)
        second.restore(orjson.loads(orjson.dumps(snapshot)))
        clock = first.clock_ms or 0
        events += _run(second, trace[cut:], clock)
        assert events == expected
        assert second.snapshot() == _snapshot_after(rules, reims, trace)


def _snapshot_after(
    rules: ZoneRules, zones: list[Zone], trace: list[tuple[str, int, float, float]]
) -> dict[str, Any]:
    detector = ZoneDetector(rules, zones)
    _run(detector, trace)
    return detector.snapshot()


def test_a_restored_detector_then_given_the_current_zones_exits_from_a_removed_one() -> None:
    first = Feed([WEST, EAST])
    first.at("car", T0, 49.002, 4.002)
    restored = ZoneDetector()
    restored.restore(first.detector.snapshot())
    assert restored.occupancy() == {"east": [], "west": ["car"]}
    assert kinds(restored.set_zones([EAST], T0 + SECOND)) == [("zone_exit", "west", "zone_removed")]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(format=99), "not a zone detector snapshot"),
        (lambda s: s.update(clock_ms="soon"), "clock_ms must be an integer or null"),
        (lambda s: s.update(zones={}), "zones and stations must be lists"),
        (lambda s: s["zones"].append({"type": "Feature"}), "zones: features[2]"),
        (lambda s: s["stations"].append(["x", 1, 2.0]), "a station must be"),
        (lambda s: s["stations"].append(["x", "1", 2.0, 3.0, []]), "last_ms must be an integer"),
        (lambda s: s["stations"].append(["x", 1, 200.0, 3.0, []]), "position out of range"),
        (lambda s: s["stations"].append(["x", 1, 2.0, 3.0, ["nowhere"]]), "unknown zone"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_damaged_snapshot_is_refused_and_leaves_the_detector_as_it_was(
    mutate: Any, message: str
) -> None:
    feed = Feed([WEST, EAST])
    feed.at("car", T0, 49.002, 4.002)
    snapshot = copy.deepcopy(feed.detector.snapshot())
    mutate(snapshot)
    with pytest.raises(InvalidSnapshot, match=re.escape(message)):
        feed.detector.restore(snapshot)
    assert feed.detector.occupancy() == {"east": [], "west": ["car"]}


def test_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        ZoneRules(timeout_ms=0)
    with pytest.raises(ValueError, match="hysteresis"):
        ZoneRules(hysteresis_m=-1.0)


# --- The shipped zones of Reims ---------------------------------------------------------------


def test_the_settings_point_at_the_shipped_reims_zones() -> None:
    assert Settings.model_fields["zones_file"].default == Path("deploy/zones/reims.geojson")


def test_the_shipped_zones_load_and_hold_their_landmarks(reims: list[Zone]) -> None:
    index = ZoneIndex(reims)
    assert {zone.id for zone in reims} >= {"reims-centre", "reims-gare", "a4-reims"}
    landmarks = {
        "Notre-Dame cathedral": ((49.2536, 4.0340), ("reims-centre",)),
        "place Drouet-d'Erlon": ((49.2545, 4.0290), ("reims-centre",)),
        "Gare de Reims": ((49.2590, 4.0245), ("reims-gare",)),
        "Saint-Remi basilica": ((49.2425, 4.0419), ("saint-remi",)),
        "the open countryside": ((49.30, 3.90), ()),
    }
    for name, ((lat, lon), expected) in landmarks.items():
        assert index.ids_at(lat, lon) == expected, name


def test_the_shipped_zones_are_counter_clockwise_and_the_motorway_is_a_thin_corridor(
    reims: list[Zone],
) -> None:
    for zone in reims:
        for polygon in zone.polygons:
            ring = polygon[0]
            twice_area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in itertools.pairwise(ring))
            assert twice_area > 0, zone.id
    a4 = next(zone for zone in reims if zone.id == "a4-reims")
    _, min_lat, _, max_lat = a4.bbox
    assert (max_lat - min_lat) * METRES_PER_DEGREE > 4000  # kilometres long…
    # …but a point 200 m off its centre line is outside it.
    assert not a4.contains(49.2530 + 200 / METRES_PER_DEGREE, 4.0205)
    assert a4.contains(49.2530, 4.0205)


def test_demo_traffic_round_the_cathedral_crosses_the_centre_zone(reims: list[Zone]) -> None:
    events = _run(ZoneDetector(ZoneRules(), reims), _demo_trace(40, 5 * 60))
    crossings = {(e.type, e.zone_id) for e in events}
    assert (EventType.ZONE_ENTER, "reims-centre") in crossings
    assert (EventType.ZONE_EXIT, "reims-centre") in crossings
