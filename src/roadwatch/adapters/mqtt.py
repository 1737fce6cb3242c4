"""MQTT adapter over paho-mqtt: the gateway's subscriber and the vehicles' publisher."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
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


class _Connection:
    """One long-lived paho client with its network thread and reconnect back-off."""

    def __init__(self, endpoint: MqttEndpoint, persistent: bool) -> None:
        self.endpoint = endpoint
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=endpoint.client_id,
            protocol=paho.MQTTv5,
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
