"""Rising demand: commuters joining the city ever faster up to a peak, as in a rush hour."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from roadwatch.simulation.cam import Publication
from roadwatch.simulation.city import CRUISE_FACTOR_RANGE, KIND_WEIGHTS, ROUTE_MIN_LENGTH_M
from roadwatch.simulation.scenarios.base import Scenario

if TYPE_CHECKING:
    from roadwatch.simulation.city import CitySimulation


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
