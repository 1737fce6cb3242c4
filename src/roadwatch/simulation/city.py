"""A seeded city of vehicles on a road network, speaking CAM/DENM, with staged scenarios."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import h3

from roadwatch.domain.geo import destination, haversine_m
from roadwatch.simulation.cam import CamTrigger, Publication, cam_payload, denm_publication
from roadwatch.simulation.geofence import (
    DEFAULT_TIMEOUT_MS,
    CrossingTruth,
    ZoneShape,
    route_points,
)
from roadwatch.simulation.network import Edge, NoRoute, RoadNetwork
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
# ETSI TS 102 894-2 "accident", and the station types trusted alone with it
# (docs/contract/detection.md §4).
ACCIDENT_CAUSE = 2
EMERGENCY_STATION_TYPE = 10
ROAD_OPERATOR_STATION_TYPE = 15
# Vehicles that witness a crash: ordinary traffic, so that two of them are needed
# (docs/contract/detection.md §4).
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


class Scenario:
    """Something staged in the city at set times: its DENMs, and the events it must cause."""

    name = "traffic"

    def bind(self, sim: CitySimulation) -> None:
        """Prepare the scenario once the city is populated."""

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Act at the city's current time; return the DENMs sent now."""
        return []

    def observe(self, publications: list[Publication]) -> None:
        """See the CAMs the city has just published (positions as sent, rounded)."""

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
    # Crashes happen at least this far from a staged lane closure.
    AWAY_FROM_JAMS_M = 1500.0

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
        # A crash holds up the road behind it: never next to a staged lane closure.
        sites = [p.site for p in _parts(sim.scenario) if isinstance(p, Jam) and p.site]
        candidates = [
            v
            for v in sim.traffic.vehicles
            if v.kind is VehicleKind.CAR
            and v.id not in taken
            and v.speed_mps > 3.0
            and all(haversine_m(*v.position()[:2], *site) > self.AWAY_FROM_JAMS_M for site in sites)
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
    """A lane closure: 15 km/h on a short stretch of a fast road for a few minutes, and a platoon.

    The stretch is chosen so that the detector sees one jam whatever the traffic
    (docs/contract/detection.md §5): it lies in one H3 cell, on a road heading well inside one
    direction quadrant, and ends just before the road leaves that cell, so vehicles speeding up
    again report from the next cell. Platoon cars join upstream at cruising speed and brake into it;
    none joins while a queue stands before it, so the queue never grows into the cells upstream.
    """

    name = "jam"
    LIMIT_KMH = 15.0
    DURATION_S = 240.0
    # A platoon car joins upstream this often while the closure lasts, so the stretch stays busy.
    FEED_EVERY_S = 5.0
    # Vehicles this close to the closure while it lasts may be counted in the jam.
    NEAR_M = 700.0
    # The jam event's position (the middle of its cells) lies this close to the closure.
    SITE_RADIUS_M = 500.0
    # How long after the lifting the jam must have cleared (docs/contract/detection.md §5: 120 s of
    # free flow).
    CLEAR_AFTER_S = 240.0
    MIN_POSTED_KMH = 70.0
    # The jam detector's cells (docs/contract/detection.md §5: H3 resolution 9).
    CELL_RESOLUTION = 9
    # The closure: at most this long, and at least that.
    SECTION_MAX_M = 150.0
    SECTION_MIN_M = 60.0
    # Within the closure's cell before it: drivers braking there still report over 30 km/h.
    BRAKING_ROOM_M = 60.0
    # The closure ends this far before the cell's border; the road goes on for AFTER_M beyond.
    EXIT_MARGIN_M = 5.0
    AFTER_M = 40.0
    # Platoon cars join this far before the closure (room to brake from motorway speed)...
    APPROACH_M = 320.0
    # ...and never closer than this to the edge's start, so traffic behind them is far off.
    JOIN_MIN_M = 150.0
    # A joining car needs this much free road behind and ahead of it.
    JOIN_CLEAR_BEHIND_M = 120.0
    JOIN_CLEAR_AHEAD_M = 60.0
    # A queue: anybody this slow in this stretch before the closure (past the last braking metres).
    QUEUE_WATCH_M = (200.0, 20.0)
    QUEUE_SPEED_MPS = 30.0 / 3.6
    # Platoon cars drive on about this far after the closure, then leave the network.
    ONWARD_M = 800.0
    # Two closures staged in one city are at least this far apart.
    SEPARATION_M = 2000.0

    def __init__(self, at_s: float = 15.0, number: int = 0) -> None:
        self.at_s = at_s
        self.number = number
        self.edge: Edge | None = None
        # The closure along the edge, (start, end) in metres; the platoon joins at join_m.
        self.section = (0.0, 0.0)
        self.join_m = 0.0
        self.site: tuple[float, float] | None = None
        self.platoon: list[str] = []
        self._near: set[str] = set()
        self._in_section: set[str] = set()
        self._next_feed_ms = 0
        self.imposed_ms: int | None = None
        self.lifted_ms: int | None = None
        self._now_ms = 0

    def bind(self, sim: CitySimulation) -> None:
        """Choose the closure on the busiest fast road that has room for one."""
        slow_nodes = {
            node
            for edge in sim.network.edges
            if edge.speed_limit_kmh < self.MIN_POSTED_KMH
            for node in (edge.from_node, edge.to_node)
        }
        others = [
            part.site
            for part in _parts(sim.scenario)
            if isinstance(part, Jam) and part is not self and part.site is not None
        ]
        counts: dict[str, int] = {}
        for vehicle in sim.traffic.vehicles:
            for edge in vehicle.route:
                # A fast road: once the limit is lifted, traffic clears it at over 50 km/h
                # (docs/contract/detection.md §5), which drivers on a 50 km/h street never average.
                if (
                    isinstance(edge, Edge)
                    and edge.speed_limit_kmh >= self.MIN_POSTED_KMH
                    # Slow streets nearby have jams of their own.
                    and edge.from_node not in slow_nodes
                    and edge.to_node not in slow_nodes
                ):
                    counts[edge.id] = counts.get(edge.id, 0) + 1
        for edge_id in sorted(counts, key=lambda edge_id: (-counts[edge_id], edge_id)):
            edge = sim.network.edge(edge_id)
            for start, end in self._sections(edge):
                lat, lon, _ = edge.position_at((start + end) / 2.0)
                if all(haversine_m(lat, lon, *site) >= self.SEPARATION_M for site in others):
                    self.edge = edge
                    self.section = (start, end)
                    self.join_m = start - self.APPROACH_M
                    self.site = (lat, lon)
                    return

    def _sections(self, edge: Edge) -> list[tuple[float, float]]:
        """Return the possible closures on an edge, longest first."""
        step = 2.0
        runs: list[tuple[str, float, float]] = []  # (cell, entered at, left at)
        s = 0.0
        while s <= edge.length_m:
            lat, lon, _ = edge.position_at(s)
            cell = h3.latlng_to_cell(lat, lon, self.CELL_RESOLUTION)
            if runs and runs[-1][0] == cell:
                runs[-1] = (cell, runs[-1][1], s)
            else:
                runs.append((cell, s, s))
            s += step
        cells = [cell for cell, _, _ in runs]
        found: list[tuple[float, float]] = []
        for cell, entered, left in runs[1:-1]:
            if cells.count(cell) > 1:
                continue  # a road leaving a cell and coming back: two stretches of one cell
            end = left - self.EXIT_MARGIN_M
            start = max(entered + self.BRAKING_ROOM_M, end - self.SECTION_MAX_M)
            if (
                end - start >= self.SECTION_MIN_M
                and start - self.APPROACH_M >= self.JOIN_MIN_M
                and left + self.AFTER_M <= edge.length_m
                and _one_quadrant(edge, start - self.APPROACH_M, left + self.AFTER_M)
            ):
                found.append((start, end))
        found.sort(key=lambda section: (section[0] - section[1], section[0]))
        return found

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Close the stretch, feed the platoon, note who is near, lift the closure."""
        edge = self.edge
        self._now_ms = sim.now_ms
        if edge is None or self.site is None:
            return []
        start_ms = sim.start_ms + round(self.at_s * 1000)
        end_ms = start_ms + round(self.DURATION_S * 1000)
        first, last = self.section
        if self.imposed_ms is None and sim.now_ms >= start_ms:
            self.imposed_ms = sim.now_ms
            self._next_feed_ms = sim.now_ms
            sim.traffic.set_slow_section(edge.id, first, last, self.LIMIT_KMH)
        if self.imposed_ms is None:
            return []
        if self.lifted_ms is None and sim.now_ms >= end_ms:
            self.lifted_ms = sim.now_ms
            sim.traffic.set_slow_section(edge.id, first, last, None)
        if self.lifted_ms is None and sim.now_ms >= self._next_feed_ms:
            self._next_feed_ms += round(self.FEED_EVERY_S * 1000)
            self._feed(sim, edge)
        clear_ms = round(self.CLEAR_AFTER_S * 1000)
        if self.lifted_ms is None or sim.now_ms <= self.lifted_ms + clear_ms:
            limited = self.lifted_ms is None
            site_lat, site_lon = self.site
            for vehicle in sim.traffic.vehicles:
                if limited and vehicle.edge.id == edge.id and first <= vehicle.offset_m < last:
                    self._in_section.add(vehicle.id)
                lat, lon, _ = vehicle.position()
                if haversine_m(site_lat, site_lon, lat, lon) <= self.NEAR_M:
                    self._near.add(vehicle.id)
        return []

    def _feed(self, sim: CitySimulation, edge: Edge) -> None:
        join = self.join_m
        watch_from = self.section[0] - self.QUEUE_WATCH_M[0]
        watch_to = self.section[0] - self.QUEUE_WATCH_M[1]
        for vehicle in sim.traffic.vehicles:
            if vehicle.edge.id != edge.id:
                continue
            offset = vehicle.offset_m
            if join - self.JOIN_CLEAR_BEHIND_M <= offset <= join + self.JOIN_CLEAR_AHEAD_M:
                return  # no room to join: wait for the next slot
            if watch_from <= offset <= watch_to and vehicle.speed_mps < self.QUEUE_SPEED_MPS:
                return  # a queue stands before the closure: let it drain
        onward: list[Edge] = []
        for next_edge in sim.route_from(edge.to_node):
            onward.append(next_edge)
            if sum(e.length_m for e in onward) >= self.ONWARD_M:
                break
        station = f"jam{self.number}-{len(self.platoon):03d}"
        speed = edge.speed_limit_kmh / 3.6 * CRUISE_FACTOR_RANGE[1]
        vehicle = sim.add_vehicle(
            VehicleKind.CAR, [edge, *onward], offset_m=join, speed_mps=speed, vehicle_id=station
        )
        vehicle.finishing = True  # it leaves the network at the end of its short trip
        self.platoon.append(station)

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return one jam once the closure held three vehicles, cleared once it flowed again."""
        if len(self._in_section) < 3 or self.imposed_ms is None or self.site is None:
            return []
        cleared = self.lifted_ms is not None and self._now_ms >= self.lifted_ms + round(
            self.CLEAR_AFTER_S * 1000
        )
        lat, lon = self.site
        return [
            {
                "type": "traffic_jam",
                "status": "cleared" if cleared else "active",
                "station_ids": sorted(self._near | set(self.platoon)),
                "zone_id": None,
                "exact_stations": False,
                # Where and when it starts, to tell it from congestion elsewhere in the city.
                "started_between_ms": [
                    self.imposed_ms,
                    self.imposed_ms + round(self.DURATION_S * 1000),
                ],
                "near": {"lat": lat, "lon": lon, "radius_m": self.SITE_RADIUS_M},
            }
        ]

    def stations(self) -> set[str]:
        """Return the platoon and every vehicle that drove the closure while it lasted."""
        return set(self.platoon) | self._in_section


def _one_quadrant(edge: Edge, from_m: float, to_m: float) -> bool:
    """Tell whether the edge between two offsets heads well inside one jam-detector quadrant."""
    # A queue straddling two quadrants is two jams to the detector (docs/contract/detection.md §5:
    # split by direction).
    headings = [
        heading
        for heading, begin, end in zip(
            edge.segment_headings_deg, edge.cumulative_m, edge.cumulative_m[1:], strict=False
        )
        if end > from_m and begin < to_m
    ]
    quadrants = {int((heading + 45.0) % 360.0 // 90.0) for heading in headings}
    return len(quadrants) == 1 and all(
        QUADRANT_MARGIN_DEG <= (heading + 45.0) % 90.0 <= 90.0 - QUADRANT_MARGIN_DEG
        for heading in headings
    )


# Quadrants are N [315°, 45°), E [45°, 135°)…; headings this close to a border are avoided.
QUADRANT_MARGIN_DEG = 12.0


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


class Demand(Scenario):
    """Commuters keep joining the network, ever more of them until a peak, then as many."""

    name = "demand"
    # Commuters join this far from anybody on their first road, so nobody has to brake hard.
    CLEAR_M = 100.0

    def __init__(
        self, peak_factor: float = 3.0, ramp_s: float = 600.0, trip_s: float = 300.0
    ) -> None:
        # The peak rate: `peak_factor` times the initial vehicles joining per trip of `trip_s`.
        self.peak_factor = peak_factor
        self.ramp_s = ramp_s
        self.trip_s = trip_s
        self.joined = 0
        self._peak_per_s = 0.0
        self._owed = 0.0
        self._last_ms: int | None = None

    def bind(self, sim: CitySimulation) -> None:
        """Size the peak on the city's initial traffic."""
        self._peak_per_s = self.peak_factor * max(len(sim.traffic), 10) / self.trip_s

    def rate_per_s(self, elapsed_s: float) -> float:
        """Return how many commuters join per second, `elapsed_s` into the scenario."""
        return self._peak_per_s * min(1.0, max(0.0, elapsed_s) / self.ramp_s)

    def step(self, sim: CitySimulation) -> list[Publication]:
        """Let the commuters due by now join."""
        last = sim.start_ms if self._last_ms is None else self._last_ms
        self._last_ms = sim.now_ms
        elapsed_s = (sim.now_ms - sim.start_ms) / 1000.0
        self._owed += self.rate_per_s(elapsed_s) * (sim.now_ms - last) / 1000.0
        if self._owed < 1.0:
            return []
        kinds = [kind for kind, _ in KIND_WEIGHTS]
        weights = [weight for _, weight in KIND_WEIGHTS]
        occupied: dict[Hashable, list[float]] = {}
        for vehicle in sim.traffic.vehicles:
            occupied.setdefault(vehicle.edge.id, []).append(vehicle.offset_m)
        while self._owed >= 1.0:
            self._owed -= 1.0
            kind = sim.rng.choices(kinds, weights)[0]
            route = sim.network.random_route(sim.rng, ROUTE_MIN_LENGTH_M)
            offset = sim.rng.uniform(0.0, route[0].length_m)
            taken = occupied.setdefault(route[0].id, [])
            if any(abs(other - offset) < self.CLEAR_M for other in taken):
                continue  # that road is busy there: this commuter stays home
            taken.append(offset)
            speed = route[0].speed_limit_kmh / 3.6 * sim.rng.uniform(*CRUISE_FACTOR_RANGE)
            vehicle = sim.add_vehicle(kind, route, offset_m=offset, speed_mps=speed)
            vehicle.finishing = True  # it parks at the end of its trip
            self.joined += 1
        return []


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

    def observe(self, publications: list[Publication]) -> None:
        """Show every part the CAMs just published."""
        for part in self.parts:
            part.observe(publications)

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return every part's ground truth."""
        return [event for part in self.parts for event in part.ground_truth()]

    def stations(self) -> set[str]:
        """Return every part's stations."""
        return set().union(*(part.stations() for part in self.parts))


# The demo stages an accident this often, starting shortly after the start.
DEMO_ACCIDENT_EVERY_S = 180.0
DEMO_ACCIDENTS = 20


# The demo sends a named vehicle through the zones this often, for as long as it runs.
DEMO_ZONE_TOUR_EVERY_S = 45.0
DEMO_ZONE_TOURS = 10_000


def _parts(scenario: Scenario) -> list[Scenario]:
    """Return the scenarios staged together with (and including) `scenario`."""
    return list(scenario.parts) if isinstance(scenario, Composite) else [scenario]


def demo() -> Scenario:
    """Return mixed traffic with an accident every few minutes, a jam, and zone crossings."""
    parts: list[Scenario] = [
        Jam(at_s=60.0),
        ZoneTours(count=DEMO_ZONE_TOURS, at_s=10.0, every_s=DEMO_ZONE_TOUR_EVERY_S),
    ]
    parts += [
        Accident(at_s=20.0 + i * DEMO_ACCIDENT_EVERY_S, number=i) for i in range(DEMO_ACCIDENTS)
    ]
    return Composite("demo", parts)


def rush_hour() -> Scenario:
    """Return demand ramping up to a peak, two lane closures and an accident at its height."""
    return Composite(
        "rush-hour",
        [
            Demand(),
            Jam(at_s=120.0, number=0),
            Jam(at_s=180.0, number=1),
            Accident(at_s=240.0, number=0),
        ],
    )


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "traffic": Scenario,
    "accident": Accident,
    "jam": Jam,
    "zones": ZoneTours,
    "rush-hour": rush_hour,
    "demo": demo,
}
