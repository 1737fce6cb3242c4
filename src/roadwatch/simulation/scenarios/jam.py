"""The jam scenario: a lane closure on a fast road, fed by a platoon, that the detector sees as
exactly one jam."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h3

from roadwatch.domain.geo import haversine_m
from roadwatch.simulation.cam import Publication
from roadwatch.simulation.city import CRUISE_FACTOR_RANGE
from roadwatch.simulation.network import Edge
from roadwatch.simulation.scenarios.base import Scenario, parts
from roadwatch.simulation.vehicles import VehicleKind

if TYPE_CHECKING:
    from roadwatch.simulation.city import CitySimulation


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
            for part in parts(sim.scenario)
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
