"""The MQTT adapter against a real Mosquitto with the RoadWatch ACL (SPEC §2 security)."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from roadwatch.adapters.mqtt import (
    BlockingPublisher,
    MqttAuthError,
    MqttEndpoint,
    MqttError,
    MqttPublishRefused,
)
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.settings import Settings
from tests.integration.mqtt_inbox import Inbox, fleet_endpoint, gateway_endpoint

pytestmark = pytest.mark.integration


def endpoint(settings: Settings, user: str, password: str, client_id: str = "") -> MqttEndpoint:
    return MqttEndpoint(settings.mqtt_host, settings.mqtt_port, user, password, client_id)


@pytest.fixture
def gateway_inbox(test_settings: Settings, mosquitto: Mosquitto) -> Iterator[Inbox]:
    """Messages received by a subscriber logged in with the gateway account."""
    with Inbox(gateway_endpoint(test_settings)) as inbox:
        yield inbox


@pytest.fixture
def vehicle(test_settings: Settings, mosquitto: Mosquitto) -> tuple[str, str]:
    """A freshly provisioned vehicle account: (station id, password)."""
    station = f"car-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    mosquitto.set_password(station, password)
    mosquitto.reload()
    time.sleep(0.3)  # SIGHUP is asynchronous
    return station, password


def test_a_new_account_logs_in_and_its_password_was_on_no_command_line(
    test_settings: Settings, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []
    real_run = subprocess.run

    def recorded(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        commands.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recorded)
    station, password = f"car-{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    mosquitto.set_password(station, password)
    monkeypatch.undo()
    mosquitto.reload()
    time.sleep(0.3)  # SIGHUP is asynchronous
    assert any("mosquitto_passwd" in argv[0] for argv in commands)
    assert not any(password in part for argv in commands for part in argv)
    publisher = BlockingPublisher(endpoint(test_settings, station, password))
    publisher.start(timeout_s=5)  # the password reached the file through standard input
    publisher.stop()
    # Hashes only, yet for the broker alone: no other local user reads the file.
    assert mosquitto.passwd_file.stat().st_mode & 0o777 == 0o600
    assert password not in mosquitto.passwd_file.read_text()


def test_anonymous_client_is_refused(test_settings: Settings, mosquitto: Mosquitto) -> None:
    started = time.monotonic()
    with pytest.raises(MqttAuthError):
        BlockingPublisher(endpoint(test_settings, "", "")).start(timeout_s=5)
    assert time.monotonic() - started < 2  # at once: retrying cannot help


def test_wrong_password_is_refused(test_settings: Settings, mosquitto: Mosquitto) -> None:
    with pytest.raises(MqttAuthError):
        BlockingPublisher(endpoint(test_settings, test_settings.mqtt_fleet_user, "nope")).start(5)


def test_fleet_account_publishes_for_any_vehicle(
    test_settings: Settings, gateway_inbox: Inbox
) -> None:
    fleet = BlockingPublisher(fleet_endpoint(test_settings))
    fleet.start()
    try:
        fleet.publish("vehicles/a1/cam", b"cam-a1")
        denm = fleet.publish("vehicles/b2/denm", b"denm-b2", qos=1)
        assert denm is not None
        denm.wait(5)
        assert denm.done()
    finally:
        fleet.stop()
    received = gateway_inbox.wait_for(2)
    assert {(topic, payload) for topic, payload, _qos in received} == {
        ("vehicles/a1/cam", b"cam-a1"),
        ("vehicles/b2/denm", b"denm-b2"),
    }


def test_a_message_that_cannot_be_encoded_fails_alone(
    test_settings: Settings, gateway_inbox: Inbox
) -> None:
    fleet = BlockingPublisher(fleet_endpoint(test_settings))
    fleet.start()
    try:
        bad = fleet.publish("vehicles/\udc80/denm", b"lone surrogate", qos=1)
        good = fleet.publish("vehicles/c3/denm", b"fine", qos=1)
        assert bad is not None and good is not None
        with pytest.raises(MqttError, match="cannot publish"):
            bad.wait(5)
        good.wait(5)
        assert fleet.failed_publishes == 1
    finally:
        fleet.stop()
    assert gateway_inbox.wait_for(1) == [("vehicles/c3/denm", b"fine", 1)]


def test_vehicle_publishes_only_as_itself(
    test_settings: Settings, gateway_inbox: Inbox, vehicle: tuple[str, str]
) -> None:
    station, password = vehicle
    car = BlockingPublisher(endpoint(test_settings, station, password))
    car.start()
    try:
        mine = car.publish(f"vehicles/{station}/cam", b"mine", qos=1)
        forged = car.publish("vehicles/someone-else/cam", b"forged", qos=1)
        assert mine is not None and forged is not None
        mine.wait(5)
        with pytest.raises(MqttPublishRefused) as refused:
            forged.wait(5)
        assert refused.value.reason == 0x87  # not authorised
        assert car.stats.refused_publishes == 1
    finally:
        car.stop()
    received = gateway_inbox.quiet(0.5)
    assert (f"vehicles/{station}/cam", b"mine", 0) in received
    assert all(topic != "vehicles/someone-else/cam" for topic, _payload, _qos in received)


def test_vehicle_cannot_read_other_vehicles(
    test_settings: Settings, mosquitto: Mosquitto, vehicle: tuple[str, str]
) -> None:
    station, password = vehicle
    with Inbox(endpoint(test_settings, station, password), (("vehicles/#", 0),)) as spy:
        fleet = BlockingPublisher(fleet_endpoint(test_settings))
        fleet.start()
        try:
            delivery = fleet.publish("vehicles/other/cam", b"private", qos=1)
            assert delivery is not None
            delivery.wait(5)
            assert spy.quiet(1.0) == []
        finally:
            fleet.stop()
