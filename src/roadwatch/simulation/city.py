"""A seeded city of vehicles on a road network, speaking CAM/DENM, with staged scenarios."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from roadwatch.domain.geo import destination, haversine_m
from roadwatch.simulation.cam import CamTrigger, Publication, cam_payload, denm_publication
from roadwatch.simulation.network import Edge, RoadNetwork
from roadwatch.simulation.vehicles import EdgeLike, Traffic, Vehicle, VehicleKind

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
# ETSI TS 102 894-2 "accident", and the station types trusted alone with it (SPEC §2, §3).
ACCIDENT_CAUSE = 2
EMERGENCY_STATION_TYPE = 10
ROAD_OPERATOR_STATION_TYPE = 15
# Vehicles that witness a crash: ordinary traffic, so that two of them are needed (SPEC §3).
_WITNESS_KINDS = (VehicleKind.CAR, VehicleKind.BUS, VehicleKind.TRUCK)


class CitySimulation:
    """Drives vehicles on a road network on a simulated clock and returns what they publish."""

    def __init__(
        self,
        network: RoadNetwork,
        vehicles: int,
        seed: int,
        start_ms: int,
        scenario: Scenario,
    ) -> None:
        self.network = network
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
            out += self._cams()
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
        """Return a SPEC §2 DENM stamped with the simulated clock."""
        return denm_publication(
            station_id, station_type, self.now_ms, lat, lon, cause=cause, termination=termination
        )

    def counters(self) -> dict[str, int]:
        """Return vehicles on the network, CAMs and DENMs sent, scenario events injected."""
        return dict(self._counts, vehicles=len(self.traffic))

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return the events a correct detector yields for what was staged so far."""
        return self.scenario.ground_truth()


class Scenario:
    """Something staged in the city at set times: its DENMs, and the events it must cause."""

    name = "traffic"

    def bind(self, sim: CitySimulation) -> None:
        """Prepare the scenario once the city is populated."""

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Act at the city's current time; return the DENMs sent now."""
        return []

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return the expected final events of what was staged so far."""
        return []

    def stations(self) -> set[str]:
        """Return the stations this scenario staged (reporters, victims, platoons)."""
        return set()


class Accident(Scenario):
    """A car crashes; two vehicles nearby report it, then an ambulance; an operator clears it."""

    name = "accident"
    # Seconds after the crash at which each step happens.
    WITNESS_S = (5.0, 9.0)
    EMERGENCY_ARRIVES_S = 60.0
    EMERGENCY_REPORTS_S = 90.0
    CLEARED_S = 300.0

    def __init__(self, at_s: float = 20.0, number: int = 0) -> None:
        self.at_s = at_s
        self.number = number
        self._victim: Vehicle | None = None
        self._point = (0.0, 0.0)
        self._witnesses: list[Vehicle] = []
        self._emergency = f"ems-{number:03d}"
        self._operator = f"operator-{number:03d}"
        self._done: set[str] = set()
        self._reported: list[str] = []
        self._cleared = False

    def _due(self, sim: CitySimulation, step: str, after_s: float) -> bool:
        if step in self._done or sim.now_ms < sim.start_ms + round((self.at_s + after_s) * 1000):
            return False
        self._done.add(step)
        return True

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Crash, witness, ambulance report and clearance, each once at its time."""
        out: list[Publication] = []
        if self._due(sim, "crash", 0.0):
            self._crash(sim)
        victim = self._victim
        if victim is None:
            return out
        lat, lon = self._point
        for i, after in enumerate(self.WITNESS_S):
            if i < len(self._witnesses) and self._due(sim, f"witness{i}", after):
                witness = self._witnesses[i]
                # Each witness places the crash a few metres off: GNSS error and viewpoint.
                wlat, wlon = destination(lat, lon, sim.rng.uniform(0.0, 360.0), 5.0 + 5.0 * i)
                out.append(
                    sim.denm(
                        witness.id, witness.kind.station_type, wlat, wlon, cause=ACCIDENT_CAUSE
                    )
                )
                self._reported.append(witness.id)
        if self._due(sim, "ems", self.EMERGENCY_ARRIVES_S) and sim.traffic.get(victim.id):
            # It comes up behind the crashed car along the same road and waits there.
            route = victim.route[victim.edge_index :]
            sim.add_vehicle(VehicleKind.EMERGENCY, route, vehicle_id=self._emergency)
        if self._due(sim, "ems-report", self.EMERGENCY_REPORTS_S):
            out.append(
                sim.denm(self._emergency, EMERGENCY_STATION_TYPE, lat, lon, cause=ACCIDENT_CAUSE)
            )
            self._reported.append(self._emergency)
        if self._due(sim, "clear", self.CLEARED_S):
            out.append(
                sim.denm(
                    self._operator,
                    ROAD_OPERATOR_STATION_TYPE,
                    lat,
                    lon,
                    cause=ACCIDENT_CAUSE,
                    termination="negation",
                )
            )
            self._cleared = True
            for station in (victim.id, self._emergency):
                if sim.traffic.get(station) is not None:
                    sim.traffic.release(station)
        return out

    def _crash(self, sim: CitySimulation) -> None:
        taken = sim.scenario.stations()
        candidates = [
            v
            for v in sim.traffic.vehicles
            if v.kind is VehicleKind.CAR and v.id not in taken and v.speed_mps > 3.0
        ]
        if not candidates:
            return
        victim = sim.rng.choice(candidates)
        lat, lon, _ = victim.position()
        sim.traffic.stop(victim.id)
        others = [
            v
            for v in sim.traffic.vehicles
            if v.kind in _WITNESS_KINDS and v.id != victim.id and v.id not in taken
        ]
        others.sort(key=lambda v: (haversine_m(lat, lon, *v.position()[:2]), v.id))
        self._victim = victim
        self._point = (lat, lon)
        self._witnesses = others[:2]

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return one accident once two witnesses reported, cleared once the operator said so."""
        if len(self._reported) < 2:
            return []
        return [
            {
                "type": "accident",
                "status": "cleared" if self._cleared else "active",
                "station_ids": sorted(self._reported),
                "zone_id": None,
                "exact_stations": True,
            }
        ]

    def stations(self) -> set[str]:
        """Return the victim, witnesses, ambulance and operator."""
        found = {w.id for w in self._witnesses} | {self._emergency, self._operator}
        if self._victim is not None:
            found.add(self._victim.id)
        return found


class Jam(Scenario):
    """A bottleneck: a 10 km/h limit on one busy edge for a few minutes, fed by a platoon."""

    name = "jam"
    LIMIT_KMH = 10.0
    DURATION_S = 240.0
    # A platoon car joins the bottleneck this often while it lasts, so it surely queues.
    FEED_EVERY_S = 4.0
    # Vehicles this close to the bottleneck while it lasts may be counted in the jam.
    NEAR_M = 700.0
    # How long after the lifting the jam must have cleared (SPEC §3: 120 s of free flow).
    CLEAR_AFTER_S = 240.0
    MIN_LENGTH_M = 500.0
    MAX_LENGTH_M = 1300.0
    MIN_POSTED_KMH = 70.0

    def __init__(self, at_s: float = 15.0, number: int = 0) -> None:
        self.at_s = at_s
        self.number = number
        self.edge: Edge | None = None
        self.platoon: list[str] = []
        self._near: set[str] = set()
        self._on_edge: set[str] = set()
        self._next_feed_ms = 0
        self.imposed_ms: int | None = None
        self.lifted_ms: int | None = None
        self._now_ms = 0

    def bind(self, sim: CitySimulation) -> None:
        """Choose the busiest fast edge of about a kilometre on the vehicles' routes."""
        slow_nodes = {
            node
            for edge in sim.network.edges
            if edge.speed_limit_kmh < self.MIN_POSTED_KMH
            for node in (edge.from_node, edge.to_node)
        }
        counts: dict[str, int] = {}
        for vehicle in sim.traffic.vehicles:
            for edge in vehicle.route:
                # A fast road: once the limit is lifted, traffic clears it at over 50 km/h
                # (SPEC §3), which drivers on a 50 km/h street never average.
                if (
                    isinstance(edge, Edge)
                    and self.MIN_LENGTH_M <= edge.length_m <= self.MAX_LENGTH_M
                    and edge.speed_limit_kmh >= self.MIN_POSTED_KMH
                    and _one_quadrant(edge)
                    # Queues spilling onto a street would stay "jammed": its traffic never
                    # averages the 50 km/h that clears a jam.
                    and edge.from_node not in slow_nodes
                    and edge.to_node not in slow_nodes
                ):
                    counts[edge.id] = counts.get(edge.id, 0) + 1
        if counts:
            best = max(sorted(counts), key=lambda edge_id: counts[edge_id])
            self.edge = sim.network.edge(best)

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Impose the limit, feed the platoon, note who is near, lift the limit."""
        edge = self.edge
        self._now_ms = sim.now_ms
        if edge is None:
            return []
        start_ms = sim.start_ms + round(self.at_s * 1000)
        end_ms = start_ms + round(self.DURATION_S * 1000)
        if self.imposed_ms is None and sim.now_ms >= start_ms:
            self.imposed_ms = sim.now_ms
            self._next_feed_ms = sim.now_ms
            sim.traffic.set_speed_limit(edge.id, self.LIMIT_KMH)
        if self.imposed_ms is None:
            return []
        if self.lifted_ms is None and sim.now_ms >= end_ms:
            self.lifted_ms = sim.now_ms
            sim.traffic.set_speed_limit(edge.id, None)
        if self.lifted_ms is None and sim.now_ms >= self._next_feed_ms:
            self._next_feed_ms += round(self.FEED_EVERY_S * 1000)
            self._feed(sim, edge)
        clear_ms = round(self.CLEAR_AFTER_S * 1000)
        if self.lifted_ms is None or sim.now_ms <= self.lifted_ms + clear_ms:
            mid_lat, mid_lon, _ = edge.position_at(edge.length_m / 2.0)
            limited = self.lifted_ms is None
            for vehicle in sim.traffic.vehicles:
                if limited and vehicle.edge.id == edge.id:
                    self._on_edge.add(vehicle.id)
                lat, lon, _ = vehicle.position()
                if haversine_m(mid_lat, mid_lon, lat, lon) <= self.NEAR_M:
                    self._near.add(vehicle.id)
        return []

    def _feed(self, sim: CitySimulation, edge: Edge) -> None:
        for vehicle in sim.traffic.vehicles:
            # The entrance is still occupied: wait for the next slot rather than overlap.
            if vehicle.edge.id == edge.id and vehicle.offset_m - vehicle.length_m < 8.0:
                return
        onward = sim.route_from(edge.to_node)
        if not onward:
            return
        station = f"jam{self.number}-{len(self.platoon):03d}"
        sim.add_vehicle(VehicleKind.CAR, [edge, *onward], vehicle_id=station)
        self.platoon.append(station)

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return one jam once the bottleneck held three vehicles, cleared once it flowed again."""
        if len(self._on_edge) < 3:
            return []
        cleared = self.lifted_ms is not None and self._now_ms >= self.lifted_ms + round(
            self.CLEAR_AFTER_S * 1000
        )
        return [
            {
                "type": "traffic_jam",
                "status": "cleared" if cleared else "active",
                "station_ids": sorted(self._near | set(self.platoon)),
                "zone_id": None,
                "exact_stations": False,
            }
        ]

    def stations(self) -> set[str]:
        """Return the platoon and every vehicle that drove the bottleneck while it lasted."""
        return set(self.platoon) | self._on_edge


def _one_quadrant(edge: Edge) -> bool:
    """Tell whether the edge heads well inside one of the jam detector's heading quadrants."""
    # A queue straddling two quadrants is two jams to the detector (SPEC §3: split by direction).
    return all(
        QUADRANT_MARGIN_DEG <= (heading + 45.0) % 90.0 <= 90.0 - QUADRANT_MARGIN_DEG
        for heading in edge.segment_headings_deg
    )


# Quadrants are N [315°, 45°), E [45°, 135°)…; headings this close to a border are avoided.
QUADRANT_MARGIN_DEG = 12.0


class Composite(Scenario):
    """Several scenarios staged in the same city."""

    def __init__(self, name: str, parts: list[Scenario]) -> None:
        self.name = name
        self.parts = parts

    def bind(self, sim: CitySimulation) -> None:
        """Bind every part."""
        for part in self.parts:
            part.bind(sim)

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Step every part, in order."""
        out: list[Publication] = []
        for part in self.parts:
            out += part.step(sim)
        return out

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return every part's ground truth."""
        return [event for part in self.parts for event in part.ground_truth()]

    def stations(self) -> set[str]:
        """Return every part's stations."""
        return set().union(*(part.stations() for part in self.parts))


# The demo stages an accident this often, starting shortly after the start.
DEMO_ACCIDENT_EVERY_S = 180.0
DEMO_ACCIDENTS = 20


def demo() -> Scenario:
    """Return mixed traffic with an accident every few minutes and a jam forming and clearing."""
    parts: list[Scenario] = [Jam(at_s=60.0)]
    parts += [
        Accident(at_s=20.0 + i * DEMO_ACCIDENT_EVERY_S, number=i) for i in range(DEMO_ACCIDENTS)
    ]
    return Composite("demo", parts)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "traffic": Scenario,
    "accident": Accident,
    "jam": Jam,
    "demo": demo,
}
