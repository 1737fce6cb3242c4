"""Two gateway instances share the load: every scenario's events, none lost, none doubled.

Both instances take vehicle messages through one MQTT 5 shared subscription and pass each
message on to the instance owning it (domain/partition.py). The grid is chosen so that the
accident's first two reports, 70 m apart, lie on either side of a cell border owned by
different instances: only the halo lets one of them see both.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.domain.detector import Detector
from roadwatch.domain.messages import parse_message
from roadwatch.domain.partition import Partitioning
from roadwatch.runner.process import free_port
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.runner.templates import deploy_dir
from roadwatch.services.gateway.intake import forget_sessions
from roadwatch.services.replay import replay
from roadwatch.services.zone_sync import read_zones_file
from roadwatch.settings import Settings
from tests.e2e.conftest import RunningSystem
from tests.e2e.ground_truth import wait_for_ground_truth
from tests.e2e.test_ground_truth import put_zones_through_the_api
from tests.scenarios.truth import NAMES, expected_events, trace_lines

pytestmark = pytest.mark.e2e

SPEEDUP = 50.0
PREFIX = "gw2-"
PARTITIONS = 2
# The accident's first reports (49.2415, 4.062) and (49.242039, 4.0624128) straddle a border.
CELL_M = 1500.0
MARGIN_M = 600.0
_SAMPLE = re.compile(r"^roadwatch_gateway_(\w+)(?:\{([^}]*)\})? (\S+)$")


@dataclass
class Instance:
    settings: Settings
    service: PythonService


@pytest.fixture(scope="module")
def two_gateways(running_system: RunningSystem) -> Iterator[list[Instance]]:
    """Replace the single gateway with two instances; put it back afterwards."""
    single = running_system.services["gateway"]
    base = running_system.settings
    put_zones_through_the_api(base)
    single.stop()
    # Otherwise the broker would queue this test's messages for the stopped gateway.
    forget_sessions(base)
    instances: list[Instance] = []
    try:
        for k in range(PARTITIONS):
            settings = base.model_copy(
                update={
                    "gateway_partitions": PARTITIONS,
                    "gateway_instance": k,
                    "gateway_partition_cell_m": CELL_M,
                    "gateway_partition_margin_m": MARGIN_M,
                    "gateway_metrics_port": free_port(),
                }
            )
            name = settings.gateway_name
            service = PythonService(
                name, settings, single.layout, service_probe(settings, name), command="gateway"
            )
            instances.append(Instance(settings, service))
            service.start()
        yield instances
    finally:
        for instance in instances:
            instance.service.stop()
            # Offline members of a shared subscription would still get their share.
            forget_sessions(instance.settings)
        single.start()


def merged_trace(folder: Path) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """Write every scenario at once, in time order, with prefixed station ids."""
    lines: list[dict[str, Any]] = []
    for name in NAMES:
        for line in trace_lines(name):
            station = PREFIX + line["payload"]["stationId"]
            kind = line["topic"].rsplit("/", 1)[1]
            payload = {**line["payload"], "stationId": station}
            lines.append({**line, "topic": f"vehicles/{station}/{kind}", "payload": payload})
    lines.sort(key=lambda line: int(line["payload"]["timestamp"]))  # stable: trace order kept
    path = folder / "all-scenarios.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    expected = {
        name: [
            {**event, "station_ids": sorted(PREFIX + s for s in event["station_ids"])}
            for event in expected_events(name)
        ]
        for name in NAMES
    }
    return path, expected


def versions_of_one_gateway(path: Path) -> Counter[str]:
    """Count the event versions a single detector yields on the trace, per type."""
    detector = Detector(zones=read_zones_file(deploy_dir() / "zones" / "reims.geojson"))
    counts: Counter[str] = Counter()
    for raw in path.read_bytes().splitlines():
        line = orjson.loads(raw)
        message = parse_message(
            line["topic"], orjson.dumps(line["payload"]), line["payload"]["timestamp"]
        )
        for event in detector.process(message):
            counts[event.type.value] += 1
    return counts


def metrics(settings: Settings) -> dict[str, float]:
    """Read an instance's /metrics: `name` or `name{labels}` -> value."""
    url = f"http://127.0.0.1:{settings.gateway_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            samples[f"{name}{{{labels}}}" if labels else name] = float(value)
    return samples


def sent_per_type(samples: dict[str, float]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for key, value in samples.items():
        match = re.fullmatch(r'events_total\{status="\w+",type="(\w+)"\}', key)
        if match:
            counts[match.group(1)] += int(value)
    return counts


def test_two_gateways_share_the_load_without_losing_or_doubling_an_event(
    two_gateways: list[Instance], tmp_path: Path
) -> None:
    base = two_gateways[0].settings
    partitioning = Partitioning(PARTITIONS, CELL_M, MARGIN_M)
    assert partitioning.area_owner(49.2415, 4.062) != partitioning.area_owner(49.242039, 4.0624128)
    path, expected = merged_trace(tmp_path)
    before = [metrics(instance.settings) for instance in two_gateways]

    stats = replay(base, path, SPEEDUP)
    assert stats.published == sum(len(trace_lines(name)) for name in NAMES)

    for name in NAMES:
        stations = {
            PREFIX + station
            for station in {line["payload"]["stationId"] for line in trace_lines(name)}
        }
        wait_for_ground_truth(base, name, expected=expected[name], stations=stations)

    after = [metrics(instance.settings) for instance in two_gateways]
    sent = [sent_per_type(a) - sent_per_type(b) for a, b in zip(after, before, strict=True)]
    for k, (a, b) in enumerate(zip(after, before, strict=True)):
        # Each took its share of the vehicle messages and passed some on to the other.
        assert a["messages_received_total"] - b["messages_received_total"] > 100, k
        assert a["partition_forwarded_total"] > b["partition_forwarded_total"], k
        assert a["partition_received_total"] > b["partition_received_total"], k
        assert sum(sent[k].values()) > 0, f"instance {k} sent no event"
    # The accident near the border was seen by both; only its owner sent it.
    assert sum(a["partition_events_elsewhere_total"] for a in after) > sum(
        b["partition_events_elsewhere_total"] for b in before
    )
    # Nothing was sent twice: together they sent the versions one detector yields (jam
    # updates are paced by the clock, so their number may differ by timing; not compared).
    reference = versions_of_one_gateway(path)
    total = sent[0] + sent[1]
    for kind in ("accident", "hazard", "zone_enter", "zone_exit"):
        assert total[kind] == reference[kind], (kind, total, reference)
