"""The fault suite's trace and its fault-free reference run (`make test-faults`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from roadwatch.simulation.city import CitySimulation
from roadwatch.simulation.geofence import load_zone_shapes
from roadwatch.simulation.network import REIMS_NETWORK_PATH, load_network
from roadwatch.simulation.scenarios import Accident, Composite, ZoneTours, rush_hour
from tests.faults.harness import FaultRun, Outcome

ZONES = Path(__file__).resolve().parents[2] / "deploy" / "zones" / "reims.geojson"
START_MS = 1_780_000_000_000
# A rush hour on the city network: 310,000 messages, 3,700 to 8,700 a second once replayed at
# SPEEDUP, so a gateway restart leaves several thousand messages queued for it.
VEHICLES = 160
TRACE_S = 600
SEED = 7
SPEEDUP = 12.0
# Accidents (two reporters each, then a cancellation) and zone tours throughout the trace, so
# that a fault at any point finds DENMs and zone crossings on their way.
ACCIDENT_EVERY_S = 45.0
TOUR_EVERY_S = 20.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault-free reference first, then the faults."""
    items.sort(key=lambda item: "fault_free" not in item.name)


REPORT = Path(
    os.environ.get(
        "ROADWATCH_FAULT_REPORT",
        Path(__file__).resolve().parents[2] / "test-artifacts" / "faults.txt",
    )
)


class Report:
    """The suite's figures, one paragraph per run, written to test-artifacts/faults.txt."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"RoadWatch fault suite, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())},"
            f" load average {os.getloadavg()[0]:.2f} at the start\n"
        )

    def add(self, text: str) -> None:
        with self.path.open("a") as out:
            out.write(text.rstrip() + "\n")


@pytest.fixture(scope="session")
def report() -> Report:
    return Report(REPORT)


@pytest.fixture(scope="session")
def speedup() -> float:
    return SPEEDUP


@pytest.fixture(scope="session")
def trace() -> Iterator[Path]:
    """The trace every run replays, simulated once (seeded: the same on every machine)."""
    folder = Path(tempfile.mkdtemp(prefix="rw-fault-trace-"))
    scenario = Composite(
        "faults",
        [
            *rush_hour().parts,  # type: ignore[attr-defined]
            *(
                Accident(at_s=60.0 + i * ACCIDENT_EVERY_S, number=10 + i)
                for i in range(int((TRACE_S - 90) // ACCIDENT_EVERY_S))
            ),
            ZoneTours(count=int(TRACE_S // TOUR_EVERY_S), at_s=5.0, every_s=TOUR_EVERY_S),
        ],
    )
    simulation = CitySimulation(
        load_network(REIMS_NETWORK_PATH),
        VEHICLES,
        SEED,
        START_MS,
        scenario,
        zones=load_zone_shapes(ZONES),
    )
    path = folder / "faults.jsonl"
    with path.open("wb") as out:
        for _ in range(TRACE_S):
            for topic, payload, qos in simulation.tick(1.0):
                out.write(orjson.dumps({"topic": topic, "qos": qos, "payload": payload}) + b"\n")
    yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def offset_ms() -> int:
    """One time shift for every run: the trace ends an hour before the suite started."""
    return round(time.time() * 1000) - 3_600_000 - (START_MS + TRACE_S * 1000)


@pytest.fixture(scope="session")
def reference(trace: Path, offset_ms: int) -> Outcome:
    """The trace replayed into a system that suffers nothing."""
    run = FaultRun("fault-free")
    try:
        run.up()
        return run.run(trace, offset_ms, SPEEDUP, None, 0.0)
    finally:
        run.down()
