"""What the city simulation stages, each scenario in its own module, registered by name.

- `base`: `Scenario` (plain traffic, and what every scenario does) and `Composite`;
- `accident`: a crash reported by two witnesses and an ambulance, cleared by an operator;
- `jam`: a lane closure that the detector must see as exactly one jam;
- `zones`: named vehicles driven through the zones, every crossing known;
- `demand`: commuters joining faster and faster up to a peak;
- `mixes`: the demo and the rush hour, several of them staged together.

`SCENARIOS` maps the names the simulator's `--scenario` takes to their constructors.
"""

from __future__ import annotations

from collections.abc import Callable

from roadwatch.simulation.scenarios.accident import Accident
from roadwatch.simulation.scenarios.base import Composite, Scenario, parts
from roadwatch.simulation.scenarios.demand import Demand
from roadwatch.simulation.scenarios.jam import Jam
from roadwatch.simulation.scenarios.mixes import demo, rush_hour
from roadwatch.simulation.scenarios.zones import ZoneTours

SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "traffic": Scenario,
    "accident": Accident,
    "jam": Jam,
    "zones": ZoneTours,
    "rush-hour": rush_hour,
    "demo": demo,
}

__all__ = [
    "SCENARIOS",
    "Accident",
    "Composite",
    "Demand",
    "Jam",
    "Scenario",
    "ZoneTours",
    "demo",
    "parts",
    "rush_hour",
]
