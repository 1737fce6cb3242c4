"""MQTT adapters: the gateway's lean MQTT 5 intake, and paho-mqtt for the rest.

The single gateway's subscriber speaks MQTT 5 itself (codec in mqtt_codec.py); the
partitioned gateway's subscriber, which also publishes, and the vehicles' publisher use paho.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from roadwatch.adapters.mqtt_codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PROTOCOL_ERROR,
    PUBLISH,
    SERVER_KEEP_ALIVE,
    SUBACK,
    MalformedPacketError,
    PacketStream,
    decode_connack,
    decode_disconnect,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_subscribe,
)

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
CONNACK_FAILURE = 0x80  # reason codes from here on are failures (MQTT 5 §2.4)
# The intake's flow control: QoS 1 messages the broker may send before our PUBACKs (which go
# out once per received chunk); beyond it the broker queues them (max_queued_messages).
RECEIVE_MAXIMUM = 4096
RECEIVE_CHUNK = 256 * 1024
# Larger packets are dropped by the broker rather than sent (the broker allows 64 KiB).
MAXIMUM_PACKET_SIZE = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


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

    def is_connected(self) -> bool:
        """Tell whether the broker accepted the current connection."""
        return self.client.is_connected()

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


class MqttSubscriber:
    """The gateway's subscription to every vehicle topic: a lean MQTT 5 client of our own.

    paho spent more CPU per message than the detection itself, so the intake speaks MQTT 5
    directly: one reader thread receives large chunks, decodes every complete packet in them
    and calls the handler on that thread, in order. A QoS 1 message is acknowledged only
    after its handler has returned (acknowledgements go out once per chunk), so the broker's
    persistent session delivers it again when the process dies in between. The subscriptions
    are renewed on every (re)connection.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        handler: MessageHandler,
        subscriptions: tuple[tuple[str, int], ...] = VEHICLE_SUBSCRIPTIONS,
    ) -> None:
        self.endpoint = endpoint
        self.subscriptions = subscriptions
        self._handler = handler
        self._persistent = bool(endpoint.client_id)
        self.connected = threading.Event()
        self.fatal: MqttError | None = None
        self.reconnects = 0
        self.malformed = 0
        self.handler_errors = 0
        self.refused_subscriptions = 0
        self._online = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._last_sent = 0.0
        self._ping_sent_at = 0.0
        self._keepalive_s = KEEPALIVE_S
        self._delay_s = RECONNECT_MIN_DELAY_S
        self._subscribe_id = 0

    def is_connected(self) -> bool:
        """Tell whether the broker accepted the current connection."""
        return self._online

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and start the reader thread; raise when the first connection fails."""
        try:
            sock = self._open()
        except OSError as exc:
            raise MqttError(
                f"cannot reach MQTT {self.endpoint.host}:{self.endpoint.port}: {exc}"
            ) from exc
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="mqtt-intake", daemon=True
        )
        self._thread.start()
        if not self.connected.wait(timeout_s) or self.fatal is not None:
            self.stop()
            raise self.fatal or MqttError(
                f"no CONNACK from {self.endpoint.host}:{self.endpoint.port} in {timeout_s:.0f} s"
            )

    def stop(self) -> None:
        """Disconnect cleanly once the messages received so far are handled and acknowledged."""
        self._stopping.set()
        sock = self._sock
        if sock is not None:
            # Wakes the reader, which acknowledges what it handled, then says DISCONNECT.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT_S)
        self._thread = None

    # -- the reader thread ----------------------------------------------------------------

    def _open(self) -> socket.socket:
        sock = socket.create_connection(
            (self.endpoint.host, self.endpoint.port), timeout=CONNECT_TIMEOUT_S
        )
        # Nagle costs milliseconds per message at our rates (FACTS).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _run(self, sock: socket.socket | None) -> None:
        endpoint = self.endpoint
        while not self._stopping.is_set():
            try:
                if sock is None:
                    sock = self._open()
                self._session(sock)
            except MqttAuthError as exc:
                self.fatal = exc
                self.connected.set()  # start() is waiting for this answer
                return
            except MalformedPacketError as exc:
                self.malformed += 1
                log.error(
                    "MQTT %s:%d sent a malformed packet (%s); reconnecting",
                    endpoint.host,
                    endpoint.port,
                    exc,
                )
                if sock is not None:
                    with contextlib.suppress(OSError):
                        self._send(sock, encode_disconnect(exc.reason_code))
            except (OSError, MqttError) as exc:
                if not self._stopping.is_set():
                    log.warning(
                        "MQTT connection to %s:%d lost: %s; reconnecting",
                        endpoint.host,
                        endpoint.port,
                        exc or type(exc).__name__,
                    )
            finally:
                self._online = False
                self._sock = None
                if sock is not None:
                    sock.close()
                sock = None
            if self._stopping.wait(self._delay_s):
                return
            self._delay_s = min(self._delay_s * 2, RECONNECT_MAX_DELAY_S)

    def _session(self, sock: socket.socket) -> None:
        """Run one connection until the broker goes away (raises) or we stop (returns)."""
        self._sock = sock
        self._keepalive_s = KEEPALIVE_S
        self._ping_sent_at = 0.0
        sock.settimeout(self._keepalive_s / 2)
        self._send(
            sock,
            encode_connect(
                self.endpoint.client_id,
                username=self.endpoint.username,
                password=self.endpoint.password,
                keepalive_s=KEEPALIVE_S,
                clean_start=not self._persistent,
                session_expiry_s=SESSION_EXPIRY_S if self._persistent else 0,
                receive_maximum=RECEIVE_MAXIMUM,
                maximum_packet_size=MAXIMUM_PACKET_SIZE,
            ),
        )
        stream = PacketStream(MAXIMUM_PACKET_SIZE)
        handler = self._handler
        while True:
            try:
                chunk = sock.recv(RECEIVE_CHUNK)
            except TimeoutError:
                chunk = None
            if self._stopping.is_set():
                with contextlib.suppress(OSError):
                    self._send(sock, DISCONNECT_PACKET)
                return
            if chunk == b"":
                raise MqttError("connection closed by the broker")
            if chunk:
                acks: list[bytes] = []
                try:
                    for first_byte, body in stream.feed(chunk):
                        if first_byte >> 4 == PUBLISH:
                            topic, packet_id, payload = decode_publish(first_byte, body)
                            try:
                                handler(topic, payload)
                            except Exception:
                                # A message the gateway cannot take is not sent again forever.
                                self.handler_errors += 1
                                log.exception("MQTT handler failed on %.80s", topic)
                            if packet_id:
                                acks.append(encode_puback(packet_id))
                        else:
                            self._control(sock, first_byte, body)
                finally:
                    if acks:
                        self._send(sock, b"".join(acks))
            self._keep_alive(sock)

    def _control(self, sock: socket.socket, first_byte: int, body: bytes) -> None:
        kind = first_byte >> 4
        if first_byte & 0x0F:
            raise MalformedPacketError(f"packet type {kind} with flags {first_byte & 0x0F}")
        if kind == PINGRESP:
            self._ping_sent_at = 0.0
        elif kind == SUBACK:
            self._suback(body)
        elif kind == CONNACK:
            self._connack(sock, body)
        elif kind == DISCONNECT:
            reason, text = decode_disconnect(body)
            raise MqttError(f"the broker disconnected us: reason 0x{reason:02x} {text}".strip())
        else:
            raise MalformedPacketError(f"unexpected packet type {kind}", PROTOCOL_ERROR)

    def _connack(self, sock: socket.socket, body: bytes) -> None:
        endpoint = self.endpoint
        session_present, reason, properties = decode_connack(body)
        if reason >= CONNACK_FAILURE:
            log.error(
                "MQTT %s:%d refused %s: reason 0x%02x",
                endpoint.host,
                endpoint.port,
                endpoint.username,
                reason,
            )
            if reason in _FATAL_CONNECT_CODES:
                # Stop retrying: credentials will not fix themselves.
                raise MqttAuthError(f"MQTT refused {endpoint.username}: reason 0x{reason:02x}")
            raise MqttError(f"connection refused: reason 0x{reason:02x}")
        server_keepalive = properties.get(SERVER_KEEP_ALIVE)
        if isinstance(server_keepalive, int) and server_keepalive:
            self._keepalive_s = server_keepalive  # the broker's value prevails (§3.2.2.3.14)
            sock.settimeout(server_keepalive / 2)
        self._delay_s = RECONNECT_MIN_DELAY_S
        if self.connected.is_set():
            self.reconnects += 1
        self._online = True
        log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            endpoint.host,
            endpoint.port,
            endpoint.username,
            session_present,
        )
        # Subscribing on every connect: a reconnect to a broker that lost our session would
        # otherwise silently deliver nothing.
        self._subscribe_id = self._subscribe_id % 0xFFFF + 1
        self._send(sock, encode_subscribe(self._subscribe_id, self.subscriptions))

    def _suback(self, body: bytes) -> None:
        packet_id, reasons = decode_suback(body)
        if packet_id != self._subscribe_id or len(reasons) != len(self.subscriptions):
            raise MalformedPacketError("SUBACK does not match our SUBSCRIBE", PROTOCOL_ERROR)
        for (topic_filter, _qos), reason in zip(self.subscriptions, reasons, strict=True):
            if reason >= CONNACK_FAILURE:
                # Nothing else would ever tell: the subscription simply receives nothing.
                self.refused_subscriptions += 1
                log.error(
                    "MQTT refused the subscription to %s: reason 0x%02x", topic_filter, reason
                )
        self.connected.set()

    def _keep_alive(self, sock: socket.socket) -> None:
        now = time.monotonic()
        if self._ping_sent_at and now - self._ping_sent_at > self._keepalive_s:
            raise MqttError(f"no PINGRESP in {self._keepalive_s} s")
        if not self._ping_sent_at and now - self._last_sent >= self._keepalive_s / 2:
            self._ping_sent_at = now
            self._send(sock, PINGREQ_PACKET)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with self._send_lock:
            sock.sendall(data)
            self._last_sent = time.monotonic()


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
