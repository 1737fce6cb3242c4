"""RoadWatch's MQTT 5 client: one long-lived session on the asyncio event loop.

Every MQTT user of the project goes through it: the gateway's intake (a subscriber that
acknowledges a QoS 1 message only once its handler is done with it), the partitioned gateway
(which passes messages on to other instances), the simulator, `roadwatch replay` and the
benchmarks (publishers). It was chosen over paho-mqtt and gmqtt by `python -m bench mqtt`
(docs/PERFORMANCE.md): the wire format is mqtt/codec.py, decoded straight from the received
chunks, without per-message objects or threads.

Behaviour, the same for every user:
- `run()` connects and reconnects for ever with a short, named back-off, and renews the
  subscriptions on every connection (a broker that lost the session would otherwise
  silently deliver nothing); refused credentials end `run()` with `MqttAuthError`.
- Received messages are handed to the handler in order, on the loop. A QoS 1 message is
  acknowledged after the handler returns, or, when the handler returns an awaitable, once
  that completes; acknowledgements of one received chunk leave together.
- QoS 1 publishes are kept until the broker acknowledges them, sent again (DUP) after a
  reconnection, and limited to the broker's Receive Maximum in flight. QoS 0 publishes made
  while disconnected are kept, up to `offline_limit`, and sent on reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roadwatch.adapters.mqtt.codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PROTOCOL_ERROR,
    PUBACK,
    PUBLISH,
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    SUBACK,
    MalformedPacketError,
    PacketStream,
    decode_connack,
    decode_disconnect,
    decode_puback,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    mark_duplicate,
)

if TYPE_CHECKING:
    from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# The broker keeps a persistent session's subscriptions and queued messages this long while
# its client is away (a gateway restart, an upgrade).
SESSION_EXPIRY_S = 3600
# Reconnection back-off: the first retry comes quickly (a broker restarting under
# supervision is back within a second), then doubles up to the maximum; the gateway's
# maximum keeps it subscribed again within a second of the broker's return.
RECONNECT_MIN_DELAY_S = 0.05
RECONNECT_MAX_DELAY_S = 0.5
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
# QoS 1 messages the broker may send before our acknowledgements.
DEFAULT_RECEIVE_MAXIMUM = 4096
# Larger packets are dropped by the broker rather than sent (ours accepts 64 KiB).
MAXIMUM_PACKET_SIZE = 256 * 1024
# CONNACK reason codes that no retry can fix (MQTT 5 §3.2.2.2).
_FATAL_CONNECT_CODES = frozenset({0x86, 0x87, 0x8A})  # bad credentials, not authorised, banned
FAILURE = 0x80  # reason codes from here on are failures (§2.4)
_MAX_PACKET_ID = 0xFFFF
# Connection failures are logged once, then every this many seconds while they last.
_FAILURE_LOG_INTERVAL_S = 30.0

# (topic, payload, qos) -> None, or an awaitable that completes when the message is safe.
MessageHandler = Callable[[str, bytes, int], Awaitable[object] | None]


class MqttError(Exception):
    """An MQTT operation failed."""


class MqttAuthError(MqttError):
    """The broker refused our credentials: retrying will not help."""


class MqttPublishRefused(MqttError):
    """The broker refused a QoS 1 publish (for example the ACL: reason 0x87)."""

    def __init__(self, topic: str, reason: int) -> None:
        super().__init__(f"the broker refused the publish to {topic}: reason 0x{reason:02x}")
        self.reason = reason


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and as whom to connect; an empty client id lets the broker choose one."""

    host: str
    port: int
    username: str
    password: str
    client_id: str = ""

    @classmethod
    def fleet(cls, settings: Settings, client_id: str = "") -> MqttEndpoint:
        """The fleet account of `settings` (the simulator's, replay's and benchmarks')."""
        password = settings.mqtt_fleet_password.get_secret_value()
        return cls(
            settings.mqtt_host, settings.mqtt_port, settings.mqtt_fleet_user, password, client_id
        )

    @classmethod
    def gateway(cls, settings: Settings, client_id: str = "") -> MqttEndpoint:
        """The gateway account of `settings`."""
        password = settings.mqtt_gateway_password.get_secret_value()
        return cls(
            settings.mqtt_host, settings.mqtt_port, settings.mqtt_gateway_user, password, client_id
        )


@dataclass(slots=True)
class _Outgoing:
    """A QoS 1 publish kept until the broker acknowledges it."""

    topic: str
    packet: bytes  # encoded with packet id 0 until one is assigned
    done: asyncio.Future[None]
    packet_id: int = 0


@dataclass(slots=True)
class ClientStats:
    """What a client did since it started (the figures only grow)."""

    connects: int = 0
    received: int = 0
    published: int = 0
    acknowledged: int = 0
    resent: int = 0
    dropped_offline: int = 0
    malformed: int = 0
    handler_errors: int = 0
    refused_subscriptions: int = 0
    refused_publishes: int = 0


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Nagle costs milliseconds per message at our rates (docs/PERFORMANCE.md).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.client._received(data, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.client._writable.clear()

    def resume_writing(self) -> None:
        self.client._writable.set()


class MqttClient:
    """One MQTT 5 session, reconnected for ever by `run()` until `close()`."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        name: str = "mqtt",
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        persistent: bool = False,
        receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
        offline_limit: int = 0,
        reconnect_max_s: float = RECONNECT_MAX_DELAY_S,
    ) -> None:
        if persistent and not endpoint.client_id:
            raise ValueError("a persistent session needs a client id")
        self.endpoint = endpoint
        self.name = name
        self.subscriptions = tuple(subscriptions)
        self._handler = on_message
        self._persistent = persistent
        self._receive_maximum = receive_maximum
        self._offline_limit = offline_limit
        self._reconnect_max_s = reconnect_max_s
        self.stats = ClientStats()
        self.connected = asyncio.Event()  # set while a CONNACK and SUBACK are in hand
        self._writable = asyncio.Event()
        self._writable.set()
        self._protocol: _Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._generation = 0
        self._online = False
        self._closing = False
        self._reading_paused = False
        self._stream = PacketStream(MAXIMUM_PACKET_SIZE)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._last_sent = 0.0
        self._ping_sent_at = 0.0
        self._keepalive_s = KEEPALIVE_S
        self._subscribe_id = 0
        self._next_packet_id = 0
        self._server_receive_maximum = _MAX_PACKET_ID
        self._inflight: dict[int, _Outgoing] = {}
        self._waiting: deque[_Outgoing] = deque()
        self._offline: deque[bytes] = deque()
        self._failure_logged_at = 0.0
        self.session_present = False
        self.online_since: float | None = None

    # -- state ------------------------------------------------------------------------------

    def is_connected(self) -> bool:
        """Tell whether the broker accepted the current connection."""
        return self._online

    @property
    def unacknowledged(self) -> int:
        """QoS 1 publishes not yet acknowledged by the broker."""
        return len(self._inflight) + len(self._waiting)

    @property
    def offline_backlog(self) -> int:
        """QoS 0 publishes kept while disconnected."""
        return len(self._offline)

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected and subscribed; raise MqttError on timeout."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError as exc:
            raise MqttError(
                f"{self.name}: no connection to MQTT {self.endpoint.host}:{self.endpoint.port}"
                f" in {timeout_s:.0f} s"
            ) from exc

    # -- the connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect whenever the connection ends, until `close()`."""
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        delay = RECONNECT_MIN_DELAY_S
        while not self._closing:
            try:
                _transport, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), endpoint.host, endpoint.port),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                self._connection_failed(exc)
            else:
                reason = await self._session(protocol)
                if isinstance(reason, MqttAuthError):
                    raise reason
                if self.online_since is not None:
                    delay = RECONNECT_MIN_DELAY_S  # it had worked: retry quickly
                    self.online_since = None
                if not self._closing:
                    log.warning(
                        "%s: MQTT connection to %s:%d lost: %s; reconnecting",
                        self.name,
                        endpoint.host,
                        endpoint.port,
                        reason or "closed",
                    )
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    def _connection_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._failure_logged_at >= _FAILURE_LOG_INTERVAL_S:
            self._failure_logged_at = now
            log.warning(
                "%s: cannot reach MQTT %s:%d: %s; retrying",
                self.name,
                self.endpoint.host,
                self.endpoint.port,
                exc or type(exc).__name__,
            )

    async def _session(self, protocol: _Protocol) -> Exception | None:
        """Run one connection until it ends; return why it ended."""
        self._protocol = protocol
        self._transport = protocol.transport
        self._generation += 1
        self._stream = PacketStream(MAXIMUM_PACKET_SIZE)
        self._keepalive_s = KEEPALIVE_S
        self._ping_sent_at = 0.0
        self._writable.set()
        endpoint = self.endpoint
        self._write(
            encode_connect(
                endpoint.client_id,
                username=endpoint.username,
                password=endpoint.password,
                keepalive_s=KEEPALIVE_S,
                clean_start=not self._persistent,
                session_expiry_s=SESSION_EXPIRY_S if self._persistent else 0,
                receive_maximum=self._receive_maximum,
                maximum_packet_size=MAXIMUM_PACKET_SIZE,
            ),
            protocol,
        )
        keepalive = asyncio.ensure_future(self._keep_alive(protocol))
        try:
            done, _pending = await asyncio.wait(
                {protocol.lost}, timeout=CONNECT_TIMEOUT_S if not self._online else None
            )
            if not done and not self._online:
                self._abort(protocol, "no CONNACK in time")
            reason = await protocol.lost
        finally:
            keepalive.cancel()
            self._disconnected(protocol)
        return reason

    def _disconnected(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self._transport = None
            self._online = False
            self.connected.clear()
            self._out.clear()
            self._writable.set()

    async def _keep_alive(self, protocol: _Protocol) -> None:
        while True:
            await asyncio.sleep(max(self._keepalive_s / 4, 0.5))
            if not self._online or self._protocol is not protocol:
                continue
            now = time.monotonic()
            if self._ping_sent_at and now - self._ping_sent_at > self._keepalive_s:
                self._abort(protocol, f"no PINGRESP in {self._keepalive_s} s")
                return
            if not self._ping_sent_at and now - self._last_sent >= self._keepalive_s / 2:
                self._ping_sent_at = now
                self._write(PINGREQ_PACKET, protocol)

    @staticmethod
    def _abort(protocol: _Protocol, why: str) -> None:
        if not protocol.lost.done():
            protocol.lost.set_result(MqttError(why))
        if protocol.transport is not None:
            protocol.transport.abort()

    async def close(self) -> None:
        """Say DISCONNECT (the session stays, if persistent) and stop reconnecting."""
        self._closing = True
        protocol = self._protocol
        if protocol is None:
            return
        transport = self._transport
        if self._online and transport is not None:
            self._flush()
            with contextlib.suppress(OSError, RuntimeError):
                transport.write(DISCONNECT_PACKET)
        if transport is not None:
            transport.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({protocol.lost}, timeout=CONNECT_TIMEOUT_S)

    # -- flow control -----------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop taking messages (back-pressure reaches the broker, which queues them)."""
        self._reading_paused = True
        if self._transport is not None and self._online:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Take messages again after `pause_reading`."""
        self._reading_paused = False
        if self._transport is not None and self._transport.is_reading() is False:
            self._transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the socket's send buffer has room (publishers at high rates)."""
        await self._writable.wait()

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        *,
        retain: bool = False,
        properties: bytes = b"",
    ) -> asyncio.Future[None] | None:
        """Publish one message; for QoS 1 return a future done when the broker acknowledged.

        A QoS 0 message published while disconnected is kept (up to `offline_limit`) or
        counted as dropped.
        """
        self.stats.published += 1
        if qos == 0:
            packet = encode_publish(topic, payload, 0, 0, properties, retain=retain)
            if self._online:
                self._write(packet)
            elif len(self._offline) < self._offline_limit:
                self._offline.append(packet)
            else:
                self.stats.dropped_offline += 1
            return None
        if qos != 1:
            raise ValueError("RoadWatch publishes at QoS 0 or 1")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        outgoing = _Outgoing(
            topic, encode_publish(topic, payload, 1, 0, properties, retain=retain), done
        )
        if self._online and len(self._inflight) < self._server_receive_maximum:
            self._send_outgoing(outgoing)
        else:
            self._waiting.append(outgoing)
        return done

    def _send_outgoing(self, outgoing: _Outgoing) -> None:
        if not outgoing.packet_id:
            packet_id = self._new_packet_id()
            outgoing.packet_id = packet_id
            packet = outgoing.packet
            # The packet id sits right after the topic: patch it in place of the zeros.
            topic_end = _topic_end(packet)
            outgoing.packet = (
                packet[:topic_end] + packet_id.to_bytes(2, "big") + packet[topic_end + 2 :]
            )
        self._inflight[outgoing.packet_id] = outgoing
        self._write(outgoing.packet)

    def _new_packet_id(self) -> int:
        for _ in range(_MAX_PACKET_ID):
            self._next_packet_id = self._next_packet_id % _MAX_PACKET_ID + 1
            if self._next_packet_id not in self._inflight:
                return self._next_packet_id
        raise MqttError("every packet identifier is in use")

    def _fill_inflight(self) -> None:
        waiting = self._waiting
        while waiting and len(self._inflight) < self._server_receive_maximum:
            outgoing = waiting.popleft()
            if not outgoing.done.done():
                self._send_outgoing(outgoing)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, data: bytes, protocol: _Protocol | None = None) -> None:
        """Queue bytes for the socket; everything queued in one loop turn leaves together."""
        if protocol is not None and protocol is not self._protocol:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            out.clear()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self._last_sent = time.monotonic()

    # -- receiving --------------------------------------------------------------------------

    def _received(self, data: bytes, protocol: _Protocol) -> None:
        if protocol is not self._protocol:
            return
        handler = self._handler
        acks: list[bytes] = []
        try:
            for first_byte, body in self._stream.feed(data):
                if first_byte >> 4 == PUBLISH:
                    topic, packet_id, payload = decode_publish(first_byte, body)
                    self.stats.received += 1
                    pending: Awaitable[object] | None = None
                    if handler is not None:
                        try:
                            pending = handler(topic, payload, (first_byte >> 1) & 3)
                        except Exception:
                            # A message the handler cannot take would be sent again for ever.
                            self.stats.handler_errors += 1
                            log.exception("%s: MQTT handler failed on %.80s", self.name, topic)
                    if packet_id:
                        if pending is None:
                            acks.append(encode_puback(packet_id))
                        else:
                            self._ack_when_done(pending, packet_id)
                else:
                    self._control(first_byte, body, protocol)
        except MalformedPacketError as exc:
            self.stats.malformed += 1
            log.error(
                "%s: MQTT %s:%d sent a malformed packet (%s); reconnecting",
                self.name,
                self.endpoint.host,
                self.endpoint.port,
                exc,
            )
            self._write(b"".join(acks) + encode_disconnect(exc.reason_code), protocol)
            self._flush()
            self._abort(protocol, f"malformed packet: {exc}")
            return
        except MqttAuthError as exc:
            if not protocol.lost.done():
                protocol.lost.set_result(exc)
            if protocol.transport is not None:
                protocol.transport.close()
            return
        except MqttError as exc:
            self._abort(protocol, str(exc))
            return
        if acks:
            self._write(acks[0] if len(acks) == 1 else b"".join(acks), protocol)

    def _ack_when_done(self, pending: Awaitable[object], packet_id: int) -> None:
        generation = self._generation
        future = asyncio.ensure_future(pending)

        def acknowledge(done: asyncio.Future[object]) -> None:
            if done.cancelled() or done.exception() is not None:
                # Not safe: the broker delivers it again after the next reconnection.
                log.warning("%s: message %d not acknowledged: %s", self.name, packet_id, done)
                return
            if generation == self._generation:  # ids belong to the connection's session
                self._write(encode_puback(packet_id), self._protocol)

        future.add_done_callback(acknowledge)

    def _control(self, first_byte: int, body: bytes, protocol: _Protocol) -> None:
        kind = first_byte >> 4
        if kind == PUBACK:
            self._puback(body)
            return
        if first_byte & 0x0F:
            raise MalformedPacketError(f"packet type {kind} with flags {first_byte & 0x0F}")
        if kind == PINGRESP:
            self._ping_sent_at = 0.0
        elif kind == SUBACK:
            self._suback(body)
        elif kind == CONNACK:
            self._connack(body, protocol)
        elif kind == DISCONNECT:
            reason, text = decode_disconnect(body)
            raise MqttError(f"the broker disconnected us: reason 0x{reason:02x} {text}".strip())
        else:
            raise MalformedPacketError(f"unexpected packet type {kind}", PROTOCOL_ERROR)

    def _connack(self, body: bytes, protocol: _Protocol) -> None:
        endpoint = self.endpoint
        session_present, reason, properties = decode_connack(body)
        if reason >= FAILURE:
            log.error(
                "%s: MQTT %s:%d refused %s: reason 0x%02x",
                self.name,
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
        receive_maximum = properties.get(RECEIVE_MAXIMUM)
        self._server_receive_maximum = (
            receive_maximum if isinstance(receive_maximum, int) else _MAX_PACKET_ID
        )
        self._online = True
        self.online_since = time.monotonic()
        self.session_present = session_present
        self.stats.connects += 1
        log.info(
            "%s: MQTT connected to %s:%d as %s (session present: %s)",
            self.name,
            endpoint.host,
            endpoint.port,
            endpoint.username,
            session_present,
        )
        if self._reading_paused and self._transport is not None:
            self._transport.pause_reading()
        # Unacknowledged QoS 1 publishes go again, in order, then what waited (§4.4).
        for outgoing in sorted(self._inflight.values(), key=_sent_order(self._next_packet_id)):
            self.stats.resent += 1
            self._write(mark_duplicate(outgoing.packet), protocol)
        self._fill_inflight()
        offline = self._offline
        while offline:
            self._write(offline.popleft(), protocol)
        if self.subscriptions:
            self._subscribe_id = self._subscribe_id % _MAX_PACKET_ID + 1
            self._write(encode_subscribe(self._subscribe_id, self.subscriptions), protocol)
        else:
            self.connected.set()

    def _suback(self, body: bytes) -> None:
        packet_id, reasons = decode_suback(body)
        if packet_id != self._subscribe_id or len(reasons) != len(self.subscriptions):
            raise MalformedPacketError("SUBACK does not match our SUBSCRIBE", PROTOCOL_ERROR)
        for (topic_filter, _qos), reason in zip(self.subscriptions, reasons, strict=True):
            if reason >= FAILURE:
                # Nothing else would ever tell: the subscription simply receives nothing.
                self.stats.refused_subscriptions += 1
                log.error(
                    "%s: MQTT refused the subscription to %s: reason 0x%02x",
                    self.name,
                    topic_filter,
                    reason,
                )
        self.connected.set()

    def _puback(self, body: bytes) -> None:
        packet_id, reason = decode_puback(body)
        outgoing = self._inflight.pop(packet_id, None)
        if outgoing is None:
            return  # acknowledged twice (after a resend): nothing left to do
        self.stats.acknowledged += 1
        if not outgoing.done.done():
            if reason >= FAILURE:
                self.stats.refused_publishes += 1
                outgoing.done.set_exception(MqttPublishRefused(outgoing.topic, reason))
                outgoing.done.exception()  # retrieved: a caller that does not wait is fine
            else:
                outgoing.done.set_result(None)
        self._fill_inflight()


def _topic_end(packet: bytes) -> int:
    """Return where the topic of an encoded PUBLISH ends (its packet id follows)."""
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    pos += 1
    return pos + 2 + ((packet[pos] << 8) | packet[pos + 1])


def _sent_order(last_id: int) -> Callable[[_Outgoing], int]:
    """Order in-flight messages oldest first, packet ids wrapping after `last_id`."""

    def key(outgoing: _Outgoing) -> int:
        return (outgoing.packet_id - last_id - 1) % _MAX_PACKET_ID

    return key
