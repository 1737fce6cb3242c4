"""The simulator service: drives simulated vehicles and publishes their CAMs and DENMs over MQTT.

Fleet mode publishes with the fleet account over a few connections; vehicle mode connects each
vehicle as itself, so the broker's per-vehicle ACL is exercised (docs/contract/mqtt.md §8).

The simulator outlives broker restarts: its connections come back by themselves, DENMs (QoS 1)
are kept and sent again until acknowledged, and CAMs (QoS 0) published while the broker is away
are kept only for a couple of seconds' worth (`offline_limit`): a live demo coming back from an
outage sends a short burst of slightly old positions, not minutes of stale ones.
"""

from __future__ import annotations

import importlib
import logging
import math
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import orjson

from roadwatch.adapters.mqtt import BlockingPublisher, EventLoopThread, MqttEndpoint, MqttError
from roadwatch.services.simulator_metrics import SimulatorMetrics
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.settings import Settings
from roadwatch.simulation.cam import Publication
from roadwatch.simulation.demo import DemoTraffic

log = logging.getLogger(__name__)

TICK_S = 1.0  # CAMs at 1 Hz per vehicle
DEFAULT_CONNECTIONS = 2
# Each vehicle-mode connection has an account of its own in the registry, and its own session
# on the broker: beyond a few hundred that is all overhead.
MAX_VEHICLE_CONNECTIONS = 200
# While the broker is away, each connection keeps its vehicles' CAMs for this long (at least
# MIN_OFFLINE_LIMIT of them); later ones are dropped and counted.
OFFLINE_KEEP_S = 2.0
MIN_OFFLINE_LIMIT = 100
# On stop, time left for the broker to acknowledge the last DENMs (supervisors wait ~10 s).
STOP_TIMEOUT_S = 3.0
# With no --duration, a faster-than-real-time run starts this much simulated time in the past,
# and falls back to real time once its clock has caught up with the wall clock.
DEFAULT_HORIZON_S = 3600.0
LOG_EVERY_S = 5.0
LIVE_EVERY_S = 1.0


class Simulation(Protocol):
    """What the service needs from a traffic simulation."""

    def tick(self, dt_s: float) -> list[Publication]: ...

    def counters(self) -> dict[str, int]: ...

    def ground_truth(self) -> list[dict[str, Any]]: ...


class Sink(Protocol):
    """Where encoded publications go."""

    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...

    def close(self) -> None: ...


class SimulatorError(Exception):
    """The simulator cannot run as asked."""


class DemoSimulation:
    """The demo traffic behind the `Simulation` interface."""

    def __init__(self, vehicles: int, seed: int, start_ms: int) -> None:
        self.traffic = DemoTraffic(vehicles, seed, start_ms)

    def tick(self, dt_s: float) -> list[Publication]:
        return self.traffic.tick(dt_s)

    def counters(self) -> dict[str, int]:
        return {"accidents": self.traffic.accidents}

    def ground_truth(self) -> list[dict[str, Any]]:
        return []


DEFAULT_SCENARIO = "demo"
# The original demo (vehicles circling the cathedral), kept as a scenario that needs no network.
CIRCLES_SCENARIO = "circles"


def make_simulation(  # noqa: PLR0917
    vehicles: int,
    seed: int,
    start_ms: int,
    scenario: str = DEFAULT_SCENARIO,
    network: Path | None = None,
    zones: Path | None = None,
    *,
    zone_hysteresis_m: float = 0.0,
    zone_timeout_ms: int = 600_000,
) -> Simulation:
    """Build the simulation: a scenario of the city model on a road network, or the circles.

    `zones` is the GeoJSON zones file whose crossings the scenarios stage
    (docs/contract/detection.md §6); the hysteresis and timeout are the detector's defaults, which
    the expected crossings follow.
    """
    if scenario == CIRCLES_SCENARIO:
        return DemoSimulation(vehicles, seed, start_ms)
    try:
        # Imported by name: the circles run without the city model and its scenarios.
        city: Any = importlib.import_module("roadwatch.simulation.city")
        staged: Any = importlib.import_module("roadwatch.simulation.scenarios")
    except ImportError as exc:
        if scenario == DEFAULT_SCENARIO and network is None:
            log.warning("city model unavailable (%s): simulating the circles demo", exc)
            return DemoSimulation(vehicles, seed, start_ms)
        raise SimulatorError(f"scenario {scenario!r} needs the city model: {exc}") from exc
    from roadwatch.simulation.network import (  # noqa: PLC0415
        REIMS_NETWORK_PATH,
        InvalidNetwork,
        NoRoute,
        load_network,
    )

    scenarios: Mapping[str, Callable[[], Any]] = staged.SCENARIOS
    if scenario not in scenarios:
        known = ", ".join(sorted([*scenarios, CIRCLES_SCENARIO]))
        raise SimulatorError(f"unknown scenario {scenario!r}; known: {known}")
    from roadwatch.simulation.geofence import InvalidZoneFile, load_zone_shapes  # noqa: PLC0415

    try:
        road_network = load_network(network or REIMS_NETWORK_PATH)
    except (OSError, InvalidNetwork) as exc:
        raise SimulatorError(f"cannot load road network {network}: {exc}") from exc
    shapes = []
    if zones is not None:
        try:
            shapes = load_zone_shapes(zones)
        except (OSError, InvalidZoneFile) as exc:
            # Vehicles still drive; only staged zone crossings are missing.
            log.warning("cannot read zones file %s (%s): no zone crossings staged", zones, exc)
    try:
        sim: Simulation = city.CitySimulation(
            road_network,
            vehicles,
            seed,
            start_ms,
            scenarios[scenario](),
            zones=shapes,
            zone_hysteresis_m=zone_hysteresis_m,
            zone_timeout_ms=zone_timeout_ms,
        )
    except NoRoute as exc:
        raise SimulatorError(f"road network {network} cannot be driven: {exc}") from exc
    return sim


def write_ground_truth(path: Path, simulation: Simulation) -> int:
    """Write the events the run staged so far as a JSON list; return how many."""
    expected = simulation.ground_truth()
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n")
    # Renamed into place: a reader never sees half a file.
    partial.replace(path)
    return len(expected)


def _save_ground_truth(path: Path, simulation: Simulation) -> None:
    try:
        count = write_ground_truth(path, simulation)
    except OSError as exc:
        log.error("cannot write the ground truth to %s: %s", path, exc)
    else:
        log.info("ground truth: %d expected events written to %s", count, path)


def clock_lead_ms(duration_s: float | None, speedup: float) -> int:
    """Return how far in the past a run must start so that no timestamp is ever in the future.

    Simulated time runs `speedup` times faster than the wall clock, so after the run's
    `duration_s / speedup` wall seconds it has gained `duration_s * (1 - 1/speedup)` seconds.
    """
    if speedup <= 1.0:
        return 0
    horizon_s = DEFAULT_HORIZON_S if duration_s is None else duration_s
    return math.ceil(horizon_s * (1.0 - 1.0 / speedup) * 1000)


@dataclass
class Pacer:
    """Maps simulated time to the wall-clock time at which it may be published."""

    sim_start_ms: int
    wall_start_ms: int
    speedup: float

    def due_ms(self, sim_ms: int) -> float:
        """Return the wall-clock time (epoch ms) at which `sim_ms` is due.

        Never before the timestamp itself, so that a clock that has caught up with real time
        (an endless run with a speed-up) carries on at real time instead of running ahead.
        """
        if math.isinf(self.speedup):
            return float(sim_ms)
        scheduled = self.wall_start_ms + (sim_ms - self.sim_start_ms) / self.speedup
        return max(scheduled, float(sim_ms))


def trace_line(topic: str, qos: int, payload: bytes) -> bytes:
    """Return one line of the replay trace format from an already encoded payload."""
    return b'{"topic":%b,"qos":%d,"payload":%b}\n' % (orjson.dumps(topic), qos, payload)


def station_of(topic: str) -> str:
    """Return the station id of a `vehicles/{id}/...` topic."""
    parts = topic.split("/", 2)
    return parts[1] if len(parts) == 3 else ""


def offline_limit(vehicles: int, connections: int) -> int:
    """Return how many CAMs one connection keeps while the broker is away."""
    per_connection = vehicles / max(1, connections)
    return max(MIN_OFFLINE_LIMIT, math.ceil(OFFLINE_KEEP_S * per_connection / TICK_S))


def stop_publishers(publishers: Iterable[BlockingPublisher], timeout_s: float) -> None:
    """Stop every publisher within `timeout_s` in all; log what an outage cost."""
    deadline = time.monotonic() + timeout_s
    dropped = reconnects = unacknowledged = 0
    for publisher in publishers:
        publisher.stop(max(0.0, deadline - time.monotonic()))
        dropped += publisher.dropped
        reconnects += publisher.reconnects
        unacknowledged += publisher.unacknowledged
    if reconnects or dropped or unacknowledged:
        log.warning(
            "MQTT: %d reconnections during the run, %d CAMs dropped while the broker was away,"
            " %d DENMs unacknowledged at the end",
            reconnects,
            dropped,
            unacknowledged,
        )


class FleetSink:
    """The fleet account over K connections; each vehicle always uses the same one."""

    def __init__(
        self,
        settings: Settings,
        connections: int,
        run_tag: str,
        offline_limit: int = MIN_OFFLINE_LIMIT,
    ) -> None:
        # One event loop thread carries every connection's client.
        self.loop_thread = EventLoopThread("simulator-mqtt")
        self.publishers = [
            BlockingPublisher(
                MqttEndpoint.fleet(settings, f"roadwatch-sim-{run_tag}-{n}"),
                name=f"simulator-{n}",
                offline_limit=offline_limit,
                loop_thread=self.loop_thread,
            )
            for n in range(max(1, connections))
        ]
        # Keeping a vehicle on one connection keeps its messages in order (MQTT orders per
        # connection only).
        self._route: dict[str, BlockingPublisher] = {}

    def start(self) -> None:
        started: list[BlockingPublisher] = []
        try:
            for publisher in self.publishers:
                publisher.start()
                started.append(publisher)
        except MqttError:
            stop_publishers(started, 0.0)
            self.loop_thread.stop()
            raise

    @property
    def dropped(self) -> int:
        """CAMs dropped while the broker was away."""
        return sum(publisher.dropped for publisher in self.publishers)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        station = station_of(topic)
        publisher = self._route.get(station)
        if publisher is None:
            publisher = self.publishers[len(self._route) % len(self.publishers)]
            self._route[station] = publisher
        publisher.publish(topic, payload, qos)

    def close(self) -> None:
        stop_publishers(self.publishers, STOP_TIMEOUT_S)
        self.loop_thread.stop()


Provisioner = Callable[[Mapping[str, str]], None]


@dataclass
class VehicleSink:
    """One connection per vehicle, authenticated as that vehicle (docs/contract/mqtt.md §8)."""

    settings: Settings
    provision: Provisioner
    limit: int = MAX_VEHICLE_CONNECTIONS
    publishers: dict[str, BlockingPublisher] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    # One event loop thread carries every vehicle's connection.
    loop_thread: EventLoopThread = field(default_factory=lambda: EventLoopThread("simulator-mqtt"))

    def prepare(self, stations: Iterable[str]) -> None:
        """Provision and connect the vehicles not seen yet, in one broker reload."""
        new = [s for s in dict.fromkeys(stations) if s not in self.publishers and s]
        new = [s for s in new if s not in self.skipped]
        room = self.limit - len(self.publishers)
        if len(new) > room:
            self.skipped.update(new[max(0, room) :])
            log.warning(
                "vehicle mode is capped at %d connections: %d vehicles muted",
                self.limit,
                len(self.skipped),
            )
            new = new[: max(0, room)]
        if not new:
            return
        accounts = {station: secrets.token_urlsafe(18) for station in new}
        try:
            self.provision(accounts)
        except Exception as exc:  # whatever the provisioner's backend raises, said once
            raise SimulatorError(f"cannot provision vehicle accounts: {exc}") from exc
        for station, password in accounts.items():
            publisher = BlockingPublisher(
                MqttEndpoint(
                    host=self.settings.mqtt_host,
                    port=self.settings.mqtt_port,
                    username=station,
                    password=password,
                    client_id=station,
                ),
                name=station,
                offline_limit=offline_limit(1, 1),
                loop_thread=self.loop_thread,
            )
            publisher.start()
            self.publishers[station] = publisher
        log.info("%d vehicles connected as themselves", len(self.publishers))

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        publisher = self.publishers.get(station_of(topic))
        if publisher is not None:
            publisher.publish(topic, payload, qos)

    def close(self) -> None:
        stop_publishers(self.publishers.values(), STOP_TIMEOUT_S)
        self.loop_thread.stop()


def _connected(sink: Sink) -> bool:
    """Tell whether every MQTT connection of `sink` is up (a dry run has none to lose)."""
    if isinstance(sink, FleetSink):
        return all(publisher.is_connected() for publisher in sink.publishers)
    if isinstance(sink, VehicleSink):
        return all(publisher.is_connected() for publisher in sink.publishers.values())
    return True


def _dropped(sink: Sink) -> int:
    return sink.dropped if isinstance(sink, FleetSink) else 0


class NullSink:
    """Publishes nothing: dry runs."""

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Summary:
    """What a run did."""

    vehicles: int
    messages: int = 0
    ticks: int = 0
    elapsed_s: float = 0.0
    sim_seconds: float = 0.0
    events: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        events = ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())) or "none"
        return (
            f"{self.vehicles} vehicles, {self.messages} messages in {self.elapsed_s:.1f} s "
            f"({self.rate:,.0f} msg/s, {self.sim_seconds:.0f} simulated s); events: {events}"
        )


class Progress:
    """Reports progress: a live line on a terminal, log lines otherwise, and the status file."""

    def __init__(
        self,
        summary: Summary,
        status: StatusFile | None,
        stream: IO[str] | None,
        metrics: SimulatorMetrics | None = None,
        dropped: Callable[[], int] = lambda: 0,
    ) -> None:
        self.summary = summary
        self.status = status
        self.metrics = metrics
        self._dropped = dropped
        self.live = stream if stream is not None and stream.isatty() else None
        self._last_at = time.monotonic()
        self._last_messages = 0
        self._status_at = 0.0
        self.rate = 0.0

    def update(self, events: Mapping[str, int], force: bool = False) -> None:
        now = time.monotonic()
        every = LIVE_EVERY_S if self.live is not None else LOG_EVERY_S
        if force or now - self._status_at >= STATUS_INTERVAL_S:
            self._status_at = now
            figures = {
                "vehicles": self.summary.vehicles,
                "published": self.summary.messages,
                "msg_per_s": round(self.rate),
                "dropped": self._dropped(),
            }
            if self.status is not None:
                self.status.write("ready", {**figures, **events})
            if self.metrics is not None:
                self.metrics.update(figures, events)
        if not force and now - self._last_at < every:
            return
        self.rate = (self.summary.messages - self._last_messages) / max(now - self._last_at, 1e-9)
        self._last_at, self._last_messages = now, self.summary.messages
        text = ", ".join(f"{k} {v}" for k, v in sorted(events.items())) or "none"
        line = (
            f"{self.summary.vehicles} vehicles  {self.rate:8,.0f} msg/s  "
            f"{self.summary.messages:,} messages  events: {text}"
        )
        if self.live is not None:
            self.live.write(f"\r\x1b[K{line}")
            self.live.flush()
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.live is not None:
            self.live.write("\n")
            self.live.flush()


def run(
    simulation: Simulation,
    sink: Sink,
    *,
    vehicles: int,
    duration_s: float | None,
    pacer: Pacer | None,
    stop: threading.Event,
    record: IO[bytes] | None = None,
    prepare: Callable[[Iterable[str]], None] | None = None,
    progress: Callable[[Summary], Progress] | None = None,
    tick_s: float = TICK_S,
) -> Summary:
    """Tick the simulation and send what it publishes, paced by `pacer` (None: flat out)."""
    summary = Summary(vehicles=vehicles)
    reporter = progress(summary) if progress is not None else None
    started = time.monotonic()
    sim_ms = pacer.sim_start_ms if pacer is not None else 0
    try:
        while not stop.is_set():
            if duration_s is not None and summary.sim_seconds >= duration_s:
                break
            publications = simulation.tick(tick_s)
            sim_ms += round(tick_s * 1000)
            summary.ticks += 1
            summary.sim_seconds += tick_s
            if pacer is not None:
                wait_s = (pacer.due_ms(sim_ms) - time.time() * 1000) / 1000
                if wait_s > 0 and stop.wait(wait_s):
                    break
            if prepare is not None:
                prepare(station_of(topic) for topic, _, _ in publications)
            for topic, payload, qos in publications:
                data = orjson.dumps(payload)
                if record is not None:
                    record.write(trace_line(topic, qos, data))
                sink.publish(topic, data, qos)
            summary.messages += len(publications)
            if reporter is not None:
                reporter.update(simulation.counters())
    finally:
        summary.elapsed_s = time.monotonic() - started
        summary.events = simulation.counters()
        if reporter is not None:
            reporter.update(summary.events, force=True)
            reporter.close()
    return summary


def _make_sink(
    settings: Settings,
    mode: str,
    *,
    dry_run: bool,
    vehicles: int,
    connections: int,
    provision: Provisioner | None,
) -> tuple[Sink, Callable[[Iterable[str]], None] | None]:
    """The sink of one run, and what prepares the stations first (vehicle mode)."""
    if dry_run:
        return NullSink(), None
    if mode == "vehicle":
        if provision is None:
            raise SimulatorError("vehicle mode needs the accounts of a native broker (`make up`)")
        vehicle_sink = VehicleSink(settings, provision)
        return vehicle_sink, vehicle_sink.prepare
    fleet = FleetSink(
        settings,
        connections,
        secrets.token_hex(3),
        offline_limit=offline_limit(vehicles, connections),
    )
    fleet.start()
    return fleet, None


def main(
    settings: Settings,
    vehicles: int = 40,
    seed: int = 1,
    duration_s: float | None = None,
    speedup: float = 1.0,
    *,
    record: Path | None = None,
    dry_run: bool = False,
    mode: str = "fleet",
    connections: int = DEFAULT_CONNECTIONS,
    scenario: str = DEFAULT_SCENARIO,
    network: Path | None = None,
    start_ms: int | None = None,
    ground_truth: Path | None = None,
    provision: Provisioner | None = None,
) -> int:
    """Entry point of `roadwatch simulate`: run until stopped or for `duration_s`.

    With `ground_truth`, the events the scenario staged are written there as JSON when the run
    ends, however it ends.
    """
    # Imported here: the file lookup brings the MySQL-backed zone code along.
    from roadwatch.services.zone_sync import resolve_repo_path  # noqa: PLC0415

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    now_ms = round(time.time() * 1000)
    # A dry run goes flat out, so the whole of it must lie in the past.
    lead_ms = math.ceil((duration_s or 0) * 1000) if dry_run else clock_lead_ms(duration_s, speedup)
    sim_start = now_ms - lead_ms if start_ms is None else start_ms
    if network is None and settings.network_file is not None:
        network = resolve_repo_path(settings.network_file)
    try:
        simulation = make_simulation(
            vehicles,
            seed,
            sim_start,
            scenario,
            network,
            resolve_repo_path(settings.zones_file),
            zone_hysteresis_m=settings.zone_hysteresis_m,
            zone_timeout_ms=round(settings.zone_timeout_s * 1000),
        )
    except SimulatorError as exc:
        log.error("%s", exc)
        return 2
    pacer = None if dry_run else Pacer(sim_start, now_ms, speedup)

    if mode == "vehicle" and vehicles > MAX_VEHICLE_CONNECTIONS:
        log.warning(
            "vehicle mode connects at most %d vehicles; use fleet mode for more",
            MAX_VEHICLE_CONNECTIONS,
        )
    try:
        sink, prepare = _make_sink(
            settings,
            mode,
            dry_run=dry_run,
            vehicles=vehicles,
            connections=connections,
            provision=provision,
        )
    except (MqttError, SimulatorError) as exc:
        log.error("%s", exc)
        return 2 if isinstance(exc, SimulatorError) else 1

    status = StatusFile(settings.run_dir, "simulator")
    metrics = SimulatorMetrics.serve(settings.simulator_metrics_port, lambda: _connected(sink))
    log.info(
        "simulating %d vehicles, scenario %s (seed %d, speed-up %g, %s)",
        vehicles,
        scenario,
        seed,
        speedup,
        "dry run" if dry_run else f"{mode} mode",
    )
    out = record.open("wb") if record is not None else None
    try:
        summary = run(
            simulation,
            sink,
            vehicles=vehicles,
            duration_s=duration_s,
            pacer=pacer,
            stop=stop,
            record=out,
            prepare=prepare,
            progress=lambda s: Progress(s, status, sys.stderr, metrics, lambda: _dropped(sink)),
        )
    except (MqttError, SimulatorError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        if out is not None:
            out.close()
        sink.close()
        status.remove()
        if ground_truth is not None:
            _save_ground_truth(ground_truth, simulation)
    log.info("simulator stopped: %s", summary.describe())
    return 0
