"""Scenarios staged together: the demo the system runs by default, and the rush hour."""

from __future__ import annotations

from roadwatch.simulation.scenarios.accident import Accident
from roadwatch.simulation.scenarios.base import Composite, Scenario
from roadwatch.simulation.scenarios.demand import Demand
from roadwatch.simulation.scenarios.jam import Jam
from roadwatch.simulation.scenarios.zones import ZoneTours

# The demo stages an accident this often, starting shortly after the start.
DEMO_ACCIDENT_EVERY_S = 180.0
DEMO_ACCIDENTS = 20


# The demo sends a named vehicle through the zones this often, for as long as it runs.
DEMO_ZONE_TOUR_EVERY_S = 45.0
DEMO_ZONE_TOURS = 10_000


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
