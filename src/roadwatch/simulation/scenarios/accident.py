"""The accident scenario: a crash, its witnesses' and an ambulance's reports, its clearance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roadwatch.domain.geo import destination, haversine_m
from roadwatch.simulation.cam import Publication
from roadwatch.simulation.scenarios.base import Scenario, parts
from roadwatch.simulation.scenarios.jam import Jam
from roadwatch.simulation.vehicles import Vehicle, VehicleKind

if TYPE_CHECKING:
    from roadwatch.simulation.city import CitySimulation

# ETSI TS 102 894-2 "accident", and the station types trusted alone with it
# (docs/contract/detection.md §4).
ACCIDENT_CAUSE = 2
EMERGENCY_STATION_TYPE = 10
ROAD_OPERATOR_STATION_TYPE = 15
# Vehicles that witness a crash: ordinary traffic, so that two of them are needed
# (docs/contract/detection.md §4).
_WITNESS_KINDS = (VehicleKind.CAR, VehicleKind.BUS, VehicleKind.TRUCK)


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
        sites = [p.site for p in parts(sim.scenario) if isinstance(p, Jam) and p.site]
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
