"""Intake stage: two MQTT sessions, so that DENMs never wait behind CAMs.

The bulk session takes CAMs and OwnTracks locations at QoS 0; the reliable session takes
DENMs at QoS 1. Both are persistent, so what arrives while the gateway restarts waits in the
broker. They are apart because Mosquitto 2.0 charges every message queued for a session,
QoS 0 included, to that session's receive window on reconnection and only QoS 1
acknowledgements give it back: once the window's worth of CAMs had queued in a shared
session, later DENMs stayed in the broker for ever (docs/ACKNOWLEDGEMENTS.md). In a session
of QoS 1 messages alone the window always comes back.

A canary watches the reliable session: the gateway publishes a small message to itself through
it every few seconds; when none has come back for a while although the session is up, DENMs
are not flowing either, and health, metrics and `make status` say so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence

import orjson

from roadwatch.adapters.mqtt import BlockingPublisher, MqttClient, MqttEndpoint
from roadwatch.services.gateway.partitioning import PARTITION_PREFIX, partition_topic
from roadwatch.services.gateway.pipeline import Gateway
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

CAM_TOPIC = "vehicles/+/cam"
DENM_TOPIC = "vehicles/+/denm"
OWNTRACKS_TOPIC = "owntracks/+/+"
CANARY_PREFIX = "roadwatch/canary/"
# A canary goes out this often; the DENM path is declared stalled when the newest one to
# come back is older than CANARY_TIMEOUT_S while the session has been up that long.
CANARY_INTERVAL_S = 2.0
CANARY_TIMEOUT_S = 10.0


BULK_SESSION = "bulk"
RELIABLE_SESSION = "denm"


def session_client_ids(settings: Settings) -> tuple[str, str]:
    """Return the client ids of the gateway's bulk and DENM sessions ("" for none)."""
    base_id = settings.gateway_client_id
    if not base_id:
        return "", ""
    return f"{base_id}-{BULK_SESSION}", f"{base_id}-{RELIABLE_SESSION}"


def forget_sessions(settings: Settings) -> None:
    """Have the broker discard the gateway's sessions and what it queued for them.

    For a gateway taken out of service (or a test that stops one): otherwise the broker keeps
    queueing vehicle messages for it until the sessions expire.
    """
    for client_id in session_client_ids(settings):
        if not client_id:
            continue
        connection = BlockingPublisher(
            MqttEndpoint.gateway(settings, client_id), name="session-end"
        )
        connection.start()  # a clean start without expiry: the old session is discarded
        connection.stop()


class Canary:
    """Messages the gateway sends itself through its DENM session, to see that it flows."""

    def __init__(
        self,
        client: MqttClient,
        topic: str,
        interval_s: float = CANARY_INTERVAL_S,
        timeout_s: float = CANARY_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.topic = topic
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.returned = 0
        self.stalls = 0
        self._last_returned = time.monotonic()
        self._stalled = False

    async def run(self) -> None:
        """Send a canary every `interval_s` and judge the path, for ever."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self.client.is_connected():
                payload = orjson.dumps({"n": self.sent, "at": time.time()})
                self.client.publish(self.topic, payload, qos=1)
                self.sent += 1
            self._judge()

    def returned_home(self) -> None:
        self.returned += 1
        self._last_returned = time.monotonic()
        if self._stalled:
            self._stalled = False
            log.warning("DENM path flowing again (canary back)")

    @property
    def age_s(self) -> float:
        """Seconds since a canary last came back."""
        return time.monotonic() - self._last_returned

    @property
    def stalled(self) -> bool:
        return self._stalled

    def _judge(self) -> None:
        online_since = self.client.online_since
        if online_since is None:
            return  # disconnected: the connection state says so already
        up_for = time.monotonic() - online_since
        stalled = self.age_s > self.timeout_s and up_for > self.timeout_s
        if stalled and not self._stalled:
            self.stalls += 1
            log.error(
                "DENM path stalled: no canary back through the DENM session for %.0f s"
                " although connected; DENMs may be stuck in the broker",
                self.age_s,
            )
        self._stalled = stalled


class Intake:
    """The gateway's two MQTT sessions, feeding `Gateway.handle` on the event loop."""

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        self.gateway = gateway
        base_id = settings.gateway_client_id
        bulk_id, reliable_id = session_client_ids(settings)

        canary_topic = f"{CANARY_PREFIX}{base_id or settings.gateway_name}"
        self._canary_topic = canary_topic
        bulk_topics: list[tuple[str, int]] = [(CAM_TOPIC, 0), (OWNTRACKS_TOPIC, 0)]
        reliable_topics: list[tuple[str, int]] = [(DENM_TOPIC, 1)]
        self.partitioned = gateway.partitioned
        if self.partitioned:
            group = settings.gateway_share_group
            instance = settings.gateway_instance
            bulk_topics = [
                *((f"$share/{group}/{topic}", qos) for topic, qos in bulk_topics),
                (partition_topic(instance, CAM_TOPIC), 0),
                (partition_topic(instance, OWNTRACKS_TOPIC), 0),
            ]
            reliable_topics = [
                (f"$share/{group}/{DENM_TOPIC}", 1),
                (partition_topic(instance, DENM_TOPIC), 1),
            ]
            self._own_prefix = partition_topic(instance, "")
        persistent = bool(base_id)
        self.bulk = MqttClient(
            MqttEndpoint.gateway(settings, bulk_id),
            name="intake-bulk",
            subscriptions=bulk_topics,
            on_message=self._on_message,
            persistent=persistent,
        )
        self.reliable = MqttClient(
            MqttEndpoint.gateway(settings, reliable_id),
            name="intake-denm",
            subscriptions=[*reliable_topics, (canary_topic, 1)],
            on_message=self._on_reliable,
            persistent=persistent,
        )
        self.canary = Canary(self.reliable, canary_topic)
        self.forwarded = 0
        gateway.outbox.on_full(self._outbox_full)

    @property
    def clients(self) -> tuple[MqttClient, MqttClient]:
        return self.bulk, self.reliable

    def is_connected(self) -> bool:
        return self.bulk.is_connected() and self.reliable.is_connected()

    async def run(self) -> None:
        """Keep both sessions and the canary going until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.bulk.run())
            tasks.create_task(self.reliable.run())
            tasks.create_task(self.canary.run())

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        await self.bulk.wait_connected(timeout_s)
        await self.reliable.wait_connected(timeout_s)

    async def close(self) -> None:
        """Disconnect both sessions (the broker keeps them, and queues what comes)."""
        await asyncio.gather(self.bulk.close(), self.reliable.close())

    def _outbox_full(self, full: bool) -> None:
        for client in self.clients:
            if full:
                client.pause_reading()
            else:
                client.resume_reading()

    def _on_reliable(self, topic: str, payload: bytes, qos: int) -> Awaitable[object] | None:
        if topic == self._canary_topic:
            self.canary.returned_home()
            return None
        return self._on_message(topic, payload, qos)

    def _on_message(self, topic: str, payload: bytes, qos: int) -> Awaitable[object] | None:
        if not self.partitioned:
            self.gateway.handle(topic, payload)
            return None
        passed_on = topic.startswith(PARTITION_PREFIX)
        if passed_on:
            if not topic.startswith(self._own_prefix):
                return None
            topic = topic[len(self._own_prefix) :]
        owners = self.gateway.handle_partitioned(topic, payload, passed_on)
        return self._pass_on(topic, payload, qos, owners)

    def _pass_on(
        self, topic: str, payload: bytes, qos: int, owners: Sequence[int]
    ) -> Awaitable[object] | None:
        """Pass a message on to its other owners; a DENM is acknowledged once they have it."""
        if not owners:
            return None
        client = self.reliable if qos else self.bulk
        copies = []
        for owner in owners:
            self.forwarded += 1
            done = client.publish(partition_topic(owner, topic), payload, qos=qos)
            if done is not None:
                copies.append(done)
        if not copies:
            return None
        return asyncio.gather(*copies)

    def counters(self) -> dict[str, int | float]:
        """Figures of both sessions and the canary, for metrics and the status file."""
        figures: dict[str, int | float] = {}
        for name, client in (("bulk", self.bulk), ("denm", self.reliable)):
            stats = client.stats
            figures[f"mqtt_{name}_connects"] = stats.connects
            figures[f"mqtt_{name}_received"] = stats.received
            figures[f"mqtt_{name}_malformed"] = stats.malformed
            figures[f"mqtt_{name}_handler_errors"] = stats.handler_errors
            figures[f"mqtt_{name}_refused_subscriptions"] = stats.refused_subscriptions
        figures["canary_sent"] = self.canary.sent
        figures["canary_returned"] = self.canary.returned
        figures["denm_path_stalls"] = self.canary.stalls
        if self.partitioned:
            figures["partition_forwarded"] = self.forwarded
        return figures
