"""The demo simulator: deterministic for a seed, valid per docs/contract/mqtt.md §3, §4, stages
accidents."""

from __future__ import annotations

import orjson

from roadwatch.domain.messages import Cam, Denm, parse_message
from roadwatch.simulation.demo import ACCIDENT_EVERY_MS, DemoTraffic

START_MS = 1_780_000_000_000


def run(seed: int, seconds: int, vehicles: int = 10) -> list[tuple[str, bytes, int]]:
    traffic = DemoTraffic(vehicles, seed, START_MS)
    out = []
    for _ in range(seconds):
        out += [(topic, orjson.dumps(payload), qos) for topic, payload, qos in traffic.tick()]
    return out


def test_same_seed_gives_the_same_trace() -> None:
    assert run(7, 60) == run(7, 60)
    assert run(7, 60) != run(8, 60)


def test_every_publication_passes_the_gateway_validation() -> None:
    trace = run(3, ACCIDENT_EVERY_MS // 1000 + 130)
    parsed = [parse_message(topic, payload, START_MS + 10**9) for topic, payload, _ in trace]
    assert sum(isinstance(message, Cam) for message in parsed) >= 10 * 300
    denms = [message for message in parsed if isinstance(message, Denm)]
    # Two reporters per accident, then the operator's termination two minutes later.
    assert len([d for d in denms if d.termination is None]) >= 2
    assert any(d.termination is not None and d.station_type == 15 for d in denms)


def test_denms_are_published_with_qos_1() -> None:
    assert {qos for topic, _, qos in run(1, 200) if topic.endswith("/denm")} == {1}
