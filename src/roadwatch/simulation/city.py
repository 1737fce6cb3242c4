"""A seeded city of vehicles on a road network, speaking CAM/DENM, on a simulated clock.

What is staged in it (crashes, lane closures, zone tours, rush-hour demand) is a `Scenario`
of simulation/scenarios/, which the city binds once populated and steps at every tick.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from roadwatch.simulation.cam import CamTrigger, Publication, cam_payload, denm_publication
from roadwatch.simulation.geofence import DEFAULT_TIMEOUT_MS, ZoneShape
from roadwatch.simulation.network import Edge, RoadNetwork
from roadwatch.simulation.vehicles import EdgeLike, Traffic, Vehicle, VehicleKind

if TYPE_CHECKING:
    from roadwatch.simulation.scenarios.base import Scenario

# Longest physics step: car following and CAM triggering stay smooth at 2 Hz or finer.
MAX_SUBSTEP_S = 0.5
# Each new route covers at least this much road, so rerouting stays rare.
ROUTE_MIN_LENGTH_M = 3000.0
# Mostly cars, some buses and trucks, a few emergency and road-operator vehicles.
KIND_WEIGHTS: tuple[tuple[VehicleKind, float], ...] = (
    (VehicleKind.CAR, 0.82),
    (VehicleKind.BUS, 0.06),
    (VehicleKind.TRUCK, 0.08),
    (VehicleKind.EMERGENCY, 0.02),
    (VehicleKind.ROAD_OPERATOR, 0.02),
)
# Initial speeds, as a share of the first edge's limit: below every driver's desired speed.
CRUISE_FACTOR_RANGE = (0.6, 0.85)


class CitySimulation:
    """Drives vehicles on a road network on a simulated clock and returns what they publish."""

    def __init__(
        self,
        network: RoadNetwork,
        vehicles: int,
        seed: int,
        start_ms: int,
        scenario: Scenario,
        *,
        zones: Sequence[ZoneShape] = (),
        zone_hysteresis_m: float = 0.0,
        zone_timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        self.network = network
        self.seed = seed
        # The zones of docs/contract/detection.md §6, for scenarios that stage crossings, with the
        # detector's defaults.
        self.zones = list(zones)
        self.zone_hysteresis_m = zone_hysteresis_m
        self.zone_timeout_ms = zone_timeout_ms
        self.rng = random.Random(seed)
        self.traffic = Traffic(seed, reroute=self._reroute)
        self.now_ms = start_ms
        self.start_ms = start_ms
        self.scenario = scenario
        self._elapsed_s = 0.0
        self._nodes = sorted(network.largest_component())
        self._triggers: dict[str, CamTrigger] = {}
        self._counts = {"vehicles": 0, "cams": 0, "denms": 0, "scenario_events": 0}
        kinds = [kind for kind, _ in KIND_WEIGHTS]
        weights = [weight for _, weight in KIND_WEIGHTS]
        for _ in range(vehicles):
            kind = self.rng.choices(kinds, weights)[0]
            route = network.random_route(self.rng, ROUTE_MIN_LENGTH_M)
            offset = self.rng.uniform(0.0, route[0].length_m)
            # Already cruising: a whole city starting from rest would look like one big jam.
            speed = route[0].speed_limit_kmh / 3.6 * self.rng.uniform(*CRUISE_FACTOR_RANGE)
            self.add_vehicle(kind, route, offset_m=offset, speed_mps=speed)
        scenario.bind(self)

    def add_vehicle(
        self,
        kind: VehicleKind,
        route: Sequence[EdgeLike],
        *,
        offset_m: float = 0.0,
        speed_mps: float = 0.0,
        vehicle_id: str | None = None,
    ) -> Vehicle:
        """Put a vehicle on the network, with its own CAM trigger."""
        vehicle = self.traffic.add(
            kind, route, offset_m=offset_m, speed_mps=speed_mps, vehicle_id=vehicle_id
        )
        self._triggers[vehicle.id] = CamTrigger()
        return vehicle

    def route_from(self, node: int) -> list[Edge]:
        """Return a route from `node` to a random node of the network's largest component."""
        for _ in range(8):
            target = self.rng.choice(self._nodes)
            if target != node:
                route = self.network.shortest_route(node, target)
                if route:
                    return route
        return []

    def _reroute(self, vehicle: Vehicle) -> list[Edge]:
        end = vehicle.route_end_node
        return self.route_from(end) if isinstance(end, int) else []

    def tick(self, dt_s: float) -> list[Publication]:
        """Advance the simulated clock by `dt_s` and return the publications meanwhile."""
        if dt_s <= 0:
            raise ValueError("a tick must move time forward")
        steps = max(1, math.ceil(dt_s / MAX_SUBSTEP_S - 1e-9))
        sub_s = dt_s / steps
        out: list[Publication] = []
        for _ in range(steps):
            for gone in self.traffic.step(sub_s):
                self._triggers.pop(gone.id, None)
            self._elapsed_s += sub_s
            # Derived from the total elapsed time so that rounding never accumulates.
            self.now_ms = self.start_ms + round(self._elapsed_s * 1000.0)
            cams = self._cams()
            self.scenario.observe(cams)
            out += cams
            for publication in self.scenario.step(self):
                self._counts["scenario_events"] += 1
                self._counts["denms"] += 1
                out.append(publication)
        self._counts["vehicles"] = len(self.traffic)
        return out

    def _cams(self) -> list[Publication]:
        out: list[Publication] = []
        t_ms = self.now_ms
        triggers = self._triggers
        for vehicle in self.traffic.vehicles:
            lat, lon, heading = vehicle.position()
            speed = vehicle.speed_mps
            if triggers[vehicle.id].should_send(t_ms, lat, lon, speed, heading):
                payload = cam_payload(
                    vehicle.id, vehicle.kind.station_type, t_ms, lat, lon, speed, heading
                )
                out.append((f"vehicles/{vehicle.id}/cam", payload, 0))
        self._counts["cams"] += len(out)
        return out

    def denm(
        self,
        station_id: str,
        station_type: int,
        lat: float,
        lon: float,
        *,
        cause: int,
        termination: str | None = None,
    ) -> Publication:
        """Return a DENM (docs/contract/mqtt.md §4) stamped with the simulated clock."""
        return denm_publication(
            station_id, station_type, self.now_ms, lat, lon, cause=cause, termination=termination
        )

    def counters(self) -> dict[str, int]:
        """Return vehicles on the network, CAMs and DENMs sent, scenario events injected."""
        return dict(self._counts, vehicles=len(self.traffic))

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return the events a correct detector yields for what was staged so far."""
        return self.scenario.ground_truth()
