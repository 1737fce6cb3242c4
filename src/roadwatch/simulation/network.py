"""A directed road graph built from a GeoJSON LineString network, with routing for vehicles."""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from roadwatch.domain.geo import GeoGrid, destination, haversine_m

# The network shipped with the simulator: Reims, drawn from public coordinates.
REIMS_NETWORK_PATH = Path(__file__).parent / "data" / "reims_network.geojson"

# Line ends this close to a vertex of another line join it: hand-drawn or exported networks
# rarely repeat a junction's coordinates to the last digit.
SNAP_M = 3.0
# Vertices are compared at 1e-7 degree (about 1 cm), finer than any survey behind a road map.
_KEY_SCALE = 10_000_000
# Speed limits (km/h) when a line does not give one, by class (French defaults).
DEFAULT_SPEED_KMH = {
    "motorway": 130.0,
    "trunk": 90.0,
    "primary": 50.0,
    "secondary": 50.0,
    "residential": 30.0,
}
# No road anywhere is signed faster; a larger value is a unit mistake in the input.
MAX_SPEED_KMH = 200.0
# OpenStreetMap `highway` values, so an exported network can be driven without editing.
_OSM_HIGHWAY = {
    "motorway": "motorway",
    "motorway_link": "motorway",
    "trunk": "trunk",
    "trunk_link": "trunk",
    "primary": "primary",
    "primary_link": "primary",
    "secondary": "secondary",
    "secondary_link": "secondary",
    "tertiary": "secondary",
    "tertiary_link": "secondary",
    "unclassified": "residential",
    "residential": "residential",
    "living_street": "residential",
    "service": "residential",
}
# random_route gives up after this many legs that add nothing (a network of dead ends).
_MAX_IDLE_LEGS = 64
# Destinations tried per leg before accepting a leg that starts with a U-turn.
_U_TURN_RETRIES = 8


class InvalidNetwork(ValueError):
    """The road network document cannot be turned into a road graph."""


class NoRoute(LookupError):
    """No route joins the two nodes."""


class RoadClass(StrEnum):
    """Road classes, from fastest to slowest."""

    MOTORWAY = "motorway"
    TRUNK = "trunk"
    PRIMARY = "primary"
    SECONDARY = "secondary"
    RESIDENTIAL = "residential"


def initial_bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the bearing from the first point to the second, clockwise from north in [0, 360)."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dlambda = math.radians(lon2 - lon1)
    y = math.sin(dlambda) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlambda)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class Edge:
    """One direction of a road between two nodes, as a polyline of (lat, lon) points."""

    id: str
    from_node: int
    to_node: int
    coordinates: tuple[tuple[float, float], ...]
    cumulative_m: tuple[float, ...]
    segment_headings_deg: tuple[float, ...]
    speed_limit_kmh: float
    road_class: RoadClass
    name: str

    def __post_init__(self) -> None:
        points = len(self.coordinates)
        if points < 2:
            raise InvalidNetwork(f"edge {self.id!r} needs at least two points")
        if len(self.cumulative_m) != points or len(self.segment_headings_deg) != points - 1:
            raise InvalidNetwork(f"edge {self.id!r} has inconsistent geometry")
        if not 0 < self.speed_limit_kmh <= MAX_SPEED_KMH:
            raise InvalidNetwork(f"edge {self.id!r} has speed limit {self.speed_limit_kmh}")

    @classmethod
    def from_points(
        cls,
        id: str,
        from_node: int,
        to_node: int,
        coordinates: Sequence[tuple[float, float]],
        *,
        speed_limit_kmh: float,
        road_class: RoadClass,
        name: str = "",
    ) -> Edge:
        """Build an edge, computing its lengths and headings from its points."""
        points = tuple((float(lat), float(lon)) for lat, lon in coordinates)
        cumulative = [0.0]
        headings: list[float] = []
        for (lat1, lon1), (lat2, lon2) in itertools.pairwise(points):
            cumulative.append(cumulative[-1] + haversine_m(lat1, lon1, lat2, lon2))
            headings.append(initial_bearing_deg(lat1, lon1, lat2, lon2))
        return cls(
            id=id,
            from_node=from_node,
            to_node=to_node,
            coordinates=points,
            cumulative_m=tuple(cumulative),
            segment_headings_deg=tuple(headings),
            speed_limit_kmh=float(speed_limit_kmh),
            road_class=road_class,
            name=name,
        )

    @property
    def length_m(self) -> float:
        """Return the length of the edge in metres."""
        return self.cumulative_m[-1]

    @property
    def travel_time_s(self) -> float:
        """Return the time to drive the edge at its speed limit."""
        return self.length_m / (self.speed_limit_kmh / 3.6)

    def position_at(self, s_m: float) -> tuple[float, float, float]:
        """Return (lat, lon, heading_deg) `s_m` metres along the edge, clamped to its ends."""
        last = len(self.coordinates) - 1
        if s_m <= 0.0:
            lat, lon = self.coordinates[0]
            return lat, lon, self.segment_headings_deg[0]
        if s_m >= self.length_m:
            lat, lon = self.coordinates[last]
            return lat, lon, self.segment_headings_deg[last - 1]
        segment = min(bisect.bisect_right(self.cumulative_m, s_m) - 1, last - 1)
        heading = self.segment_headings_deg[segment]
        lat0, lon0 = self.coordinates[segment]
        lat, lon = destination(lat0, lon0, heading, s_m - self.cumulative_m[segment])
        return lat, lon, heading


class RoadNetwork:
    """A directed road graph: nodes at junctions and line ends, edges between them."""

    __slots__ = ("_by_id", "_components", "_edges", "_nodes", "_out")

    def __init__(self, nodes: Sequence[tuple[float, float]], edges: Iterable[Edge]) -> None:
        self._nodes = tuple((float(lat), float(lon)) for lat, lon in nodes)
        self._edges = tuple(edges)
        self._by_id: dict[str, Edge] = {}
        out: list[list[Edge]] = [[] for _ in self._nodes]
        for edge in self._edges:
            if edge.id in self._by_id:
                raise InvalidNetwork(f"duplicate edge id {edge.id!r}")
            for node in (edge.from_node, edge.to_node):
                if not 0 <= node < len(self._nodes):
                    raise InvalidNetwork(f"edge {edge.id!r} refers to unknown node {node}")
            self._by_id[edge.id] = edge
            out[edge.from_node].append(edge)
        self._out = tuple(tuple(node_edges) for node_edges in out)
        self._components: tuple[frozenset[int], ...] | None = None

    @property
    def node_count(self) -> int:
        """Return the number of nodes."""
        return len(self._nodes)

    @property
    def edge_count(self) -> int:
        """Return the number of directed edges."""
        return len(self._edges)

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Return every directed edge."""
        return self._edges

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Return (min_lat, min_lon, max_lat, max_lon) over every point of every edge."""
        lats = [lat for edge in self._edges for lat, _ in edge.coordinates]
        lons = [lon for edge in self._edges for _, lon in edge.coordinates]
        lats.extend(lat for lat, _ in self._nodes)
        lons.extend(lon for _, lon in self._nodes)
        if not lats:
            raise InvalidNetwork("an empty network has no bounding box")
        return min(lats), min(lons), max(lats), max(lons)

    def node_position(self, node: int) -> tuple[float, float]:
        """Return the (lat, lon) of a node."""
        return self._nodes[node]

    def edge(self, edge_id: str) -> Edge:
        """Return the edge with this id."""
        return self._by_id[edge_id]

    def edges_from(self, node: int) -> tuple[Edge, ...]:
        """Return the edges leaving a node."""
        return self._out[node]

    def nearest_node(self, lat: float, lon: float) -> int:
        """Return the node closest to (lat, lon)."""
        if not self._nodes:
            raise InvalidNetwork("an empty network has no nodes")
        return min(
            range(len(self._nodes)),
            key=lambda node: haversine_m(lat, lon, *self._nodes[node]),
        )

    def strongly_connected_components(self) -> tuple[frozenset[int], ...]:
        """Return the strongly connected components, largest first."""
        if self._components is None:
            found = _tarjan(len(self._nodes), self._out)
            # Ties broken by smallest node so the order never depends on the traversal.
            found.sort(key=lambda component: (-len(component), min(component)))
            self._components = tuple(found)
        return self._components

    def largest_component(self) -> frozenset[int]:
        """Return the nodes of the largest strongly connected component."""
        components = self.strongly_connected_components()
        return components[0] if components else frozenset()

    def shortest_route(self, from_node: int, to_node: int) -> list[Edge]:
        """Return the fastest route at the speed limits (Dijkstra); empty when the nodes match."""
        for node in (from_node, to_node):
            if not 0 <= node < len(self._nodes):
                raise NoRoute(f"unknown node {node}")
        if from_node == to_node:
            return []
        best = {from_node: 0.0}
        via: dict[int, Edge] = {}
        done: set[int] = set()
        # The counter breaks ties in insertion order, so equal-time routes are reproducible.
        counter = 0
        queue: list[tuple[float, int, int]] = [(0.0, counter, from_node)]
        while queue:
            cost, _, node = heapq.heappop(queue)
            if node in done:
                continue
            if node == to_node:
                break
            done.add(node)
            for edge in self._out[node]:
                candidate = cost + edge.travel_time_s
                if candidate < best.get(edge.to_node, math.inf):
                    best[edge.to_node] = candidate
                    via[edge.to_node] = edge
                    counter += 1
                    heapq.heappush(queue, (candidate, counter, edge.to_node))
        if to_node not in via:
            raise NoRoute(f"no route from node {from_node} to node {to_node}")
        route: list[Edge] = []
        node = to_node
        while node != from_node:
            edge = via[node]
            route.append(edge)
            node = edge.from_node
        route.reverse()
        return route

    def random_route(self, rng: random.Random, min_length_m: float) -> list[Edge]:
        """Return a route of at least `min_length_m` through random destinations, driven by `rng`.

        The route stays in the largest strongly connected component, so a vehicle can always
        continue from its end with another random route.
        """
        nodes = sorted(self.largest_component())
        if len(nodes) < 2:
            raise NoRoute("the network has no two nodes joined both ways")
        route: list[Edge] = []
        length = 0.0
        current = rng.choice(nodes)
        idle = 0
        while not route or length < min_length_m:
            leg = self._random_leg(rng, nodes, current, route[-1] if route else None)
            if not leg:
                idle += 1
                if idle > _MAX_IDLE_LEGS:
                    raise NoRoute("the network cannot give a route that long")
                continue
            idle = 0
            route.extend(leg)
            length += sum(edge.length_m for edge in leg)
            current = leg[-1].to_node
        return route

    def _random_leg(
        self, rng: random.Random, nodes: Sequence[int], start: int, previous: Edge | None
    ) -> list[Edge]:
        leg: list[Edge] = []
        for _ in range(_U_TURN_RETRIES):
            target = rng.choice(nodes)
            if target == start:
                continue
            leg = self.shortest_route(start, target)
            # Turning back on the road just driven looks like a glitch on the map.
            if previous is None or not _is_u_turn(previous, leg[0]):
                return leg
        return leg


def _is_u_turn(previous: Edge, following: Edge) -> bool:
    return (
        following.from_node == previous.to_node
        and following.to_node == previous.from_node
        and following.coordinates == previous.coordinates[::-1]
    )


def _tarjan(node_count: int, out: Sequence[Sequence[Edge]]) -> list[frozenset[int]]:
    """Return the strongly connected components (Tarjan), without recursion."""
    index_of = [-1] * node_count
    low = [0] * node_count
    on_stack = [False] * node_count
    stack: list[int] = []
    components: list[frozenset[int]] = []
    counter = 0
    for root in range(node_count):
        if index_of[root] != -1:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            edges = out[node]
            descended = False
            while position < len(edges):
                succ = edges[position].to_node
                position += 1
                if index_of[succ] == -1:
                    work.append((node, position))
                    work.append((succ, 0))
                    descended = True
                    break
                if on_stack[succ]:
                    low[node] = min(low[node], index_of[succ])
            if descended:
                continue
            if low[node] == index_of[node]:
                members: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    members.append(member)
                    if member == node:
                        break
                components.append(frozenset(members))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


@dataclass(frozen=True, slots=True)
class _Line:
    id: str
    name: str
    road_class: RoadClass
    speed_limit_kmh: float
    # +1 one-way along the drawing, -1 one-way against it, 0 both ways.
    direction: int
    points: list[tuple[float, float]]


def _key(point: tuple[float, float]) -> tuple[int, int]:
    return round(point[0] * _KEY_SCALE), round(point[1] * _KEY_SCALE)


def network_from_geojson(doc: Any) -> RoadNetwork:
    """Build a road network from a GeoJSON FeatureCollection of LineString roads.

    Features of other geometry types are ignored. Lines meet where they share a vertex (or
    where a line ends within SNAP_M of another line's vertex); each two-way line gives one
    edge per direction between consecutive junctions.
    """
    lines = _parse_lines(doc)
    _snap_loose_ends(lines)
    for line in lines:
        deduped = [line.points[0]]
        for point in line.points[1:]:
            if _key(point) != _key(deduped[-1]):
                deduped.append(point)
        if len(deduped) < 2:
            raise InvalidNetwork(f"line {line.id!r} has fewer than two distinct points")
        line.points[:] = deduped

    occurrences: dict[tuple[int, int], int] = {}
    for line in lines:
        for point in line.points:
            occurrences[_key(point)] = occurrences.get(_key(point), 0) + 1
    node_of: dict[tuple[int, int], int] = {}
    nodes: list[tuple[float, float]] = []

    def node_for(point: tuple[float, float]) -> int:
        key = _key(point)
        node = node_of.get(key)
        if node is None:
            node = node_of[key] = len(nodes)
            nodes.append(point)
        return node

    edges: list[Edge] = []
    for line in lines:
        part: list[tuple[float, float]] = [line.points[0]]
        start = node_for(line.points[0])
        number = 0
        last = len(line.points) - 1
        for index, point in enumerate(line.points[1:], start=1):
            part.append(point)
            if index != last and occurrences[_key(point)] < 2:
                continue
            end = node_for(point)
            edges.extend(_edges_for(line, number, start, end, part))
            number += 1
            part = [point]
            start = end
    return RoadNetwork(nodes, edges)


def _edges_for(
    line: _Line, number: int, start: int, end: int, points: list[tuple[float, float]]
) -> list[Edge]:
    edge_id = f"{line.id}:{number}"
    made: list[Edge] = []
    if line.direction >= 0:
        made.append(
            Edge.from_points(
                edge_id,
                start,
                end,
                points,
                speed_limit_kmh=line.speed_limit_kmh,
                road_class=line.road_class,
                name=line.name,
            )
        )
    if line.direction <= 0:
        made.append(
            Edge.from_points(
                f"{edge_id}:rev",
                end,
                start,
                points[::-1],
                speed_limit_kmh=line.speed_limit_kmh,
                road_class=line.road_class,
                name=line.name,
            )
        )
    return made


def _snap_loose_ends(lines: list[_Line]) -> None:
    """Move each line end that meets nothing onto the nearest vertex of another line nearby."""
    counts: dict[tuple[int, int], int] = {}
    grid: GeoGrid[tuple[int, int]] = GeoGrid(cell_m=4 * SNAP_M)
    for line_index, line in enumerate(lines):
        for vertex_index, point in enumerate(line.points):
            counts[_key(point)] = counts.get(_key(point), 0) + 1
            grid.add(grid.cell_of(*point), (line_index, vertex_index))
    for line_index, line in enumerate(lines):
        for end_index in (0, len(line.points) - 1):
            lat, lon = line.points[end_index]
            if counts[_key((lat, lon))] > 1:
                continue
            best: tuple[float, int, int] | None = None
            for other_line, other_vertex in grid.near(lat, lon, SNAP_M):
                if other_line == line_index:
                    continue
                other = lines[other_line].points[other_vertex]
                distance = haversine_m(lat, lon, *other)
                candidate = (distance, other_line, other_vertex)
                if distance <= SNAP_M and (best is None or candidate < best):
                    best = candidate
            if best is not None:
                line.points[end_index] = lines[best[1]].points[best[2]]


def _parse_lines(doc: Any) -> list[_Line]:
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise InvalidNetwork("a road network must be a GeoJSON FeatureCollection")
    features = doc.get("features")
    if not isinstance(features, list):
        raise InvalidNetwork("the FeatureCollection has no 'features' list")
    lines: list[_Line] = []
    seen: set[str] = set()
    for index, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            raise InvalidNetwork(f"feature {index} is not a GeoJSON Feature")
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        if not isinstance(geometry, Mapping):
            raise InvalidNetwork(f"feature {index} has an invalid geometry")
        kind = geometry.get("type")
        parts: Any
        if kind == "LineString":
            parts = [geometry.get("coordinates")]
        elif kind == "MultiLineString":
            parts = geometry.get("coordinates")
            if not isinstance(parts, list):
                raise InvalidNetwork(f"feature {index}: MultiLineString coordinates must be a list")
        else:
            continue
        properties = feature.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise InvalidNetwork(f"feature {index} has invalid properties")
        line_id = _line_id(properties, feature, index)
        if line_id in seen:
            raise InvalidNetwork(f"duplicate line id {line_id!r}")
        seen.add(line_id)
        road_class = _road_class(properties, line_id)
        speed = _speed_limit(properties, road_class, line_id)
        direction = _direction(properties, line_id)
        name = properties.get("name")
        for part_index, coordinates in enumerate(parts):
            part_id = line_id if len(parts) == 1 else f"{line_id}.{part_index}"
            lines.append(
                _Line(
                    id=part_id,
                    name=name if isinstance(name, str) else "",
                    road_class=road_class,
                    speed_limit_kmh=speed,
                    direction=direction,
                    points=_points(coordinates, part_id),
                )
            )
    if not lines:
        raise InvalidNetwork("the FeatureCollection holds no LineString roads")
    return lines


def _line_id(properties: Mapping[str, Any], feature: Mapping[str, Any], index: int) -> str:
    for candidate in (properties.get("id"), feature.get("id")):
        if isinstance(candidate, str) and candidate:
            return candidate
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return str(candidate)
    return f"line-{index}"


def _road_class(properties: Mapping[str, Any], line_id: str) -> RoadClass:
    value = properties.get("road_class")
    if value is None:
        highway = properties.get("highway")
        if isinstance(highway, str) and highway in _OSM_HIGHWAY:
            return RoadClass(_OSM_HIGHWAY[highway])
        return RoadClass.RESIDENTIAL
    try:
        return RoadClass(value)
    except ValueError:
        allowed = ", ".join(member.value for member in RoadClass)
        raise InvalidNetwork(
            f"line {line_id!r}: road_class {value!r} is not one of {allowed}"
        ) from None


def _speed_limit(properties: Mapping[str, Any], road_class: RoadClass, line_id: str) -> float:
    value = properties.get("speed_limit_kmh")
    if value is None:
        maxspeed = properties.get("maxspeed")
        if isinstance(maxspeed, str) and maxspeed.strip().isdigit():
            value = int(maxspeed.strip())
        else:
            return DEFAULT_SPEED_KMH[road_class.value]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidNetwork(f"line {line_id!r}: speed_limit_kmh must be a number")
    if not 0 < value <= MAX_SPEED_KMH:
        raise InvalidNetwork(
            f"line {line_id!r}: speed_limit_kmh {value} is outside 0..{MAX_SPEED_KMH:g}"
        )
    return float(value)


def _direction(properties: Mapping[str, Any], line_id: str) -> int:
    value = properties.get("oneway", False)
    if value is True or value in ("yes", "true", "1"):
        return 1
    if value is False or value in ("no", "false", "0"):
        return 0
    if value == "-1":
        return -1
    raise InvalidNetwork(f"line {line_id!r}: oneway must be true or false, not {value!r}")


def _points(coordinates: Any, line_id: str) -> list[tuple[float, float]]:
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise InvalidNetwork(f"line {line_id!r} needs a list of at least two positions")
    points: list[tuple[float, float]] = []
    for position in coordinates:
        if (
            not isinstance(position, list | tuple)
            or len(position) < 2
            or not all(
                isinstance(value, int | float) and not isinstance(value, bool)
                for value in position[:2]
            )
        ):
            raise InvalidNetwork(f"line {line_id!r}: {position!r} is not a [lon, lat] position")
        lon, lat = float(position[0]), float(position[1])
        # GeoJSON orders positions longitude first (RFC 7946 §3.1.1).
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise InvalidNetwork(f"line {line_id!r}: [{lon}, {lat}] is outside WGS84 ranges")
        points.append((lat, lon))
    return points


def load_network(path: str | Path) -> RoadNetwork:
    """Read a GeoJSON road network from a file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidNetwork(f"{path}: not valid JSON ({exc})") from exc
    try:
        return network_from_geojson(doc)
    except InvalidNetwork as exc:
        raise InvalidNetwork(f"{path}: {exc}") from exc
