"""The ground-truth scenarios through the pure detector: the expected events, nothing else."""

from __future__ import annotations

import orjson
import pytest

from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import Event
from roadwatch.domain.messages import parse_message
from roadwatch.domain.zones import zones_from_geojson
from roadwatch.runner.templates import deploy_dir
from tests.scenarios.truth import NAMES, expected_events, final_versions, mismatches, trace_lines


def run_trace(name: str) -> list[Event]:
    zones = zones_from_geojson(
        orjson.loads((deploy_dir() / "zones" / "reims.geojson").read_bytes())
    )
    detector = Detector(DetectionRules(), zones)
    events: list[Event] = []
    lines = trace_lines(name)
    now_ms = lines[-1]["payload"]["timestamp"]
    for line in lines:
        message = parse_message(line["topic"], orjson.dumps(line["payload"]), now_ms)
        events += detector.process(message)
    return events


@pytest.mark.parametrize("name", NAMES)
def test_scenario_yields_exactly_its_ground_truth(name: str) -> None:
    assert mismatches(expected_events(name), final_versions(run_trace(name))) == []


@pytest.mark.parametrize("name", NAMES)
def test_scenario_never_emits_an_id_twice_as_new(name: str) -> None:
    firsts = [event.id for event in run_trace(name) if event.version == 1]
    assert len(firsts) == len(set(firsts))
