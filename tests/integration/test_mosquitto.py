"""The MQTT adapter against a real Mosquitto with the RoadWatch ACL (SPEC §2 security)."""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Iterator

import pytest

from roadwatch.adapters.mqtt import (
    MqttAuthError,
    MqttEndpoint,
    MqttPublisher,
    MqttSubscriber,
)
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

Received = queue.Queue[tuple[str, bytes]]


def endpoint(settings: Settings, user: str, password: str, client_id: str = "") -> MqttEndpoint:
    return MqttEndpoint(settings.mqtt_host, settings.mqtt_port, user, password, client_id)


@pytest.fixture
def gateway_inbox(test_settings: Settings, mosquitto: Mosquitto) -> Iterator[Received]:
    """Messages received by a subscriber logged in with the gateway account."""
    inbox: Received = queue.Queue()
    subscriber = MqttSubscriber(
        endpoint(
            test_settings,
            test_settings.mqtt_gateway_user,
            test_settings.mqtt_gateway_password.get_secret_value(),
        ),
        handler=lambda topic, payload: inbox.put((topic, payload)),
    )
    subscriber.start()
    yield inbox
    subscriber.stop()


@pytest.fixture
def vehicle(test_settings: Settings, mosquitto: Mosquitto) -> tuple[str, str]:
    """A freshly provisioned vehicle account: (station id, password)."""
    station = f"car-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    mosquitto.set_password(station, password)
    mosquitto.reload()
    time.sleep(0.3)  # SIGHUP is asynchronous
    return station, password


def drain(inbox: Received, wait_s: float = 1.0) -> list[tuple[str, bytes]]:
    deadline = time.monotonic() + wait_s
    got: list[tuple[str, bytes]] = []
    while time.monotonic() < deadline:
        try:
            got.append(inbox.get(timeout=0.05))
        except queue.Empty:
            continue
    return got


def test_anonymous_client_is_refused(test_settings: Settings, mosquitto: Mosquitto) -> None:
    with pytest.raises(MqttAuthError):
        MqttPublisher(endpoint(test_settings, "", "")).start(timeout_s=5)


def test_wrong_password_is_refused(test_settings: Settings, mosquitto: Mosquitto) -> None:
    with pytest.raises(MqttAuthError):
        MqttPublisher(endpoint(test_settings, test_settings.mqtt_fleet_user, "nope")).start(5)


def test_fleet_account_publishes_for_any_vehicle(
    test_settings: Settings, gateway_inbox: Received
) -> None:
    fleet = MqttPublisher(
        endpoint(
            test_settings,
            test_settings.mqtt_fleet_user,
            test_settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    fleet.start()
    try:
        fleet.publish("vehicles/a1/cam", b"cam-a1").wait_for_publish(5)
        fleet.publish("vehicles/b2/denm", b"denm-b2", qos=1).wait_for_publish(5)
    finally:
        fleet.stop()
    topics = {topic for topic, _ in drain(gateway_inbox)}
    assert topics == {"vehicles/a1/cam", "vehicles/b2/denm"}


def test_vehicle_publishes_only_as_itself(
    test_settings: Settings, gateway_inbox: Received, vehicle: tuple[str, str]
) -> None:
    station, password = vehicle
    car = MqttPublisher(endpoint(test_settings, station, password))
    car.start()
    try:
        car.publish(f"vehicles/{station}/cam", b"mine", qos=1).wait_for_publish(5)
        car.publish("vehicles/someone-else/cam", b"forged", qos=1).wait_for_publish(5)
    finally:
        car.stop()
    received = drain(gateway_inbox)
    assert (f"vehicles/{station}/cam", b"mine") in received
    assert all(topic != "vehicles/someone-else/cam" for topic, _ in received)


def test_vehicle_cannot_read_other_vehicles(
    test_settings: Settings, vehicle: tuple[str, str]
) -> None:
    station, password = vehicle
    spy_inbox: Received = queue.Queue()
    spy = MqttSubscriber(
        endpoint(test_settings, station, password),
        handler=lambda topic, payload: spy_inbox.put((topic, payload)),
        subscriptions=(("vehicles/#", 0),),
    )
    spy.start()
    fleet = MqttPublisher(
        endpoint(
            test_settings,
            test_settings.mqtt_fleet_user,
            test_settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    fleet.start()
    try:
        time.sleep(0.2)
        fleet.publish("vehicles/other/cam", b"private", qos=1).wait_for_publish(5)
        assert drain(spy_inbox, 1.0) == []
    finally:
        fleet.stop()
        spy.stop()
