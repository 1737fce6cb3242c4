"""The MQTT adapter against a real Mosquitto with the RoadWatch ACL (docs/contract/mqtt.md §8)."""

from __future__ import annotations

import logging
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from roadwatch.adapters.accounts import RegistryError
from roadwatch.adapters.mqtt import (
    BlockingPublisher,
    MqttAuthError,
    MqttEndpoint,
    MqttError,
    MqttPublishRefused,
)
from roadwatch.domain.accounts import AccountKind
from roadwatch.runner.accounts import AccountManager
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
def accounts(test_settings: Settings, mosquitto: Mosquitto) -> AccountManager:
    """`roadwatch accounts` on the test broker."""
    return AccountManager(test_settings)


def provisioned(accounts: AccountManager, kind: AccountKind, prefix: str) -> tuple[str, str]:
    made = accounts.add(kind, f"{prefix}-{secrets.token_hex(3)}")
    return made.account.name, made.password


@pytest.fixture
def vehicle(accounts: AccountManager) -> tuple[str, str]:
    """A freshly provisioned vehicle account: (station id, password)."""
    return provisioned(accounts, AccountKind.VEHICLE, "car")


def test_a_new_account_logs_in_and_its_password_is_on_no_command_line_log_or_open_file(
    test_settings: Settings,
    mosquitto: Mosquitto,
    accounts: AccountManager,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    commands: list[list[str]] = []
    real_popen = subprocess.Popen

    def recorded(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        commands.append([str(part) for part in argv])
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recorded)
    caplog.set_level(logging.DEBUG)
    station, password = provisioned(accounts, AccountKind.VEHICLE, "car")
    monkeypatch.undo()
    assert not any(password in part for argv in commands for part in argv)
    assert password not in caplog.text
    publisher = BlockingPublisher(endpoint(test_settings, station, password))
    publisher.start(timeout_s=5)
    publisher.stop()
    # Hashes only, yet for the broker alone: no other local user reads them.
    for hashes in (accounts.registry.passwd_file, mosquitto.passwd_file):
        assert hashes.stat().st_mode & 0o777 == 0o600
        assert password not in hashes.read_text()
    assert password not in accounts.registry.registry_file.read_text()


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


@pytest.mark.parametrize(("kind", "subscription"), [("vehicle", "vehicles/#"), ("phone", "#")])
def test_no_account_reads_others_topics(
    test_settings: Settings, accounts: AccountManager, kind: str, subscription: str
) -> None:
    user, password = provisioned(accounts, AccountKind(kind), kind)
    with Inbox(endpoint(test_settings, user, password), ((subscription, 0),)) as spy:
        fleet = BlockingPublisher(fleet_endpoint(test_settings))
        fleet.start()
        try:
            delivery = fleet.publish("vehicles/other/cam", b"private", qos=1)
            assert delivery is not None
            delivery.wait(5)
            assert spy.quiet(1.0) == []
        finally:
            fleet.stop()


def publish_outcomes(
    settings: Settings, user: str, password: str, topics: list[str]
) -> dict[str, str]:
    """Publish once at QoS 1 on each topic; return each topic's outcome: ok or refused."""
    client = BlockingPublisher(endpoint(settings, user, password))
    client.start(timeout_s=5)
    outcomes: dict[str, str] = {}
    try:
        for topic in topics:
            delivery = client.publish(topic, b"{}", qos=1)
            assert delivery is not None
            try:
                delivery.wait(5)
                outcomes[topic] = "ok"
            except MqttPublishRefused:
                outcomes[topic] = "refused"
    finally:
        client.stop()
    return outcomes


def test_each_kind_publishes_only_its_own_tree(
    test_settings: Settings, accounts: AccountManager
) -> None:
    everything = (
        (topic, 1) for topic in ("vehicles/#", "owntracks/#", f"{test_settings.its_prefix}/#")
    )
    with Inbox(gateway_endpoint(test_settings), tuple(everything)) as gateway_inbox:
        each_kind_publishes_only_its_own_tree(test_settings, gateway_inbox, accounts)


def each_kind_publishes_only_its_own_tree(
    test_settings: Settings, gateway_inbox: Inbox, accounts: AccountManager
) -> None:
    car, car_password = provisioned(accounts, AccountKind.VEHICLE, "car")
    user, phone_password = provisioned(accounts, AccountKind.PHONE, "ot")
    its, its_password = provisioned(accounts, AccountKind.ITS, "its")
    prefix = test_settings.its_prefix
    assert publish_outcomes(
        test_settings,
        car,
        car_password,
        [f"vehicles/{car}/denm", f"owntracks/{car}/phone", f"{prefix}/inQueue/v2x/denm/{car}/1"],
    ) == {
        f"vehicles/{car}/denm": "ok",
        f"owntracks/{car}/phone": "refused",
        f"{prefix}/inQueue/v2x/denm/{car}/1": "refused",
    }
    # Once, an OwnTracks account raised an accident alone with a DENM under vehicles/ot-x/.
    assert publish_outcomes(
        test_settings,
        user,
        phone_password,
        [f"owntracks/{user}/phone", f"vehicles/{user}/denm", f"vehicles/{user}/cam"],
    ) == {
        f"owntracks/{user}/phone": "ok",
        f"vehicles/{user}/denm": "refused",
        f"vehicles/{user}/cam": "refused",
    }
    assert publish_outcomes(
        test_settings,
        its,
        its_password,
        [
            f"{prefix}/inQueue/v2x/cam/{its}/1/2",
            f"{prefix}/outQueue/v2x/denm/x",
            f"vehicles/{its}/cam",
        ],
    ) == {
        f"{prefix}/inQueue/v2x/cam/{its}/1/2": "ok",
        f"{prefix}/outQueue/v2x/denm/x": "refused",
        f"vehicles/{its}/cam": "refused",
    }
    received = {topic for topic, _payload, _qos in gateway_inbox.quiet(0.5)}
    assert f"vehicles/{car}/denm" in received
    assert f"owntracks/{user}/phone" in received
    assert (
        not {f"vehicles/{user}/denm", f"vehicles/{user}/cam", f"owntracks/{car}/phone"} & received
    )


def test_a_removed_account_is_refused_and_a_rotated_password_replaces_the_old(
    test_settings: Settings, accounts: AccountManager, vehicle: tuple[str, str]
) -> None:
    station, old_password = vehicle
    live = BlockingPublisher(endpoint(test_settings, station, old_password))
    live.start(timeout_s=5)
    new_password = accounts.rotate(station).password
    # The session opened with the old password ends too, not only new logins.
    wait_until(lambda: not live.is_connected(), 3)
    live.stop()
    with pytest.raises(MqttAuthError):
        BlockingPublisher(endpoint(test_settings, station, old_password)).start(timeout_s=5)
    live = BlockingPublisher(endpoint(test_settings, station, new_password))
    live.start(timeout_s=5)
    accounts.remove(station)
    wait_until(lambda: not live.is_connected(), 3)
    live.stop()
    with pytest.raises(MqttAuthError):
        BlockingPublisher(endpoint(test_settings, station, new_password)).start(timeout_s=5)
    assert station not in {account.name for account in accounts.accounts()}


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_name_is_one_account_and_service_names_are_reserved(
    test_settings: Settings, accounts: AccountManager, vehicle: tuple[str, str]
) -> None:
    station, _password = vehicle
    with pytest.raises(RegistryError, match="already exists"):
        accounts.add(AccountKind.PHONE, station)
    for reserved in (test_settings.mqtt_fleet_user, test_settings.mqtt_gateway_user, "collector"):
        with pytest.raises(RegistryError, match="reserved"):
            accounts.add(AccountKind.VEHICLE, reserved)
