"""The zones scenario: named vehicles driven through the zones, their crossings known exactly."""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Any

from roadwatch.simulation.cam import Publication
from roadwatch.simulation.geofence import CrossingTruth, route_points
from roadwatch.simulation.network import Edge, NoRoute
from roadwatch.simulation.scenarios.base import Scenario
from roadwatch.simulation.vehicles import VehicleKind

if TYPE_CHECKING:
    from roadwatch.simulation.city import CitySimulation


class ZoneTours(Scenario):
    """Named vehicles drive through the zones one after another; their crossings are exact.

    Each one starts and ends outside every zone, on a route through one of the zones (in turn),
    and leaves the network at its end. The expected crossings come from the positions the
    vehicles publish and the zone polygons, by the rules of docs/contract/detection.md §6.
    """

    name = "zones"
    # Routes start and end at least this far outside every zone (beyond any hysteresis band).
    OUTSIDE_MARGIN_M = 80.0
    MAX_ROUTE_M = 7000.0
    # Route draws per vehicle before settling for a longer route or none.
    ROUTE_TRIES = 40
    # A vehicle starts only when the first metres of its road are free.
    START_CLEAR_M = 25.0

    def __init__(
        self, count: int = 4, at_s: float = 10.0, every_s: float = 20.0, number: int = 0
    ) -> None:
        self.count = count
        self.at_s = at_s
        self.every_s = every_s
        self.number = number
        self.staged: list[str] = []
        self._truth: CrossingTruth | None = None
        self._crossing: dict[str, list[Edge]] = {}
        self._outside: list[int] = []
        self._live: set[str] = set()
        self._rng = random.Random(number)
        self._now_ms = 0

    def bind(self, sim: CitySimulation) -> None:
        """Find, for each zone, the edges that run through it, and the nodes outside them all."""
        self._truth = CrossingTruth(
            sim.zones, hysteresis_m=sim.zone_hysteresis_m, timeout_ms=sim.zone_timeout_ms
        )
        self._rng = random.Random(f"zones-{self.number}-{sim.seed}")
        component = sim.network.largest_component()
        margin = self.OUTSIDE_MARGIN_M + max((z.hysteresis_m for z in sim.zones), default=0.0)
        margin += sim.zone_hysteresis_m
        self._outside = [
            node
            for node in sorted(component)
            if all(
                zone.distance_outside_m(*sim.network.node_position(node)) > margin
                for zone in sim.zones
            )
        ]
        for zone in sim.zones:
            edges = [
                edge
                for edge in sim.network.edges
                if edge.from_node in component
                and edge.to_node in component
                and any(
                    zone.contains(lat, lon) for lat, lon in route_points([edge.coordinates], 10.0)
                )
            ]
            if edges:
                self._crossing[zone.id] = edges

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Start the next vehicle when its time has come and its road is free."""
        self._now_ms = sim.now_ms
        k = len(self.staged)
        if (
            k >= self.count
            or not self._crossing
            or sim.now_ms < sim.start_ms + round((self.at_s + k * self.every_s) * 1000)
        ):
            return []
        route = self._route(sim, k)
        if not route:
            self.count = k  # the network offers no such route: stage no more
            return []
        for vehicle in sim.traffic.vehicles:
            if vehicle.edge.id == route[0].id and vehicle.offset_m - vehicle.length_m < (
                self.START_CLEAR_M
            ):
                return []  # try again at the next step
        station = f"zone{self.number}-{k:03d}"
        vehicle = sim.add_vehicle(VehicleKind.CAR, route, vehicle_id=station)
        vehicle.finishing = True  # it leaves the network at the end of its route
        self.staged.append(station)
        self._live.add(station)
        return []

    def _route(self, sim: CitySimulation, k: int) -> list[Edge]:
        zone_ids = sorted(self._crossing)
        zone_id = zone_ids[k % len(zone_ids)]
        rng = random.Random(f"{self._rng.random()}-{k}")
        best: list[Edge] = []
        for _ in range(self.ROUTE_TRIES):
            through = rng.choice(self._crossing[zone_id])
            start = rng.choice(self._outside)
            end = rng.choice(self._outside)
            try:
                route = [
                    *sim.network.shortest_route(start, through.from_node),
                    through,
                    *sim.network.shortest_route(through.to_node, end),
                ]
            except NoRoute:
                continue
            if any(_reverses(a, b) for a, b in itertools.pairwise(route)):
                continue  # turning back on the road just driven looks like a glitch on the map
            if sum(edge.length_m for edge in route) <= self.MAX_ROUTE_M:
                return route
            if not best:
                best = route
        return best

    def observe(self, publications: list[Publication]) -> None:
        """Follow the staged vehicles' published positions."""
        truth = self._truth
        live = self._live
        if truth is None or not live:
            return
        for _, payload, _ in publications:
            station = payload["stationId"]
            if station in live:
                truth.position(station, payload["timestamp"], payload["lat"], payload["lon"])

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return every zone crossing of the staged vehicles so far."""
        return [] if self._truth is None else self._truth.expected(self._now_ms)

    def stations(self) -> set[str]:
        """Return the staged vehicles."""
        return set(self.staged)


def _reverses(first: Edge, second: Edge) -> bool:
    return first.from_node == second.to_node and first.to_node == second.from_node
