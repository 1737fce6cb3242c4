"""The road network: the shipped Reims map, edge geometry, routing and input checks."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from roadwatch.domain.geo import haversine_m
from roadwatch.simulation.network import (
    REIMS_NETWORK_PATH,
    Edge,
    InvalidNetwork,
    NoRoute,
    RoadClass,
    RoadNetwork,
    load_network,
    network_from_geojson,
)

PLAUSIBLE_SPEEDS = {
    RoadClass.MOTORWAY: {110.0, 130.0},
    RoadClass.TRUNK: {70.0, 90.0, 110.0},
    RoadClass.PRIMARY: {50.0, 70.0},
    RoadClass.SECONDARY: {50.0, 70.0},
    RoadClass.RESIDENTIAL: {20.0, 30.0},
}


def _line(
    line_id: str,
    coordinates: list[list[Any]],
    speed: Any = 50,
    road_class: str = "primary",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {
            "id": line_id,
            "name": line_id,
            "road_class": road_class,
            "speed_limit_kmh": speed,
            **extra,
        },
        "geometry": {"type": "LineString", "coordinates": coordinates},
    }


def _collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


@pytest.fixture(scope="module")
def reims() -> RoadNetwork:
    return load_network(REIMS_NETWORK_PATH)


@pytest.fixture
def square() -> RoadNetwork:
    """A 0.01-degree square: a slow direct road west-east, a fast detour via the north."""
    return network_from_geojson(
        _collection(
            _line("south", [[4.00, 49.25], [4.01, 49.25]], speed=30, road_class="residential"),
            _line("west", [[4.00, 49.25], [4.00, 49.26]], speed=130, road_class="motorway"),
            _line("north", [[4.00, 49.26], [4.01, 49.26]], speed=130, road_class="motorway"),
            _line("east", [[4.01, 49.26], [4.01, 49.25]], speed=130, road_class="motorway"),
        )
    )


def test_shipped_network_loads_with_dozens_of_roads(reims: RoadNetwork) -> None:
    doc = json.loads(REIMS_NETWORK_PATH.read_text(encoding="utf-8"))
    assert len(doc["features"]) >= 30
    assert reims.node_count >= 30
    assert reims.edge_count >= 2 * len(doc["features"]) - 5


def test_shipped_network_is_one_strongly_connected_component(reims: RoadNetwork) -> None:
    assert len(reims.largest_component()) >= 0.95 * reims.node_count


def test_shipped_network_has_every_road_class_with_plausible_limits(
    reims: RoadNetwork,
) -> None:
    assert {edge.road_class for edge in reims.edges} == set(RoadClass)
    for edge in reims.edges:
        assert edge.speed_limit_kmh in PLAUSIBLE_SPEEDS[edge.road_class], edge.id


def test_shipped_network_names_the_main_roads(reims: RoadNetwork) -> None:
    names = " | ".join({edge.name for edge in reims.edges})
    for road in ("A4", "A344", "Rocade", "Avenue de Laon", "Avenue Jean-Jaurès", "Rue de Vesle"):
        assert road in names


def test_shipped_network_covers_reims(reims: RoadNetwork) -> None:
    min_lat, min_lon, max_lat, max_lon = reims.bbox
    assert 49.20 <= min_lat < 49.24 and 49.27 < max_lat <= 49.30
    assert 3.95 <= min_lon < 4.00 and 4.07 < max_lon <= 4.12
    cathedral = reims.nearest_node(49.2536, 4.0340)
    assert haversine_m(49.2536, 4.0340, *reims.node_position(cathedral)) < 300
    station = reims.nearest_node(49.2590, 4.0245)
    assert haversine_m(49.2590, 4.0245, *reims.node_position(station)) < 300


def test_shipped_network_splits_roads_where_they_cross(reims: RoadNetwork) -> None:
    # Avenue de Laon runs on past the rocade nord, which meets it at an interior vertex.
    laon = [edge for edge in reims.edges if edge.name == "Avenue de Laon"]
    rocade = {edge.to_node for edge in reims.edges if edge.name == "Rocade nord"}
    assert any(edge.to_node in rocade for edge in laon)


def test_one_way_street_has_a_single_direction(reims: RoadNetwork) -> None:
    chanzy = [edge for edge in reims.edges if edge.name == "Rue Chanzy"]
    assert chanzy and all(not edge.id.endswith(":rev") for edge in chanzy)


def test_position_at_start_middle_and_end_of_an_edge() -> None:
    edge = Edge.from_points(
        "e",
        0,
        1,
        [(49.25, 4.00), (49.25, 4.01), (49.26, 4.01)],
        speed_limit_kmh=50,
        road_class=RoadClass.PRIMARY,
    )
    first = haversine_m(49.25, 4.00, 49.25, 4.01)
    assert edge.length_m == pytest.approx(first + haversine_m(49.25, 4.01, 49.26, 4.01))

    lat, lon, heading = edge.position_at(0.0)
    assert (lat, lon) == (49.25, 4.00)
    assert heading == pytest.approx(90.0, abs=0.01)

    lat, lon, heading = edge.position_at(first / 2)
    assert lat == pytest.approx(49.25, abs=1e-5)
    assert lon == pytest.approx(4.005, abs=1e-6)
    assert heading == pytest.approx(90.0, abs=0.01)

    lat, lon, heading = edge.position_at(edge.length_m)
    assert (lat, lon) == (49.26, 4.01)
    assert heading == pytest.approx(0.0, abs=1e-6)

    assert edge.position_at(-5.0)[:2] == (49.25, 4.00)
    assert edge.position_at(edge.length_m + 5.0)[:2] == (49.26, 4.01)


def test_position_at_follows_the_polyline_round_a_corner() -> None:
    edge = Edge.from_points(
        "e",
        0,
        1,
        [(49.25, 4.00), (49.24, 4.00), (49.24, 3.99)],
        speed_limit_kmh=50,
        road_class=RoadClass.PRIMARY,
    )
    corner = edge.cumulative_m[1]
    lat, lon, heading = edge.position_at(corner / 2)
    assert lat == pytest.approx(49.245, abs=1e-6)
    assert lon == pytest.approx(4.00, abs=1e-9)
    assert heading == pytest.approx(180.0)
    lat, lon, heading = edge.position_at(corner + 100.0)
    assert haversine_m(49.24, 4.00, lat, lon) == pytest.approx(100.0, abs=0.01)
    assert lat == pytest.approx(49.24, abs=1e-6) and lon < 4.00
    assert heading == pytest.approx(270.0, abs=0.01)


@pytest.mark.parametrize(
    ("end", "expected"),
    [((49.26, 4.00), 0.0), ((49.25, 4.01), 90.0), ((49.24, 4.00), 180.0), ((49.25, 3.99), 270.0)],
)
def test_heading_is_clockwise_from_north(end: tuple[float, float], expected: float) -> None:
    edge = Edge.from_points(
        "e", 0, 1, [(49.25, 4.00), end], speed_limit_kmh=50, road_class=RoadClass.PRIMARY
    )
    heading = edge.position_at(edge.length_m / 2)[2]
    assert 0.0 <= heading < 360.0
    assert min(abs(heading - expected), 360.0 - abs(heading - expected)) < 0.01


def test_two_way_lines_give_an_edge_each_way(square: RoadNetwork) -> None:
    assert square.node_count == 4
    assert square.edge_count == 8
    for edge in square.edges:
        assert any(
            back.to_node == edge.from_node and back.coordinates == edge.coordinates[::-1]
            for back in square.edges_from(edge.to_node)
        )


def test_shortest_route_prefers_the_faster_detour(square: RoadNetwork) -> None:
    south_west = square.nearest_node(49.25, 4.00)
    south_east = square.nearest_node(49.25, 4.01)
    route = square.shortest_route(south_west, south_east)
    assert [edge.name for edge in route] == ["west", "north", "east"]
    assert route[0].from_node == south_west and route[-1].to_node == south_east
    for before, after in itertools.pairwise(route):
        assert before.to_node == after.from_node
    assert square.shortest_route(south_west, south_west) == []


def test_lines_are_split_at_shared_interior_vertices() -> None:
    network = network_from_geojson(
        _collection(
            _line("long", [[4.00, 49.25], [4.01, 49.25], [4.02, 49.25]]),
            _line("branch", [[4.01, 49.25], [4.01, 49.26]]),
        )
    )
    assert network.node_count == 4
    middle = network.nearest_node(49.25, 4.01)
    assert {edge.id for edge in network.edges_from(middle)} == {"long:0:rev", "long:1", "branch:0"}


def test_line_ends_a_metre_apart_are_joined() -> None:
    network = network_from_geojson(
        _collection(
            _line("a", [[4.00, 49.25], [4.01, 49.25]]),
            _line("b", [[4.010_010, 49.250_005], [4.02, 49.25]]),
        )
    )
    assert network.node_count == 3
    assert len(network.largest_component()) == 3


def test_one_way_line_has_no_way_back() -> None:
    network = network_from_geojson(
        _collection(
            _line("there", [[4.00, 49.25], [4.01, 49.25]], oneway=True),
        )
    )
    start = network.nearest_node(49.25, 4.00)
    end = network.nearest_node(49.25, 4.01)
    assert len(network.shortest_route(start, end)) == 1
    with pytest.raises(NoRoute):
        network.shortest_route(end, start)


def test_same_seed_gives_the_same_random_route(reims: RoadNetwork) -> None:
    first = reims.random_route(random.Random(42), 15_000)
    second = reims.random_route(random.Random(42), 15_000)
    other = reims.random_route(random.Random(43), 15_000)
    assert [edge.id for edge in first] == [edge.id for edge in second]
    assert [edge.id for edge in first] != [edge.id for edge in other]


def test_random_route_is_connected_and_long_enough(reims: RoadNetwork) -> None:
    rng = random.Random(7)
    for _ in range(20):
        route = reims.random_route(rng, 10_000)
        assert sum(edge.length_m for edge in route) >= 10_000
        for before, after in itertools.pairwise(route):
            assert before.to_node == after.from_node


def test_other_networks_get_default_classes_and_speeds() -> None:
    network = network_from_geojson(
        _collection(
            {
                "type": "Feature",
                "properties": {"highway": "trunk"},
                "geometry": {"type": "LineString", "coordinates": [[4.0, 49.25], [4.01, 49.25]]},
            },
            {
                "type": "Feature",
                "properties": None,
                "geometry": {"type": "Point", "coordinates": [4, 49]},
            },
        )
    )
    assert {(edge.road_class, edge.speed_limit_kmh) for edge in network.edges} == {
        (RoadClass.TRUNK, 90.0)
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "FeatureCollection"),
        ({"type": "Feature"}, "FeatureCollection"),
        ({"type": "FeatureCollection"}, "features"),
        (_collection(), "no LineString"),
        (_collection({"type": "Feature", "geometry": {"type": "Point"}}), "no LineString"),
        (_collection(_line("a", [[4.0, 49.25]])), "at least two"),
        (_collection(_line("a", [[4.0, 49.25], [4.0, 49.25]])), "two distinct"),
        (_collection(_line("a", [[4.0, 49.25], ["x", 49.0]])), "position"),
        (_collection(_line("a", [[4.0, 49.25], [49.0, 95.0]])), "WGS84"),
        (_collection(_line("a", [[4.0, 49.25], [4.1, 49.2]], road_class="footpath")), "road_class"),
        (_collection(_line("a", [[4.0, 49.25], [4.1, 49.2]], speed=-3)), "speed_limit_kmh"),
        (_collection(_line("a", [[4.0, 49.25], [4.1, 49.2]], speed="fast")), "speed_limit_kmh"),
        (_collection(_line("a", [[4.0, 49.25], [4.1, 49.2]], oneway="maybe")), "oneway"),
        (
            _collection(
                _line("a", [[4.0, 49.25], [4.1, 49.2]]), _line("a", [[4.1, 49.2], [4.2, 49.2]])
            ),
            "duplicate",
        ),
    ],
)
def test_invalid_geojson_is_rejected_with_a_clear_message(doc: Any, message: str) -> None:
    with pytest.raises(InvalidNetwork, match=message):
        network_from_geojson(doc)


def test_load_network_names_the_file_in_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidNetwork, match=r"broken\.geojson.*JSON"):
        load_network(broken)
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps(_collection()), encoding="utf-8")
    with pytest.raises(InvalidNetwork, match=r"empty\.geojson.*no LineString"):
        load_network(empty)
