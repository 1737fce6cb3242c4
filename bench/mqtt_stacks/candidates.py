"""The MQTT stacks compared, each behind the same small interface.

Each candidate connects, subscribes and publishes the way its stack is meant to be used;
the measurement around it (child.py) is the same for all. Every candidate runs inside
`asyncio.run`: the threaded ones leave the event loop idle and do their work on their own
threads, as they would in a service.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from bench.mqtt_stacks.broker import RECEIVE_MAXIMUM
from bench.mqtt_stacks.wire import (
    CONNECT_TIMEOUT_S,
    HOST,
    MAXIMUM_PACKET_SIZE,
    TOPIC_FILTER,
    connect,
)
from roadwatch.adapters.mqtt.codec import (
    DISCONNECT_PACKET,
    PUBACK,
    PUBLISH,
    SUBACK,
    PacketStream,
    decode_publish,
    encode_puback,
    encode_publish,
    encode_subscribe,
)

# (topic, payload): what every candidate's callback is given.
Handler = Callable[[str, bytes], None]

KEEPALIVE_S = 60
# paho's loop_misc (keep-alive, timeouts) runs this often on the event loop.
MISC_EVERY_S = 1.0
# How often a QoS 0 publisher checks that its stack has written everything out.
WRITTEN_POLL_S = 0.001
# The former thread intake's reads and its MQTT 5 Receive Maximum (the event-loop client's too).
RECEIVE_CHUNK = 256 * 1024
INTAKE_RECEIVE_MAXIMUM = 4096


class Unavailable(Exception):
    """The candidate's stack cannot be imported here."""


def _no_delay(sock: object) -> None:
    """Turn Nagle off: production clients do (it costs milliseconds per message)."""
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Candidate(abc.ABC):
    """One MQTT stack: connect (and subscribe), publish, wait until published, close."""

    key: ClassVar[str]
    label: ClassVar[str]  # for the table
    title: ClassVar[str]  # what exactly runs
    # Its stack calls back on threads of its own (not on the event loop).
    threaded: ClassVar[bool] = False
    # False: it only publishes (the receive workloads leave it out).
    receives: ClassVar[bool] = True

    def __init__(self) -> None:
        # Published messages the stack is done with: written out (QoS 0) or acknowledged (QoS 1).
        self.finished = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._target = 0

    async def start(self, port: int, client_id: str, on_message: Handler | None, qos: int) -> None:
        """Connect; with a handler, subscribe to the CAM topics at `qos` (SUBACK in hand)."""
        self._loop = asyncio.get_running_loop()
        await self.connect(port, client_id, on_message, qos)

    @abc.abstractmethod
    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        """Do what `start` says, the stack's way."""

    @abc.abstractmethod
    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Hand one message to the stack (`qos` is the one given to `start`)."""

    async def pace(self) -> None:
        """Between two batches of publishes: give the event loop its turn."""
        if not self.threaded:
            await asyncio.sleep(0)

    async def flush(self, count: int, qos: int) -> None:
        """Wait until the stack is done with the `count` messages published."""
        await self.wait_finished(count)

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect cleanly and stop the stack's threads or tasks."""

    def _finished_one(self) -> None:
        """Count one published message done; called by the stack, on its own thread or not."""
        self.finished += 1
        waiter = self._waiter
        if waiter is not None and self.finished >= self._target:
            self._waiter = None
            if self.threaded:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(_resolve, waiter)
            else:
                _resolve(waiter)

    async def wait_finished(self, target: int) -> None:
        """Wait until the stack is done with `target` published messages."""
        assert self._loop is not None
        while self.finished < target:
            waiter = self._loop.create_future()
            self._target = target
            self._waiter = waiter
            if self.finished >= target:  # it came in between
                self._waiter = None
                return
            await asyncio.wait_for(waiter, CONNECT_TIMEOUT_S)


def _paho_client(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


class PahoThread(Candidate):
    """paho-mqtt as the partitioned gateway and the publishers use it today."""

    key = "paho-thread"
    label = "paho, network thread"
    title = "paho-mqtt with its network thread (loop_start) and an on_message callback"
    threaded = True
    client: paho.Client

    def __init__(self) -> None:
        super().__init__()
        self._last: paho.MQTTMessageInfo | None = None

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        client = self.client = _paho_client(client_id)
        ready = threading.Event()

        def connected(
            client: paho.Client, userdata: object, flags: Any, reason: Any, properties: Any
        ) -> None:
            _no_delay(client.socket())
            if on_message is None:
                ready.set()
            else:
                client.subscribe(TOPIC_FILTER, qos)

        client.on_connect = connected
        client.on_subscribe = lambda *args: ready.set()
        if on_message is not None:
            client.on_message = lambda c, u, message: on_message(
                message.topic, cast(bytes, message.payload)
            )
        if qos:
            # Only QoS 1 needs it: for QoS 0, paho would build reason and properties objects
            # for every message written.
            client.on_publish = lambda *args: self._finished_one()
        client.max_inflight_messages_set(RECEIVE_MAXIMUM)
        client.connect(HOST, port, keepalive=KEEPALIVE_S)
        client.loop_start()
        if not await asyncio.to_thread(ready.wait, CONNECT_TIMEOUT_S):
            raise RuntimeError("paho: no CONNACK or SUBACK")

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self._last = self.client.publish(topic, payload, qos)

    async def flush(self, count: int, qos: int) -> None:
        if qos:
            await self.wait_finished(count)
        elif self._last is not None:
            await asyncio.to_thread(self._last.wait_for_publish, CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class _NoLock:
    """A lock that locks nothing: every paho call happens on the event loop's thread."""

    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        return None


# paho-mqtt 2.x's internal locks, needless when one thread does everything.
_PAHO_LOCKS = (
    "_in_callback_mutex",
    "_callback_mutex",
    "_msgtime_mutex",
    "_out_message_mutex",
    "_in_message_mutex",
    "_reconnect_delay_mutex",
    "_mid_generate_mutex",
)


class PahoAsyncio(Candidate):
    """paho-mqtt driven by the event loop, the way Home Assistant's MQTT integration does.

    The socket is registered with `add_reader` (and `add_writer` while paho has bytes to
    send), which call `loop_read`/`loop_write`; `loop_misc` runs once a second; paho's locks
    are replaced by ones that do nothing.
    """

    key = "paho-asyncio"
    label = "paho, event loop"
    title = "paho-mqtt on the event loop (add_reader/add_writer, loop_read/write/misc, no locks)"
    client: paho.Client

    def __init__(self) -> None:
        super().__init__()
        self._misc: asyncio.TimerHandle | None = None
        self._last: paho.MQTTMessageInfo | None = None
        self._gone: asyncio.Future[None] | None = None

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        loop = asyncio.get_running_loop()
        client = self.client = _paho_client(client_id)
        missing = [name for name in _PAHO_LOCKS if not hasattr(client, name)]
        if missing:
            raise RuntimeError(f"this paho-mqtt has no {', '.join(missing)}")
        for name in _PAHO_LOCKS:
            setattr(client, name, _NoLock())
        ready: asyncio.Future[None] = loop.create_future()
        gone: asyncio.Future[None] = loop.create_future()
        self._gone = gone

        def opened(client: paho.Client, userdata: object, sock: Any) -> None:
            _no_delay(sock)
            loop.add_reader(sock, self._read)

        def closed(client: paho.Client, userdata: object, sock: Any) -> None:
            loop.remove_reader(sock)
            _resolve(gone)

        def connected(
            client: paho.Client, userdata: object, flags: Any, reason: Any, properties: Any
        ) -> None:
            if on_message is None:
                _resolve(ready)
            else:
                client.subscribe(TOPIC_FILTER, qos)

        client.on_socket_open = opened
        client.on_socket_close = closed
        client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, self._write)

        def unregister_write(client: paho.Client, userdata: object, sock: Any) -> None:
            loop.remove_writer(sock)

        client.on_socket_unregister_write = unregister_write
        client.on_connect = connected
        client.on_subscribe = lambda *args: _resolve(ready)
        if on_message is not None:
            client.on_message = lambda c, u, message: on_message(
                message.topic, cast(bytes, message.payload)
            )
        if qos:
            client.on_publish = lambda *args: self._finished_one()
        client.max_inflight_messages_set(RECEIVE_MAXIMUM)
        # A blocking connect, on the loopback interface: immediate.
        client.connect(HOST, port, keepalive=KEEPALIVE_S)
        self._misc = loop.call_later(MISC_EVERY_S, self._run_misc)
        await asyncio.wait_for(ready, CONNECT_TIMEOUT_S)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

    def _run_misc(self) -> None:
        if self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            assert self._loop is not None
            self._misc = self._loop.call_later(MISC_EVERY_S, self._run_misc)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self._last = self.client.publish(topic, payload, qos)

    async def flush(self, count: int, qos: int) -> None:
        if qos:
            await self.wait_finished(count)
            return
        last = self._last
        # paho tells a QoS 0 message written only to an on_publish callback, which costs
        # every message: poll the last one instead.
        while last is not None and not last.is_published():  # noqa: ASYNC110
            await asyncio.sleep(WRITTEN_POLL_S)

    async def close(self) -> None:
        self.client.disconnect()
        if self._gone is not None:
            await asyncio.wait_for(self._gone, CONNECT_TIMEOUT_S)
        if self._misc is not None:
            self._misc.cancel()


def _counting_storage(on_acknowledged: Callable[[], None]) -> Any:
    """A gmqtt message store that counts the QoS 1 messages the broker acknowledged."""
    from gmqtt.storage import PersistentStorage  # noqa: PLC0415

    class CountingStorage(PersistentStorage):  # type: ignore[misc]
        def remove_message_by_mid(self, mid: int) -> None:
            super().remove_message_by_mid(mid)
            on_acknowledged()

    return CountingStorage()


class Gmqtt(Candidate):
    """gmqtt, asyncio native; a QoS 1 message is acknowledged once its callback returned."""

    key = "gmqtt"
    label = "gmqtt"
    title = "gmqtt (asyncio; QoS 1 acknowledged after the callback: optimistic_acknowledgement off)"

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        try:
            from gmqtt import Client  # noqa: PLC0415
        except ImportError as exc:
            raise Unavailable(f"gmqtt is not installed: {exc}") from exc
        loop = asyncio.get_running_loop()
        client = self.client = Client(
            client_id,
            optimistic_acknowledgement=False,
            persistent_storage=_counting_storage(self._finished_one),
        )
        subscribed: asyncio.Future[None] = loop.create_future()
        client.on_subscribe = lambda *args: _resolve(subscribed)
        if on_message is not None:
            if qos:
                # gmqtt acknowledges after the callback only when the callback is a coroutine
                # function (it then runs each message in a task of its own).
                async def received_async(
                    client: Any, topic: str, payload: bytes, qos: int, properties: Any
                ) -> int:
                    on_message(topic, payload)
                    return 0

                client.on_message = received_async
            else:

                def received(
                    client: Any, topic: str, payload: bytes, qos: int, properties: Any
                ) -> int:
                    on_message(topic, payload)
                    return 0

                client.on_message = received
        await client.connect(HOST, port, keepalive=KEEPALIVE_S)
        if on_message is not None:
            client.subscribe(TOPIC_FILTER, qos=qos)
            await asyncio.wait_for(subscribed, CONNECT_TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.client.publish(topic, payload, qos=qos)

    async def flush(self, count: int, qos: int) -> None:
        if qos:
            await self.wait_finished(count)
            return
        # gmqtt tells nothing when a QoS 0 message is written: watch its transport's buffer.
        transport = self.client._connection._transport
        while transport.get_write_buffer_size():  # noqa: ASYNC110
            await asyncio.sleep(WRITTEN_POLL_S)

    async def close(self) -> None:
        await self.client.disconnect()


class _CodecThread:
    """The codec on a blocking socket, with a reader thread.

    Driven the way the gateway's intake (MqttSubscriber) drove it before the event-loop
    client: large reads, every packet of a chunk decoded, the handler called on the reader
    thread, the chunk's PUBACKs sent together once its handlers returned. Publishing is one
    `sendall` per message; the reader counts the PUBACKs.
    """

    def __init__(
        self,
        port: int,
        client_id: str,
        on_message: Handler | None,
        qos: int,
        acknowledged: Callable[[], None],
    ) -> None:
        self._sock, _receive_maximum = connect(port, client_id, INTAKE_RECEIVE_MAXIMUM)
        self._stream = PacketStream(MAXIMUM_PACKET_SIZE)
        self._on_message = on_message
        self._acknowledged = acknowledged
        self._packet_id = 0
        if on_message is not None:
            self._subscribe(qos)
        # A thread client wakes up to send its keep-alives: a timeout, so Python polls the
        # socket before every read (as MqttSubscriber did).
        self._sock.settimeout(KEEPALIVE_S / 2)
        self._reader = threading.Thread(target=self._read, name="bench-mqtt-reader", daemon=True)
        self._reader.start()

    def _subscribe(self, qos: int) -> None:
        self._sock.sendall(encode_subscribe(1, ((TOPIC_FILTER, qos),)))
        while True:
            chunk = self._sock.recv(RECEIVE_CHUNK)
            if not chunk:
                raise ConnectionError("the broker closed the connection before SUBACK")
            for first_byte, _body in self._stream.feed(chunk):
                if first_byte >> 4 == SUBACK:
                    return

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        packet_id = 0
        if qos:
            self._packet_id = packet_id = self._packet_id % 0xFFFF + 1
        self._sock.sendall(encode_publish(topic, payload, qos, packet_id))

    def _read(self) -> None:
        sock = self._sock
        stream = self._stream
        handler = self._on_message
        acknowledged = self._acknowledged
        try:
            while True:
                try:
                    chunk = sock.recv(RECEIVE_CHUNK)
                except TimeoutError:
                    continue  # time for a keep-alive, in a real client
                if not chunk:
                    return
                acks: list[bytes] = []
                for first_byte, body in stream.feed(chunk):
                    kind = first_byte >> 4
                    if kind == PUBLISH:
                        topic, packet_id, payload = decode_publish(first_byte, body)
                        if handler is not None:
                            handler(topic, payload)
                        if packet_id:
                            acks.append(encode_puback(packet_id))
                    elif kind == PUBACK:
                        acknowledged()
                if acks:
                    sock.sendall(b"".join(acks))
        except OSError:
            return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(DISCONNECT_PACKET)  # the broker then closes: the reader ends
        self._reader.join(CONNECT_TIMEOUT_S)
        self._sock.close()


class OwnThread(Candidate):
    """The codec with a reader thread, as the gateway's intake used it (MqttSubscriber)."""

    key = "own-thread"
    label = "own codec, thread"
    title = (
        "own codec on a blocking socket with a reader thread, as the former MqttSubscriber"
        " intake drove it; publishing: one sendall per message"
    )
    threaded = True

    def __init__(self) -> None:
        super().__init__()
        self._client: _CodecThread | None = None

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        self._client = _CodecThread(port, client_id, on_message, qos, self._finished_one)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        assert self._client is not None
        self._client.publish(topic, payload, qos)
        if not qos:
            self.finished += 1  # sendall returned: written out

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)


class OwnAsyncio(Candidate):
    """RoadWatch's own MQTT client on the event loop (roadwatch.adapters.mqtt.MqttClient)."""

    key = "own-asyncio"
    label = "own codec, event loop"
    title = "own codec on the event loop (MqttClient: a Protocol, acknowledgements per chunk)"

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[None]] = deque()

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        try:
            from roadwatch.adapters.mqtt import MqttClient, MqttEndpoint  # noqa: PLC0415
        except ImportError as exc:
            raise Unavailable(f"roadwatch.adapters.mqtt.MqttClient: {exc}") from exc

        def received(topic: str, payload: bytes, qos: int) -> None:
            assert on_message is not None
            on_message(topic, payload)

        self.client = MqttClient(
            MqttEndpoint(HOST, port, "", "", client_id),
            name="bench",
            subscriptions=((TOPIC_FILTER, qos),) if on_message is not None else (),
            on_message=received if on_message is not None else None,
        )
        self._task = asyncio.create_task(self.client.run())
        await self.client.wait_connected(CONNECT_TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        done = self.client.publish(topic, payload, qos)
        if done is not None:
            self._pending.append(done)

    async def pace(self) -> None:
        await asyncio.sleep(0)
        await self.client.drain()

    async def wait_finished(self, target: int) -> None:
        pending = self._pending
        while self.finished < target:
            await pending.popleft()
            self.finished += 1

    async def flush(self, count: int, qos: int) -> None:
        if qos:
            await self.wait_finished(count)
            return
        await asyncio.sleep(0)  # its writes of this turn leave at the end of the turn
        # Nothing tells when the transport's buffer is empty: watch it.
        transport = self.client._transport
        while transport is not None and transport.get_write_buffer_size():  # noqa: ASYNC110
            await asyncio.sleep(WRITTEN_POLL_S)

    async def close(self) -> None:
        await self.client.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, CONNECT_TIMEOUT_S)


class OwnBlocking(Candidate):
    """The event-loop client publishing for a plain thread (BlockingPublisher).

    What the simulator and `roadwatch replay` use: the client runs on an event loop in a
    thread of its own, and `publish` hands messages over from the caller's thread.
    """

    key = "own-blocking"
    label = "own client, from a thread"
    title = "MqttClient on a loop thread, publishing for a plain thread (BlockingPublisher)"
    threaded = True
    receives = False

    def __init__(self) -> None:
        super().__init__()
        self.publisher: Any = None
        self._deliveries: list[Any] = []

    async def connect(
        self, port: int, client_id: str, on_message: Handler | None, qos: int
    ) -> None:
        try:
            from roadwatch.adapters.mqtt import BlockingPublisher, MqttEndpoint  # noqa: PLC0415
        except ImportError as exc:
            raise Unavailable(f"roadwatch.adapters.mqtt.BlockingPublisher: {exc}") from exc
        if on_message is not None:
            raise Unavailable("BlockingPublisher only publishes")
        self.publisher = BlockingPublisher(
            MqttEndpoint(HOST, port, "", "", client_id), name="bench"
        )
        await asyncio.to_thread(self.publisher.start, CONNECT_TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        delivery = self.publisher.publish(topic, payload, qos)
        if delivery is not None:
            self._deliveries.append(delivery)

    async def wait_finished(self, target: int) -> None:
        # The caller's thread waits, as a synchronous publisher would (the harness's event
        # loop has nothing else to do meanwhile).
        if target > self.finished:
            self._deliveries[target - 1].wait(CONNECT_TIMEOUT_S)
            self.finished = target

    async def flush(self, count: int, qos: int) -> None:
        self.publisher.flush(CONNECT_TIMEOUT_S)
        if qos:
            return
        # flush() returns once the client took every message: wait until written out too.
        transport = self.publisher._client._transport
        while transport is not None and transport.get_write_buffer_size():  # noqa: ASYNC110
            await asyncio.sleep(WRITTEN_POLL_S)

    async def close(self) -> None:
        await asyncio.to_thread(self.publisher.stop)


CANDIDATES: tuple[type[Candidate], ...] = (
    PahoThread,
    PahoAsyncio,
    Gmqtt,
    OwnThread,
    OwnAsyncio,
    OwnBlocking,
)


def by_key(key: str) -> type[Candidate]:
    """The candidate class named `key`."""
    for candidate in CANDIDATES:
        if candidate.key == key:
            return candidate
    raise KeyError(key)
