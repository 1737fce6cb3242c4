"""The simulator against a real Mosquitto with the RoadWatch ACL: fleet and per-vehicle modes."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from roadwatch.adapters.mqtt import MqttEndpoint, MqttSubscriber
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.services.simulator import (
    DemoSimulation,
    FleetSink,
    Sink,
    Summary,
    VehicleSink,
    mosquitto_provisioner,
    run,
    station_of,
)
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

Received = queue.Queue[tuple[str, bytes]]
START_MS = 1_790_000_000_000


@pytest.fixture
def gateway_inbox(test_settings: Settings, mosquitto: Mosquitto) -> Iterator[Received]:
    """Messages received by a subscriber logged in with the gateway account."""
    inbox: Received = queue.Queue()
    subscriber = MqttSubscriber(
        MqttEndpoint(
            test_settings.mqtt_host,
            test_settings.mqtt_port,
            test_settings.mqtt_gateway_user,
            test_settings.mqtt_gateway_password.get_secret_value(),
        ),
        handler=lambda topic, payload: inbox.put((topic, payload)),
    )
    subscriber.start()
    yield inbox
    subscriber.stop()


def drain(inbox: Received, expected: int, wait_s: float = 5.0) -> list[tuple[str, bytes]]:
    """Collect messages until `expected` arrived, then a little longer to catch extras."""
    deadline = time.monotonic() + wait_s
    got: list[tuple[str, bytes]] = []
    while time.monotonic() < deadline:
        try:
            got.append(inbox.get(timeout=0.05))
        except queue.Empty:
            continue
        if len(got) >= expected:
            deadline = min(deadline, time.monotonic() + 0.5)
    return got


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
    test_settings: Settings, gateway_inbox: Received
) -> None:
    sink = FleetSink(test_settings, 3, secrets.token_hex(3))
    sink.start()
    try:
        summary = simulate(sink, vehicles=12, seconds=3)
    finally:
        sink.close()
    received = drain(gateway_inbox, summary.messages)
    assert len(received) == summary.messages
    assert {station_of(topic) for topic, _ in received} == {f"demo-{i:04d}" for i in range(12)}


def test_vehicle_mode_connects_each_vehicle_as_itself(
    test_settings: Settings, gateway_inbox: Received
) -> None:
    sink = VehicleSink(test_settings, mosquitto_provisioner(test_settings))
    try:
        summary = simulate(sink, vehicles=4, seconds=2, prepare=sink.prepare)
        assert set(sink.publishers) == {f"demo-{i:04d}" for i in range(4)}
        received = drain(gateway_inbox, summary.messages)
        assert len(received) == summary.messages
        # A vehicle publishing for another station is refused by the ACL: nothing arrives.
        forger = sink.publishers["demo-0000"]
        forger.publish("vehicles/demo-0001/cam", b"forged", 1).wait_for_publish(5)
        forger.publish("vehicles/someone-else/denm", b"forged", 1).wait_for_publish(5)
        assert drain(gateway_inbox, 1, wait_s=1.0) == []
    finally:
        sink.close()
