"""The benchmark's instruments: CAM messages, a load publisher and a delivery counter.

Neither is a candidate: the load publisher sends ready-made PUBLISH packets from its own
process (built before the run, so that it takes as little CPU as possible during it), and the
delivery counter is `mosquitto_sub`, in C, printing one empty line per message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from itertools import cycle, islice
from multiprocessing.connection import Connection

import orjson

from roadwatch.adapters.mqtt.codec import (
    CONNACK,
    DISCONNECT_PACKET,
    PUBACK,
    RECEIVE_MAXIMUM,
    PacketStream,
    decode_connack,
    encode_connect,
    encode_publish,
)

HOST = "127.0.0.1"
TOPIC_FILTER = "vehicles/+/cam"
PROBE_TOPIC = "bench/probe"
STATIONS = 10_000
MAXIMUM_PACKET_SIZE = 256 * 1024
CONNECT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0
# The load publisher writes this many packets per send; at QoS 1, at most its window in flight.
CHUNK = 500
QOS1_CHUNK = 50
# The delivery counter is done when nothing more arrived for this long.
QUIET_S = 2.0
PROBE_EVERY_S = 0.05
PROBE_SETTLE_S = 0.2


def cam_messages(stations: int = STATIONS, seed: int = 1) -> list[tuple[str, bytes]]:
    """One CAM per station around Reims: (topic, JSON payload of about 175 bytes).

    The contract's fields, plus two optional ones that bring it to the size real vehicles send.
    """
    rng = random.Random(seed)
    now_ms = 1_767_225_600_000
    messages = []
    for n in range(stations):
        station = f"vehicle-{n:06d}"
        payload = orjson.dumps(
            {
                "stationId": station,
                "stationType": 5 if n % 20 else 8,
                "timestamp": now_ms + n,
                "lat": round(rng.uniform(49.20, 49.30), 6),
                "lon": round(rng.uniform(3.95, 4.10), 6),
                "speed": round(rng.uniform(0.0, 130.0), 1),
                "heading": round(rng.uniform(0.0, 360.0), 1),
                "accuracy": round(rng.uniform(2.0, 15.0), 1),
                "source": "roadwatch-bench",
            }
        )
        messages.append((f"vehicles/{station}/cam", payload))
    return messages


def connect(port: int, client_id: str, receive_maximum: int = 0xFFFF) -> tuple[socket.socket, int]:
    """Open an MQTT 5 session on a blocking socket: (socket, the broker's Receive Maximum)."""
    sock = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        encode_connect(
            client_id,
            username="",
            password="",
            keepalive_s=0,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=receive_maximum,
            maximum_packet_size=MAXIMUM_PACKET_SIZE,
        )
    )
    stream = PacketStream(MAXIMUM_PACKET_SIZE)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the broker closed the connection before CONNACK")
        for first_byte, body in stream.feed(chunk):
            if first_byte >> 4 == CONNACK:
                _session, reason, properties = decode_connack(body)
                if reason:
                    raise ConnectionError(f"the broker refused {client_id}: 0x{reason:02x}")
                sock.settimeout(None)
                maximum = properties.get(RECEIVE_MAXIMUM, 0xFFFF)
                return sock, maximum if isinstance(maximum, int) else 0xFFFF


def _packets(qos: int, count: int) -> list[bytes]:
    messages = islice(cycle(cam_messages()), count)
    return [
        encode_publish(topic, payload, qos, n % 0xFFFF + 1 if qos else 0)
        for n, (topic, payload) in enumerate(messages)
    ]


def _send_windowed(sock: socket.socket, packets: list[bytes], window: int) -> None:
    """Send QoS 1 packets with at most `window` of them unacknowledged."""
    stream = PacketStream(MAXIMUM_PACKET_SIZE)
    count = len(packets)
    sent = acked = 0
    while acked < count:
        if sent < count and sent - acked + QOS1_CHUNK <= window:
            end = min(count, sent + QOS1_CHUNK)
            sock.sendall(b"".join(packets[sent:end]))
            sent = end
            continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the broker closed the load publisher's connection")
        for first_byte, _body in stream.feed(chunk):
            if first_byte >> 4 == PUBACK:
                acked += 1


def loader_main(port: int, qos: int, count: int, pipe: Connection) -> None:
    """The load publisher's process: publish `count` CAMs at `qos` on every "go"."""
    # Ctrl-C reaches the whole process group: the parent decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    packets = _packets(qos, count)
    chunks = [b"".join(packets[n : n + CHUNK]) for n in range(0, count, CHUNK)]
    sock, receive_maximum = connect(port, f"bench-load-{os.getpid()}")
    window = min(receive_maximum, 0xFFFF)
    pipe.send("ready")
    try:
        while pipe.recv() is not None:
            began = time.perf_counter()
            if qos:
                _send_windowed(sock, packets, window)
            else:
                for chunk in chunks:
                    sock.sendall(chunk)
            pipe.send(time.perf_counter() - began)
    finally:
        with contextlib.suppress(OSError):
            sock.sendall(DISCONNECT_PACKET)
        sock.close()


class LoadPublisher:
    """The load publisher's process, started once per workload and run once per candidate."""

    def __init__(self, port: int, qos: int, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process: multiprocessing.process.BaseProcess = context.Process(
            target=loader_main, args=(port, qos, count, child), name="bench-mqtt-load", daemon=True
        )

    def __enter__(self) -> LoadPublisher:
        self._process.start()
        if not self._pipe.poll(READY_TIMEOUT_S):
            self.__exit__()
            raise RuntimeError(f"the load publisher was not ready in {READY_TIMEOUT_S:.0f} s")
        self._pipe.recv()
        return self

    def go(self) -> None:
        """Publish every message once, now."""
        self._pipe.send("go")

    def wait(self, timeout_s: float) -> float | None:
        """Seconds the last run took; None when it did not end in `timeout_s`."""
        if not self._pipe.poll(timeout_s):
            return None
        elapsed: float = self._pipe.recv()
        return elapsed

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(None)
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)


class DeliveryCounter:
    """Count what the broker delivers on the CAM topics to `mosquitto_sub` (QoS 0)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> DeliveryCounter:
        mosquitto_sub = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self._process = subprocess.Popen(
            [
                mosquitto_sub,
                *("-h", HOST, "-p", str(self.port), "-q", "0", "-F", ""),
                *("-t", TOPIC_FILTER, "-t", PROBE_TOPIC),
                *("-i", f"bench-counter-{os.getpid()}"),
            ],
            stdout=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, name="bench-counter", daemon=True)
        self._reader.start()
        try:
            self._probe()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.lines += chunk.count(b"\n")

    def _probe(self) -> None:
        """Return once the subscription is in place: a probe message came through."""
        sock, _maximum = connect(self.port, f"bench-probe-{os.getpid()}")
        try:
            probe = encode_publish(PROBE_TOPIC, b"probe")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not self.lines:
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto_sub received nothing")
                sock.sendall(probe)
                time.sleep(PROBE_EVERY_S)
            sock.sendall(DISCONNECT_PACKET)
        finally:
            sock.close()
        time.sleep(PROBE_SETTLE_S)  # the probes still in flight

    def count_from(self, start: int, expected: int, timeout_s: float) -> int:
        """Messages counted since `start`: once `expected` came, or nothing more for a while."""
        deadline = time.monotonic() + timeout_s
        last = self.lines
        moved_at = time.monotonic()
        while self.lines - start < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            if self.lines != last:
                last = self.lines
                moved_at = time.monotonic()
            elif time.monotonic() - moved_at > QUIET_S:
                break
        return self.lines - start

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        if self._reader is not None:
            self._reader.join(5.0)
        if process is not None and process.stdout is not None:
            process.stdout.close()
