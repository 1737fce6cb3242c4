"""MQTT adapter over paho-mqtt: the gateway's subscriber and the vehicles' publisher."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

# Topics of SPEC §2 and the QoS each is subscribed with (DENMs are QoS 1 end to end).
VEHICLE_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (
    ("vehicles/+/cam", 0),
    ("vehicles/+/denm", 1),
    ("owntracks/+/+", 1),
)
# Gateway instances sharing the load: each takes its share of the vehicle topics through an
# MQTT 5 shared subscription and passes messages on to the instance owning them on
# `roadwatch/partition/{instance}/{original topic}` (domain/partition.py).
PARTITION_PREFIX = "roadwatch/partition/"
# PUBACK reason code "No matching subscribers" (MQTT 5 §3.4.2.1): the owner never subscribed.
_NO_MATCHING_SUBSCRIBERS = 16
# The broker keeps the gateway's subscriptions and queued QoS 1 messages this long while it
# is away, so DENMs survive a gateway restart (SPEC §10).
SESSION_EXPIRY_S = 3600
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
KEEPALIVE_S = 30
# CONNACK reason codes that no retry can fix (MQTT 5 §3.2.2.2).
_FATAL_CONNECT_CODES = frozenset({134, 135, 138})  # bad credentials, not authorised, banned


class MqttError(Exception):
    """An MQTT operation failed."""


class MqttAuthError(MqttError):
    """The broker refused our credentials: retrying will not help."""


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and as whom to connect."""

    host: str
    port: int
    username: str
    password: str
    client_id: str = ""


MessageHandler = Callable[[str, bytes], None]
# (topic, payload, passed on by another instance) -> the instances to pass the message on to.
PartitionHandler = Callable[[str, bytes, bool], Sequence[int]]


def shared_subscriptions(group: str) -> tuple[tuple[str, int], ...]:
    """Return the vehicle subscriptions as members of the shared-subscription `group`."""
    return tuple((f"$share/{group}/{topic}", qos) for topic, qos in VEHICLE_SUBSCRIPTIONS)


def partition_topic(instance: int, topic: str = "#") -> str:
    """Return the topic on which `instance` receives messages passed on to it."""
    return f"{PARTITION_PREFIX}{instance}/{topic}"


class _Connection:
    """One long-lived paho client with its network thread and reconnect back-off."""

    def __init__(self, endpoint: MqttEndpoint, persistent: bool, manual_ack: bool = False) -> None:
        self.endpoint = endpoint
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        self.client.username_pw_set(endpoint.username, endpoint.password)
        self.client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._persistent = persistent
        self.connected = threading.Event()
        self.fatal: MqttError | None = None
        self.reconnects = 0

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network thread; raise when the first connection fails."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(
                self.endpoint.host,
                self.endpoint.port,
                keepalive=KEEPALIVE_S,
                clean_start=not self._persistent,
                properties=properties,
            )
        except OSError as exc:
            raise MqttError(
                f"cannot reach MQTT {self.endpoint.host}:{self.endpoint.port}: {exc}"
            ) from exc
        self.client.loop_start()
        if not self.connected.wait(timeout_s) or self.fatal is not None:
            self.stop()
            raise self.fatal or MqttError(
                f"no CONNACK from {self.endpoint.host}:{self.endpoint.port} in {timeout_s:.0f} s"
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on_connected(self) -> None:
        """Run after every (re)connection; subclasses subscribe here."""

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error(
                "MQTT %s:%d refused %s: %s",
                self.endpoint.host,
                self.endpoint.port,
                self.endpoint.username,
                reason,
            )
            if reason.value in _FATAL_CONNECT_CODES:
                self.fatal = MqttAuthError(f"MQTT refused {self.endpoint.username}: {reason}")
                client.disconnect()  # stop retrying: credentials will not fix themselves
                self.connected.set()
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Nagle costs milliseconds per message at our rates (FACTS).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.connected.is_set():
            self.reconnects += 1
        log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            self.endpoint.host,
            self.endpoint.port,
            self.endpoint.username,
            flags.session_present,
        )
        self.on_connected()
        self.connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning(
                "MQTT connection to %s:%d lost: %s; reconnecting",
                self.endpoint.host,
                self.endpoint.port,
                reason,
            )


class MqttSubscriber(_Connection):
    """The gateway's subscription to every vehicle topic, renewed on each reconnect."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        handler: MessageHandler,
        subscriptions: tuple[tuple[str, int], ...] = VEHICLE_SUBSCRIPTIONS,
    ) -> None:
        super().__init__(endpoint, persistent=bool(endpoint.client_id))
        self.subscriptions = subscriptions
        self._handler = handler
        self.client.on_message = self._on_message

    def on_connected(self) -> None:
        # Subscribing on every connect: a reconnect to a broker that lost our session would
        # otherwise silently deliver nothing.
        result, _mid = self.client.subscribe(list(self.subscriptions))
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT subscribe failed: %s", result)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._handler(message.topic, bytes(message.payload))


class PartitionedSubscriber(_Connection):
    """One gateway instance of several: a share of the vehicle topics, its own partition topic.

    The handler tells which other instances a message belongs to as well; this passes it on
    to them unchanged, at its own QoS. A QoS 1 message is acknowledged to the broker only
    once every instance's copy is acknowledged, so a DENM survives this process dying in
    between (the broker delivers it again).
    """

    def __init__(
        self, endpoint: MqttEndpoint, instance: int, share_group: str, handler: PartitionHandler
    ) -> None:
        super().__init__(endpoint, persistent=bool(endpoint.client_id), manual_ack=True)
        self.subscriptions = (
            *shared_subscriptions(share_group),
            (partition_topic(instance), 1),
        )
        self._own_prefix = partition_topic(instance, "")
        self._handler = handler
        # Copies passed on, by their message id -> the received message's id; and how many
        # copies each received message still waits for.
        self._copies: dict[int, int] = {}
        self._waiting: dict[int, int] = {}
        self.forwarded = 0
        self.unrouted = 0
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def on_connected(self) -> None:
        result, _mid = self.client.subscribe(list(self.subscriptions))
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT subscribe failed: %s", result)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        topic = message.topic
        passed_on = topic.startswith(self._own_prefix)
        if passed_on:
            topic = topic[len(self._own_prefix) :]
        payload = bytes(message.payload)
        owners = self._handler(topic, payload, passed_on)
        qos = message.qos
        pending = 0
        for owner in owners:
            info = client.publish(partition_topic(owner, topic), payload, qos=qos)
            self.forwarded += 1
            if qos and info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # paho keeps a QoS 1 copy and sends it again after a reconnection.
                self._copies[info.mid] = message.mid
                pending += 1
            elif info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning(
                    "MQTT: passing %.80s on to instance %d failed: %s", topic, owner, info.rc
                )
        if pending:
            self._waiting[message.mid] = pending
        elif qos:
            client.ack(message.mid, qos)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.value == _NO_MATCHING_SUBSCRIBERS:
            # That instance has never connected to this broker: nobody keeps its share.
            self.unrouted += 1
            if self.unrouted == 1 or self.unrouted % 1000 == 0:
                log.warning("MQTT: %d messages passed on to an instance never seen", self.unrouted)
        received = self._copies.pop(mid, None)
        if received is None:
            return
        left = self._waiting.get(received, 1) - 1
        if left > 0:
            self._waiting[received] = left
            return
        self._waiting.pop(received, None)
        client.ack(received, 1)


class MqttPublisher(_Connection):
    """A publisher (a vehicle, or the fleet account publishing for many vehicles)."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        super().__init__(endpoint, persistent=False)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> paho.MQTTMessageInfo:
        """Queue one message; QoS 1 messages are retried by paho until acknowledged."""
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} failed: {info.rc}")
        return info
