"""The gateway's lean MQTT 5 intake against a real Mosquitto with the RoadWatch accounts."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from roadwatch.adapters.mqtt import MqttAuthError, MqttEndpoint, MqttPublisher, MqttSubscriber
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

Received = queue.Queue[tuple[str, bytes]]

# A gateway stand-in in its own process: it takes the first message and never returns.
_STUCK_GATEWAY = """
import os, sys, threading
from roadwatch.adapters.mqtt import MqttEndpoint, MqttSubscriber

def handle(topic, payload):
    print("handling", topic, flush=True)
    threading.Event().wait()

endpoint = MqttEndpoint(sys.argv[1], int(sys.argv[2]), sys.argv[3], os.environ["MQTT_PASSWORD"],
                        sys.argv[4])
MqttSubscriber(endpoint, handle).start()
print("subscribed", flush=True)
threading.Event().wait()
"""


def gateway_endpoint(settings: Settings, client_id: str = "", password: str = "") -> MqttEndpoint:
    return MqttEndpoint(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_gateway_user,
        password or settings.mqtt_gateway_password.get_secret_value(),
        client_id,
    )


def collect(inbox: Received, expected: int, wait_s: float = 5.0) -> list[tuple[str, bytes]]:
    """Take messages until `expected` arrived (or the time is up)."""
    deadline = time.monotonic() + wait_s
    got: list[tuple[str, bytes]] = []
    while len(got) < expected and time.monotonic() < deadline:
        try:
            got.append(inbox.get(timeout=0.05))
        except queue.Empty:
            continue
    return got


def wait_for(condition: Callable[[], bool], wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def fleet(test_settings: Settings, mosquitto: Mosquitto) -> Iterator[MqttPublisher]:
    publisher = MqttPublisher(
        MqttEndpoint(
            test_settings.mqtt_host,
            test_settings.mqtt_port,
            test_settings.mqtt_fleet_user,
            test_settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    publisher.start()
    yield publisher
    publisher.stop()


@pytest.fixture
def client_id() -> str:
    """A fresh persistent-session identity."""
    return f"intake-{secrets.token_hex(4)}"


def test_receives_qos0_and_qos1_messages(
    test_settings: Settings, mosquitto: Mosquitto, fleet: MqttPublisher
) -> None:
    inbox: Received = queue.Queue()
    subscriber = MqttSubscriber(gateway_endpoint(test_settings), lambda t, p: inbox.put((t, p)))
    subscriber.start()
    try:
        fleet.publish("vehicles/a1/cam", b"cam-a1").wait_for_publish(5)
        fleet.publish("vehicles/b2/denm", b"denm-b2", qos=1).wait_for_publish(5)
        # A burst of DENMs: many packets per received chunk, more than one chunk.
        burst = [(f"vehicles/c{i}/denm", os.urandom(300)) for i in range(3000)]
        for topic, payload in burst:
            fleet.publish(topic, payload, qos=1)
        received = collect(inbox, 2 + len(burst))
    finally:
        subscriber.stop()
    assert received[:2] == [("vehicles/a1/cam", b"cam-a1"), ("vehicles/b2/denm", b"denm-b2")]
    assert received[2:] == burst
    assert subscriber.malformed == 0


def test_messages_sent_while_stopped_arrive_after_reconnecting(
    test_settings: Settings, mosquitto: Mosquitto, fleet: MqttPublisher, client_id: str
) -> None:
    inbox: Received = queue.Queue()
    endpoint = gateway_endpoint(test_settings, client_id)
    first = MqttSubscriber(endpoint, lambda t, p: inbox.put((t, p)))
    first.start()
    first.stop()
    fleet.publish("vehicles/d1/denm", b"while-away-1", qos=1).wait_for_publish(5)
    fleet.publish("vehicles/d2/denm", b"while-away-2", qos=1).wait_for_publish(5)
    fleet.publish("vehicles/d3/cam", b"cam-while-away").wait_for_publish(5)
    second = MqttSubscriber(endpoint, lambda t, p: inbox.put((t, p)))
    second.start()
    try:
        received = collect(inbox, 3)
    finally:
        second.stop()
    assert sorted(payload for _topic, payload in received) == [
        b"cam-while-away",
        b"while-away-1",
        b"while-away-2",
    ]


def test_qos1_message_being_handled_when_the_process_dies_is_redelivered(
    test_settings: Settings, mosquitto: Mosquitto, fleet: MqttPublisher, client_id: str
) -> None:
    stuck = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STUCK_GATEWAY,
            test_settings.mqtt_host,
            str(test_settings.mqtt_port),
            test_settings.mqtt_gateway_user,
            client_id,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MQTT_PASSWORD": test_settings.mqtt_gateway_password.get_secret_value()},
    )
    try:
        assert stuck.stdout is not None
        assert stuck.stdout.readline().strip() == "subscribed"
        fleet.publish("vehicles/e1/denm", b"accident-ahead", qos=1).wait_for_publish(5)
        assert stuck.stdout.readline().strip() == "handling vehicles/e1/denm"
    finally:
        stuck.send_signal(signal.SIGKILL)
        stuck.wait(5)
        if stuck.stdout is not None:
            stuck.stdout.close()
    inbox: Received = queue.Queue()
    restarted = MqttSubscriber(
        gateway_endpoint(test_settings, client_id), lambda t, p: inbox.put((t, p))
    )
    restarted.start()
    try:
        received = collect(inbox, 1)
    finally:
        restarted.stop()
    assert received == [("vehicles/e1/denm", b"accident-ahead")]


def test_wrong_password_is_fatal(test_settings: Settings, mosquitto: Mosquitto) -> None:
    subscriber = MqttSubscriber(
        gateway_endpoint(test_settings, password="not-the-password"), lambda t, p: None
    )
    with pytest.raises(MqttAuthError):
        subscriber.start(timeout_s=5)
    assert not subscriber.is_connected()


def test_broker_restart_reconnects_and_resubscribes(
    test_settings: Settings, mosquitto: Mosquitto, client_id: str
) -> None:
    inbox: Received = queue.Queue()
    subscriber = MqttSubscriber(
        gateway_endpoint(test_settings, client_id), lambda t, p: inbox.put((t, p))
    )
    subscriber.start()
    try:
        mosquitto.stop()
        assert wait_for(lambda: not subscriber.is_connected(), 5)
    finally:
        mosquitto.start()
    try:
        assert wait_for(lambda: subscriber.is_connected() and subscriber.reconnects == 1, 15)
        publisher = MqttPublisher(
            MqttEndpoint(
                test_settings.mqtt_host,
                test_settings.mqtt_port,
                test_settings.mqtt_fleet_user,
                test_settings.mqtt_fleet_password.get_secret_value(),
            )
        )
        publisher.start()
        try:
            # Publish until the renewed subscription takes effect (SUBACK may still be coming).
            received: list[tuple[str, bytes]] = []
            for _attempt in range(20):
                publisher.publish("vehicles/f1/denm", b"after-restart", qos=1).wait_for_publish(5)
                received = collect(inbox, 1, 0.5)
                if received:
                    break
        finally:
            publisher.stop()
    finally:
        subscriber.stop()
    assert received == [("vehicles/f1/denm", b"after-restart")]
