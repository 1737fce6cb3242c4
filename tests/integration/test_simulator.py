"""The simulator against a real Mosquitto with the RoadWatch ACL: fleet and per-vehicle modes."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest

from roadwatch.adapters.mqtt import MqttPublishRefused
from roadwatch.runner.accounts import vehicle_provisioner
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.services.simulator import (
    DemoSimulation,
    FleetSink,
    Sink,
    Summary,
    VehicleSink,
    run,
    station_of,
)
from roadwatch.settings import Settings
from tests.integration.mqtt_inbox import Inbox, gateway_endpoint

pytestmark = pytest.mark.integration

START_MS = 1_790_000_000_000


@pytest.fixture
def gateway_inbox(test_settings: Settings, mosquitto: Mosquitto) -> Iterator[Inbox]:
    """Messages received by a subscriber logged in with the gateway account."""
    with Inbox(gateway_endpoint(test_settings)) as inbox:
        yield inbox


def drain(inbox: Inbox, expected: int) -> list[tuple[str, bytes, int]]:
    """Collect messages until `expected` arrived, then a little longer to catch extras."""
    inbox.wait_for(expected)
    return inbox.quiet(0.5)


def simulate(
    sink: Sink,
    vehicles: int,
    seconds: float,
    prepare: Callable[[Iterable[str]], None] | None = None,
) -> Summary:
    return run(
        DemoSimulation(vehicles, secrets.randbelow(1000), START_MS),
        sink,
        vehicles=vehicles,
        duration_s=seconds,
        pacer=None,
        stop=threading.Event(),
        prepare=prepare,
    )


def test_fleet_mode_delivers_every_vehicle_to_the_gateway(
    test_settings: Settings, gateway_inbox: Inbox
) -> None:
    sink = FleetSink(test_settings, 3, secrets.token_hex(3))
    sink.start()
    try:
        summary = simulate(sink, vehicles=12, seconds=3)
    finally:
        sink.close()
    received = drain(gateway_inbox, summary.messages)
    assert len(received) == summary.messages
    assert {station_of(topic) for topic, _, _ in received} == {f"demo-{i:04d}" for i in range(12)}


def test_vehicle_mode_connects_each_vehicle_as_itself(
    test_settings: Settings, gateway_inbox: Inbox
) -> None:
    sink = VehicleSink(test_settings, vehicle_provisioner(test_settings))
    try:
        summary = simulate(sink, vehicles=4, seconds=2, prepare=sink.prepare)
        assert set(sink.publishers) == {f"demo-{i:04d}" for i in range(4)}
        received = drain(gateway_inbox, summary.messages)
        assert len(received) == summary.messages
        # A vehicle publishing for another station is refused by the ACL: nothing arrives.
        forger = sink.publishers["demo-0000"]
        for topic in ("vehicles/demo-0001/cam", "vehicles/someone-else/denm"):
            forged = forger.publish(topic, b"forged", 1)
            assert forged is not None
            with pytest.raises(MqttPublishRefused):
                forged.wait(5)
        assert gateway_inbox.quiet(1.0)[len(received) :] == []
    finally:
        sink.close()
