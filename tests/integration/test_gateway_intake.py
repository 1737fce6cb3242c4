"""The gateway's intake against a real Mosquitto: DENMs never strand behind queued CAMs.

Mosquitto 2.0 charges every message queued for a persistent session, QoS 0 included, to the
session's receive window when its client comes back, and only QoS 1 acknowledgements give the
window back. With CAMs and DENMs in one session, a gateway restart under load left every later
DENM in the broker for ever; the intake keeps them in two sessions, and a canary watches the
DENM one.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import orjson
import pytest

from roadwatch.adapters.mqtt import MqttClient, MqttEndpoint
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.services.gateway import Gateway
from roadwatch.services.gateway.intake import Intake
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

# Well over the gateway's receive window (4096): enough to strand DENMs in a shared session.
QUEUED_CAMS = 10_000
DENMS = 5


def fleet(settings: Settings) -> MqttClient:
    return MqttClient(MqttEndpoint.fleet(settings), name="fleet")


def gateway_settings(settings: Settings) -> Settings:
    """The test system's settings with a fresh gateway identity (its own broker sessions)."""
    return settings.model_copy(
        update={"mqtt_gateway_client_id": f"intake-test-{secrets.token_hex(4)}"}
    )


def cam(station: str, t: int) -> bytes:
    return orjson.dumps(
        {
            "stationId": station,
            "stationType": 5,
            "timestamp": t,
            "lat": 49.25,
            "lon": 4.03,
            "speed": 50.0,
            "heading": 90.0,
        }
    )


def denm(station: str, t: int) -> bytes:
    return orjson.dumps(
        {
            "stationId": station,
            "stationType": 5,
            "timestamp": t,
            "lat": 49.25,
            "lon": 4.03,
            "causeCode": 3,
        }
    )


async def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def queue_qos0(
    client: MqttClient, topics: Callable[[int], str], payloads: Callable[[int], bytes]
) -> None:
    """Publish QUEUED_CAMS QoS 0 messages, letting the socket drain now and then."""
    for n in range(QUEUED_CAMS):
        client.publish(topics(n), payloads(n))
        if n % 1000 == 0:
            await client.drain()


async def leave_sessions(settings: Settings) -> str:
    """Open the gateway's two sessions once and leave: the broker now queues for them.

    Returns the canary topic of that gateway.
    """
    intake = Intake(settings, Gateway(settings, None))
    running = asyncio.ensure_future(intake.run())
    await intake.wait_connected(10)
    await intake.close()
    running.cancel()
    return intake.canary.topic


async def publish_backlog(settings: Settings) -> None:
    """Queue CAMs, then DENMs, for a gateway that is away."""
    client = fleet(settings)
    task = asyncio.ensure_future(client.run())
    await client.wait_connected(10)
    now = round(time.time() * 1000)
    await queue_qos0(
        client,
        lambda n: f"vehicles/car-{n % 500}/cam",
        lambda n: cam(f"car-{n % 500}", now - 60_000 + n),
    )
    acks = [
        client.publish(f"vehicles/rsu-{n}/denm", denm(f"rsu-{n}", now + n), qos=1)
        for n in range(DENMS)
    ]
    await asyncio.wait_for(asyncio.gather(*(ack for ack in acks if ack)), 10)
    await asyncio.sleep(0.3)  # the broker has queued everything for the absent sessions
    await client.close()
    await task


def test_denms_queued_behind_thousands_of_cams_arrive_after_a_restart(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    settings = gateway_settings(test_settings)

    async def scenario() -> None:
        await leave_sessions(settings)
        await publish_backlog(settings)
        gateway = Gateway(settings, None)
        second = Intake(settings, gateway)
        running = asyncio.ensure_future(second.run())
        try:
            await second.wait_connected(10)
            assert await eventually(lambda: second.reliable.stats.received >= DENMS, 10), (
                f"{second.reliable.stats.received} of {DENMS} DENMs delivered"
            )
            assert await eventually(lambda: second.bulk.stats.received == QUEUED_CAMS, 10)
            assert gateway.detection.received == QUEUED_CAMS + DENMS
        finally:
            await second.close()
            running.cancel()

    asyncio.run(scenario())


def test_the_canary_reports_a_stalled_denm_session(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    settings = gateway_settings(test_settings)

    async def scenario() -> None:
        canary_topic = await leave_sessions(settings)
        # Strand the DENM session the way mixed traffic did: QoS 0 messages queued for it
        # beyond its receive window (the gateway account may write its canary topic).
        stranding = MqttClient(MqttEndpoint.gateway(settings), name="stranding")
        task = asyncio.ensure_future(stranding.run())
        await stranding.wait_connected(10)
        await queue_qos0(stranding, lambda n: canary_topic, lambda n: b"qos0 filler")
        await asyncio.sleep(0.3)
        await stranding.close()
        await task
        intake = Intake(settings, Gateway(settings, None))
        intake.canary.interval_s, intake.canary.timeout_s = 0.2, 1.5
        running = asyncio.ensure_future(intake.run())
        try:
            await intake.wait_connected(10)
            assert await eventually(lambda: intake.canary.stalled, 10)
            assert intake.canary.stalls == 1
        finally:
            await intake.close()
            running.cancel()

    asyncio.run(scenario())


def test_one_session_for_cams_and_denms_would_strand_the_denms(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    """The broker behaviour the two sessions exist for: this must hold for the test above
    to mean anything."""
    settings = gateway_settings(test_settings)
    received: list[str] = []

    def mixed() -> MqttClient:
        return MqttClient(
            MqttEndpoint.gateway(settings, f"{settings.mqtt_gateway_client_id}-mixed"),
            name="mixed",
            subscriptions=[("vehicles/+/cam", 0), ("vehicles/+/denm", 1)],
            on_message=lambda topic, payload, qos: received.append(topic),
            persistent=True,
        )

    async def scenario() -> None:
        first = mixed()
        running = asyncio.ensure_future(first.run())
        await first.wait_connected(10)
        await first.close()
        await running
        await publish_backlog(settings)
        second = mixed()
        running = asyncio.ensure_future(second.run())
        try:
            await second.wait_connected(10)
            await eventually(lambda: len(received) >= QUEUED_CAMS, 10)
            await asyncio.sleep(1.0)
            denms = [topic for topic in received if topic.endswith("/denm")]
            assert len(received) >= QUEUED_CAMS - 100  # the CAMs came...
            assert denms == []  # ...and the DENMs stayed in the broker
        finally:
            await second.close()
            await running

    asyncio.run(scenario())
