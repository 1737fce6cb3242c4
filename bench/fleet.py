"""A lean CAM load generator for the pipeline benchmark: vehicles on the Reims road network.

Each publisher process drives its own share of the stations along the road network and writes
their CAMs as ready-made MQTT 5 PUBLISH packets (QoS 0, fleet account; encoded with
roadwatch.adapters.mqtt.codec) straight to a socket, so that the load generator takes as little
as possible of the two cores the system under test shares with it: about 3 µs per CAM,
position and JSON included.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import os
import random
import signal
import socket
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection

import orjson

from roadwatch.adapters.mqtt.codec import (
    CONNACK,
    DISCONNECT_PACKET,
    PUBLISH,
    PacketStream,
    decode_connack,
    encode_connect,
    encode_string,
    encode_varint,
)
from roadwatch.simulation.network import REIMS_NETWORK_PATH, Edge, RoadNetwork, load_network

# One slow group (vehicles 20 m apart at walking pace on one road) per this many stations:
# enough slow reports in one cell for the jam rule.
STATIONS_PER_SLOW_GROUP = 200
SLOW_GROUP_SIZE = 8
SLOW_GROUP_SPACING_M = 20.0
SLOW_SPEED_KMH = (6.0, 14.0)
FREE_SPEED_SHARE = (0.6, 1.0)  # of the road's speed limit
# Paced publishing wakes up this often and sends what is due since the last time.
SLICE_S = 0.005
# Flat out, packets go to the socket in chunks of this many.
FLAT_OUT_CHUNK = 500
MQTT_CONNECT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0
MAXIMUM_PACKET_SIZE = 64 * 1024
# A PUBLISH at QoS 0 (MQTT 5 §3.3): this first byte, the remaining length, then the topic and
# an empty property block (both fixed per station, encoded once), then the payload.
PUBLISH_QOS0 = bytes((PUBLISH << 4,))
NO_PROPERTIES = encode_varint(0)


@dataclass(frozen=True)
class Broker:
    """Where and as whom the publishers connect (picklable, for the child processes)."""

    host: str
    port: int
    username: str
    password: str


@dataclass(frozen=True)
class Run:
    """One publishing run: `rate` msg/s over `stations` stations (0: flat out, all of them).

    `duration_s` None: until the parent sends anything on the pipe.
    """

    rate: float
    stations: int
    duration_s: float | None


@dataclass(frozen=True)
class RunResult:
    sent: int
    elapsed_s: float
    cpu_s: float


def mqtt_connect(broker: Broker, client_id: str) -> socket.socket:
    """Open an MQTT 5 session (clean, no keepalive) and return its socket."""
    sock = socket.create_connection((broker.host, broker.port), timeout=MQTT_CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        encode_connect(
            client_id,
            username=broker.username,
            password=broker.password,
            keepalive_s=0,
            clean_start=True,
            session_expiry_s=0,
            receive_maximum=1,  # nothing is subscribed, nothing comes back
            maximum_packet_size=MAXIMUM_PACKET_SIZE,
        )
    )
    stream = PacketStream(MAXIMUM_PACKET_SIZE)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the broker closed the connection before CONNACK")
        for first_byte, body in stream.feed(chunk):
            if first_byte >> 4 != CONNACK:
                raise ConnectionError(f"the broker answered CONNECT with packet {first_byte:#x}")
            _session, reason, _properties = decode_connack(body)
            if reason:
                raise ConnectionError(f"the broker refused {broker.username}: 0x{reason:02x}")
            sock.settimeout(None)
            return sock


class Population:
    """Stations `first` … `first + count - 1`, each driving along the network at its speed."""

    def __init__(self, network: RoadNetwork, first: int, count: int, seed: int) -> None:
        rng = random.Random(seed * 1_000_003 + first)
        edges = network.edges
        self._network = network
        self._edges = edges
        weights = [edge.length_m for edge in edges]
        self.ids = [f"bench-{first + n:06d}" for n in range(count)]
        self._topics = [
            encode_string(f"vehicles/{station}/cam") + NO_PROPERTIES for station in self.ids
        ]
        self._types = [8 if n % 20 == 0 else 6 if n % 50 == 1 else 5 for n in range(count)]
        self._edge: list[Edge] = []
        self._along: list[float] = []
        self._speed: list[float] = []
        # The route key: a slow group's members take the same turns, so they stay together.
        self._route_key: list[int] = []
        self._slow: list[bool] = []
        self._last_ms: list[int] = [0] * count
        groups = count // STATIONS_PER_SLOW_GROUP
        slow_members = groups * SLOW_GROUP_SIZE
        for group in range(groups):
            edge = rng.choices(edges, weights)[0]
            start = rng.uniform(0.0, max(0.0, edge.length_m - 200.0))
            speed = rng.uniform(*SLOW_SPEED_KMH)
            for member in range(SLOW_GROUP_SIZE):
                self._edge.append(edge)
                self._along.append(start + member * SLOW_GROUP_SPACING_M)
                self._speed.append(speed)
                self._route_key.append(-(first + group))  # never a free vehicle's key
                self._slow.append(True)
        for n in range(slow_members, count):
            edge = rng.choices(edges, weights)[0]
            self._edge.append(edge)
            self._along.append(rng.uniform(0.0, edge.length_m))
            self._speed.append(edge.speed_limit_kmh * rng.uniform(*FREE_SPEED_SHARE))
            self._route_key.append(first + n)
            self._slow.append(False)
        self._share = [
            speed / edge.speed_limit_kmh
            for speed, edge in zip(self._speed, self._edge, strict=True)
        ]
        self._cursor = 0

    def _next_edge(self, n: int, edge: Edge) -> Edge:
        options = self._network.edges_from(edge.to_node) or self._edges
        key = zlib.crc32(f"{self._route_key[n]}:{edge.id}".encode())
        return options[key % len(options)]

    def packets(self, how_many: int, active: int, now_ms: int) -> bytes:
        """Move the next `how_many` of the first `active` stations to now; return their CAMs."""
        out: list[bytes] = []
        dumps = orjson.dumps
        cursor = self._cursor if self._cursor < active else 0
        for _ in range(how_many):
            n = cursor
            cursor = cursor + 1 if cursor + 1 < active else 0
            last = self._last_ms[n]
            self._last_ms[n] = now_ms
            edge = self._edge[n]
            along = self._along[n]
            if last:
                along += self._speed[n] / 3.6 * (now_ms - last) / 1000.0
                while along > edge.length_m:
                    along -= edge.length_m
                    edge = self._next_edge(n, edge)
                    self._edge[n] = edge
                    if not self._slow[n]:
                        self._speed[n] = edge.speed_limit_kmh * self._share[n]
                self._along[n] = along
            lat, lon, heading = edge.position_at(along)
            payload = dumps(
                {
                    "stationId": self.ids[n],
                    "stationType": self._types[n],
                    "timestamp": now_ms,
                    "lat": round(lat, 6),
                    "lon": round(lon, 6),
                    "speed": round(self._speed[n], 1),
                    "heading": round(heading % 360.0, 1),
                }
            )
            topic = self._topics[n]
            out.append(PUBLISH_QOS0 + encode_varint(len(topic) + len(payload)) + topic + payload)
        self._cursor = cursor
        return b"".join(out)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _publish(sock: socket.socket, population: Population, run: Run, pipe: Connection) -> RunResult:
    active = min(run.stations, len(population.ids)) or len(population.ids)
    cpu_before = _cpu_s()
    started = time.perf_counter()
    sent = 0
    checks = 0
    while True:
        elapsed = time.perf_counter() - started
        if run.duration_s is not None and elapsed >= run.duration_s:
            break
        checks += 1
        if run.duration_s is None and checks % 20 == 0 and pipe.poll():
            pipe.recv()
            break
        if run.rate > 0:
            due = int(run.rate * elapsed) - sent
            if due <= 0:
                time.sleep(SLICE_S)
                continue
        else:
            due = FLAT_OUT_CHUNK
        sock.sendall(population.packets(due, active, int(time.time() * 1000)))
        sent += due
    return RunResult(sent, time.perf_counter() - started, _cpu_s() - cpu_before)


def publisher_main(broker: Broker, first: int, count: int, seed: int, pipe: Connection) -> None:
    """A publisher process: connect, then publish each Run received until told None."""
    # Ctrl-C reaches the whole process group: the parent decides when publishers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    population = Population(load_network(REIMS_NETWORK_PATH), first, count, seed)
    sock = mqtt_connect(broker, f"roadwatch-bench-{os.getpid()}")
    pipe.send("ready")
    try:
        while True:
            run = pipe.recv()
            if run is None:
                break
            pipe.send(_publish(sock, population, run, pipe))
    finally:
        with contextlib.suppress(OSError):
            sock.sendall(DISCONNECT_PACKET)
        sock.close()


class Publishers:
    """Publisher processes sharing a population of stations; runs are given to all at once."""

    def __init__(self, broker: Broker, stations: int, processes: int, seed: int = 1) -> None:
        self.broker = broker
        self.stations = stations
        self.processes = processes
        self.seed = seed
        self._pipes: list[Connection] = []
        self._children: list[multiprocessing.process.BaseProcess] = []
        self.pids: list[int] = []

    def __enter__(self) -> Publishers:
        context = multiprocessing.get_context("spawn")
        share = self.stations // self.processes
        for n in range(self.processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=publisher_main,
                args=(self.broker, n * share, share, self.seed, child),
                name=f"bench-publisher-{n}",
                daemon=True,
            )
            process.start()
            self._pipes.append(parent)
            self._children.append(process)
        for pipe in self._pipes:
            if not pipe.poll(READY_TIMEOUT_S):
                raise RuntimeError(f"a publisher did not connect in {READY_TIMEOUT_S:.0f} s")
            pipe.recv()
        self.pids = [process.pid or 0 for process in self._children]
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._children:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)

    def start(self, rate: float, stations: int, duration_s: float | None) -> None:
        """Start a run on every process: `rate` msg/s in all over `stations` stations."""
        run = Run(rate / self.processes, max(1, stations // self.processes), duration_s)
        for pipe in self._pipes:
            pipe.send(run)

    def stop(self) -> None:
        """End a run started without a duration."""
        for pipe in self._pipes:
            pipe.send("stop")

    def results(self, timeout_s: float) -> list[RunResult]:
        found: list[RunResult] = []
        for pipe in self._pipes:
            if not pipe.poll(timeout_s):
                raise RuntimeError("a publisher did not finish its run")
            found.append(pipe.recv())
        return found
