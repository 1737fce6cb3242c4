"""RoadWatch's MQTT client against a real Mosquitto with the RoadWatch accounts and ACL."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from roadwatch.adapters.mqtt import (
    MqttAuthError,
    MqttClient,
    MqttEndpoint,
    MqttPublishRefused,
)
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

Inbox = list[tuple[str, bytes, int]]

# A gateway stand-in in its own process: it takes the first message and never finishes it.
_STUCK_SUBSCRIBER = """
import asyncio, os, sys
from roadwatch.adapters.mqtt import MqttClient, MqttEndpoint

async def main():
    endpoint = MqttEndpoint(sys.argv[1], int(sys.argv[2]), sys.argv[3],
                            os.environ["MQTT_PASSWORD"], sys.argv[4])
    never = asyncio.get_running_loop().create_future()
    def handle(topic, payload, qos):
        print("handling", topic, flush=True)
        return never
    client = MqttClient(endpoint, subscriptions=[("vehicles/+/denm", 1)], on_message=handle,
                        persistent=True)
    task = asyncio.ensure_future(client.run())
    await client.wait_connected(10)
    print("subscribed", flush=True)
    await task

asyncio.run(main())
"""


def gateway_endpoint(settings: Settings, client_id: str = "", password: str = "") -> MqttEndpoint:
    return MqttEndpoint(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_gateway_user,
        password or settings.mqtt_gateway_password.get_secret_value(),
        client_id,
    )


def fleet_endpoint(settings: Settings) -> MqttEndpoint:
    return MqttEndpoint.fleet(settings)


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


class Running:
    """Clients started in one test, closed at its end."""

    def __init__(self) -> None:
        self.tasks: dict[MqttClient, asyncio.Task[None]] = {}

    async def start(self, client: MqttClient, wait: bool = True) -> MqttClient:
        self.tasks[client] = asyncio.ensure_future(client.run())
        if wait:
            await client.wait_connected(10)
        return client

    async def stop(self, client: MqttClient) -> None:
        await client.close()
        task = self.tasks.pop(client)
        await asyncio.wait_for(task, 5)

    async def close(self) -> None:
        for client in list(self.tasks):
            await self.stop(client)


def run(test: Callable[[Running], Awaitable[None]]) -> None:
    async def main() -> None:
        running = Running()
        try:
            await test(running)
        finally:
            await running.close()

    asyncio.run(main())


def subscriber(
    settings: Settings,
    inbox: Inbox,
    client_id: str = "",
    subscriptions: tuple[tuple[str, int], ...] = (("vehicles/+/cam", 0), ("vehicles/+/denm", 1)),
) -> MqttClient:
    def handle(topic: str, payload: bytes, qos: int) -> None:
        inbox.append((topic, payload, qos))

    return MqttClient(
        gateway_endpoint(settings, client_id),
        name="test-intake",
        subscriptions=subscriptions,
        on_message=handle,
        persistent=bool(client_id),
    )


@pytest.fixture
def client_id() -> str:
    """A fresh persistent-session identity."""
    return f"client-{secrets.token_hex(4)}"


def test_receives_qos0_and_qos1_messages_in_order(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    async def test(running: Running) -> None:
        inbox: Inbox = []
        await running.start(subscriber(test_settings, inbox))
        fleet = await running.start(MqttClient(fleet_endpoint(test_settings), name="fleet"))
        fleet.publish("vehicles/a1/cam", b"cam-a1")
        denm = fleet.publish("vehicles/b2/denm", b"denm-b2", qos=1)
        assert denm is not None
        await asyncio.wait_for(denm, 5)
        # A burst of DENMs: many packets per received chunk, more than the broker's window.
        burst = [(f"vehicles/c{i}/denm", os.urandom(300)) for i in range(3000)]
        acks = [fleet.publish(topic, payload, qos=1) for topic, payload in burst]
        await asyncio.wait_for(asyncio.gather(*(ack for ack in acks if ack)), 10)
        assert await wait_until(lambda: len(inbox) == 2 + len(burst), 10)
        assert inbox[:2] == [("vehicles/a1/cam", b"cam-a1", 0), ("vehicles/b2/denm", b"denm-b2", 1)]
        assert [(topic, payload) for topic, payload, _qos in inbox[2:]] == burst
        assert fleet.unacknowledged == 0

    run(test)


def test_messages_sent_while_away_arrive_after_reconnecting(
    test_settings: Settings, mosquitto: Mosquitto, client_id: str
) -> None:
    async def test(running: Running) -> None:
        inbox: Inbox = []
        first = await running.start(subscriber(test_settings, inbox, client_id))
        await running.stop(first)
        fleet = await running.start(MqttClient(fleet_endpoint(test_settings), name="fleet"))
        for n in (1, 2):
            ack = fleet.publish(f"vehicles/d{n}/denm", f"while-away-{n}".encode(), qos=1)
            assert ack is not None
            await asyncio.wait_for(ack, 5)
        fleet.publish("vehicles/d3/cam", b"cam-while-away")
        await asyncio.sleep(0.2)
        await running.start(subscriber(test_settings, inbox, client_id))
        assert await wait_until(lambda: len(inbox) == 3, 5)
        assert sorted(payload for _topic, payload, _qos in inbox) == [
            b"cam-while-away",
            b"while-away-1",
            b"while-away-2",
        ]

    run(test)


def test_qos1_message_being_handled_when_the_process_dies_is_redelivered(
    test_settings: Settings, mosquitto: Mosquitto, client_id: str
) -> None:
    stuck = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STUCK_SUBSCRIBER,
            test_settings.mqtt_host,
            str(test_settings.mqtt_port),
            test_settings.mqtt_gateway_user,
            client_id,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MQTT_PASSWORD": test_settings.mqtt_gateway_password.get_secret_value()},
    )

    async def publish_one(running: Running) -> None:
        fleet = await running.start(MqttClient(fleet_endpoint(test_settings), name="fleet"))
        ack = fleet.publish("vehicles/e1/denm", b"accident-ahead", qos=1)
        assert ack is not None
        await asyncio.wait_for(ack, 5)

    try:
        assert stuck.stdout is not None
        assert stuck.stdout.readline().strip() == "subscribed"
        run(publish_one)
        assert stuck.stdout.readline().strip() == "handling vehicles/e1/denm"
    finally:
        stuck.send_signal(signal.SIGKILL)
        stuck.wait(5)
        if stuck.stdout is not None:
            stuck.stdout.close()

    async def restart(running: Running) -> None:
        inbox: Inbox = []
        await running.start(subscriber(test_settings, inbox, client_id, (("vehicles/+/denm", 1),)))
        assert await wait_until(lambda: len(inbox) == 1, 5)
        assert inbox == [("vehicles/e1/denm", b"accident-ahead", 1)]

    run(restart)


def test_wrong_password_ends_the_client_with_an_auth_error(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    async def test(running: Running) -> None:
        client = MqttClient(gateway_endpoint(test_settings, password="not-the-password"))
        with pytest.raises(MqttAuthError):
            await asyncio.wait_for(client.run(), 10)
        assert not client.is_connected()

    run(test)


def test_a_publish_the_acl_refuses_fails_with_its_reason(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    async def test(running: Running) -> None:
        fleet = await running.start(MqttClient(fleet_endpoint(test_settings), name="fleet"))
        refused = fleet.publish("owntracks/someone/phone", b"{}", qos=1)
        assert refused is not None
        with pytest.raises(MqttPublishRefused) as caught:
            await asyncio.wait_for(refused, 5)
        assert caught.value.reason == 0x87  # not authorised

    run(test)


@pytest.fixture
def private_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own, which it may stop and restart."""
    root = Path(tempfile.mkdtemp(prefix="rw-broker-"))
    root.chmod(0o755)  # the broker runs as its own user
    settings = private_settings(root)
    broker = Mosquitto(settings, RunLayout(root))
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_broker_restart_resubscribes_within_a_second_and_resends_what_was_not_acknowledged(
    private_broker: Mosquitto, client_id: str
) -> None:
    settings = private_broker.settings

    async def test(running: Running) -> None:
        inbox: Inbox = []
        intake = await running.start(subscriber(settings, inbox, client_id))
        fleet = MqttClient(fleet_endpoint(settings), name="fleet", offline_limit=1000)
        await running.start(fleet)
        await asyncio.to_thread(private_broker.stop)
        assert await wait_until(lambda: not intake.is_connected(), 5)
        # Published while the broker is away: kept, and sent once it is back.
        pending = fleet.publish("vehicles/f1/denm", b"denm-while-down", qos=1)
        fleet.publish("vehicles/f1/cam", b"cam-while-down")
        assert fleet.unacknowledged == 1 and fleet.offline_backlog == 1
        await asyncio.to_thread(private_broker.start)
        back_at = time.monotonic()
        assert await wait_until(intake.connected.is_set, 5)
        assert time.monotonic() - back_at < 1.0
        assert pending is not None
        await asyncio.wait_for(pending, 5)
        assert await wait_until(lambda: len(inbox) == 2, 5)
        assert sorted(payload for _topic, payload, _qos in inbox) == [
            b"cam-while-down",
            b"denm-while-down",
        ]
        assert intake.stats.connects == 2

    run(test)
