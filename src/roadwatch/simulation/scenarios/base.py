"""What every scenario is: something staged in the city at set times, and its ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roadwatch.simulation.cam import Publication

if TYPE_CHECKING:
    from roadwatch.simulation.city import CitySimulation


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


def parts(scenario: Scenario) -> list[Scenario]:
    """Return the scenarios staged together with (and including) `scenario`."""
    return list(scenario.parts) if isinstance(scenario, Composite) else [scenario]
