"""Run every candidate on every workload, one after the other, and print the table."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import platform
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from types import FrameType

from bench.mqtt_stacks.broker import MAX_QUEUED, PrivateBroker, mosquitto_version
from bench.mqtt_stacks.candidates import CANDIDATES, Candidate
from bench.mqtt_stacks.child import PUBLISH_WINDOW, Outcome, Workload, child_main
from bench.mqtt_stacks.wire import STATIONS, DeliveryCounter, LoadPublisher, cam_messages
from bench.system import load_average

# Sized for about a minute in all on an idle machine (paho takes most of it).
WORKLOADS = (
    Workload("receive QoS 0", receive=True, qos=0, count=150_000),
    Workload("receive QoS 1", receive=True, qos=1, count=40_000),
    Workload("publish QoS 0", receive=False, qos=0, count=150_000),
    Workload("publish QoS 1", receive=False, qos=1, count=40_000),
)
START_TIMEOUT_S = 60.0  # a child's imports, and the connection
RUN_TIMEOUT_S = 120.0
MIN_COUNT = 1000
# Figures this close to the best are within the noise of these machines.
CLOSE = 0.05


@dataclass(frozen=True)
class Row:
    """One candidate's figures on one workload, or why there are none."""

    workload: Workload
    candidate: type[Candidate]
    status: str  # done, skipped or failed
    note: str = ""
    rate: float = 0.0
    cpu_us: float = 0.0
    lost: int = 0
    broker_us: float = 0.0


class _Child:
    """The process running one candidate on one workload (child.py)."""

    def __init__(self, candidate: type[Candidate], workload: Workload, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process: multiprocessing.process.BaseProcess = context.Process(
            target=child_main,
            args=(candidate.key, workload, port, child),
            name=f"bench-mqtt-{candidate.key}",
            daemon=True,
        )

    def __enter__(self) -> _Child:
        self._process.start()
        return self

    def answer(self, timeout_s: float) -> tuple[str, object]:
        if not self._pipe.poll(timeout_s):
            return "failed", f"no answer in {timeout_s:.0f} s"
        try:
            answer: tuple[str, object] = self._pipe.recv()
        except EOFError:
            self._process.join(5.0)
            return "failed", f"its process ended (exit code {self._process.exitcode})"
        return answer

    def go(self) -> None:
        self._pipe.send("go")

    def __exit__(self, *exc: object) -> None:
        self._process.join(10.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)


def _figures(
    workload: Workload, candidate: type[Candidate], outcome: Outcome, lost: int, broker_s: float
) -> Row:
    handled = max(outcome.handled, 1)
    return Row(
        workload,
        candidate,
        "done",
        rate=outcome.handled / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0,
        cpu_us=outcome.cpu_s / handled * 1e6,
        lost=lost,
        broker_us=broker_s / workload.count * 1e6,
    )


def _not_run(workload: Workload, candidate: type[Candidate], kind: str, why: object) -> Row:
    return Row(workload, candidate, "skipped" if kind == "skipped" else "failed", str(why))


def _timed(row: Row, began: float) -> Row:
    """Say on stderr that a row is done, and how long it took."""
    print(
        f"  {row.workload.name}, {row.candidate.label}: {row.status}"
        f" in {time.perf_counter() - began:.1f} s",
        file=sys.stderr,
    )
    return row


def _receive(
    broker: PrivateBroker, load: LoadPublisher, candidate: type[Candidate], workload: Workload
) -> Row:
    with _Child(candidate, workload, broker.port) as child:
        kind, value = child.answer(START_TIMEOUT_S)
        if kind != "ready":
            return _not_run(workload, candidate, kind, value)
        broker_began = broker.cpu_s()
        load.go()
        kind, value = child.answer(RUN_TIMEOUT_S)
        broker_s = broker.cpu_s() - broker_began
        if load.wait(RUN_TIMEOUT_S) is None:
            raise RuntimeError("the load publisher did not finish")
    if kind != "done" or not isinstance(value, Outcome):
        return _not_run(workload, candidate, kind, value)
    return _figures(workload, candidate, value, workload.count - value.handled, broker_s)


def _publish(
    broker: PrivateBroker, counter: DeliveryCounter, candidate: type[Candidate], workload: Workload
) -> Row:
    with _Child(candidate, workload, broker.port) as child:
        kind, value = child.answer(START_TIMEOUT_S)
        if kind != "ready":
            return _not_run(workload, candidate, kind, value)
        counted_before = counter.lines
        broker_began = broker.cpu_s()
        child.go()
        kind, value = child.answer(RUN_TIMEOUT_S)
        delivered = counter.count_from(counted_before, workload.count, RUN_TIMEOUT_S)
        broker_s = broker.cpu_s() - broker_began
    if kind != "done" or not isinstance(value, Outcome):
        return _not_run(workload, candidate, kind, value)
    return _figures(workload, candidate, value, value.handled - delivered, broker_s)


def _package(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (not installed)"


def _table(rows: Sequence[Row]) -> list[str]:
    width = max(len(row.candidate.label) for row in rows)
    lines = [
        f"  {'workload':<14} {'candidate':<{width}} {'msg/s':>9} {'CPU µs/msg':>10}"
        f" {'lost':>7} {'broker µs/msg':>13}"
    ]
    previous = ""
    for row in rows:
        name = row.workload.name if row.workload.name != previous else ""
        previous = row.workload.name
        start = f"  {name:<14} {row.candidate.label:<{width}}"
        if row.status != "done":
            lines.append(f"{start} {row.status}: {row.note}")
            continue
        lines.append(
            f"{start} {row.rate:>9,.0f} {row.cpu_us:>10.1f} {row.lost:>7,} {row.broker_us:>13.1f}"
        )
    return lines


def _best(rows: Sequence[Row], workloads: Sequence[Workload], fastest: bool) -> str:
    """Name the best candidate of each workload, and those within CLOSE of it."""
    found = []
    for workload in workloads:
        done = [row for row in rows if row.workload == workload and row.status == "done"]
        complete = [row for row in done if row.lost == 0] or done
        if not complete:
            continue
        if fastest:
            best = max(complete, key=lambda row: row.rate)
            figure = f"{best.rate:,.0f} msg/s"
            close = [row for row in complete if row.rate >= best.rate * (1 - CLOSE)]
        else:
            best = min(complete, key=lambda row: row.cpu_us)
            figure = f"{best.cpu_us:.1f} µs/msg"
            close = [row for row in complete if row.cpu_us <= best.cpu_us * (1 + CLOSE)]
        others = [row.candidate.label for row in close if row is not best]
        near = f", {' and '.join(others)} within {CLOSE:.0%}" if others else ""
        lossy = ", every candidate lost messages" if best.lost else ""
        found.append(f"{workload.name}: {best.candidate.label} ({figure}{near}{lossy})")
    return "; ".join(found)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the broker and the children are stopped."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _header(candidates: Sequence[type[Candidate]], workloads: Sequence[Workload]) -> list[str]:
    messages = cam_messages()
    payload = sum(len(message) for _topic, message in messages) / len(messages)
    counts = ", ".join(f"{workload.name} {workload.count:,}" for workload in workloads)
    lines = [
        f"mqtt: client stacks compared on one private Mosquitto {mosquitto_version()}"
        f" ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load_average()})",
        f"  {_package('paho-mqtt')}, {_package('gmqtt')}, Python {platform.python_version()};"
        f" CAMs of {payload:.0f} bytes on vehicles/{{id}}/cam from {STATIONS:,} stations;"
        f" messages: {counts}",
        "  receive: a load publisher in its own process sends ready-made packets flat out, the"
        " candidate's callback decodes the JSON (orjson) and counts; publish: the candidate"
        f" publishes (QoS 1: {PUBLISH_WINDOW:,} in flight), mosquitto_sub counts what the broker"
        " delivers",
        "  each candidate runs in its own process, one after the other; the broker queues up to"
        f" {MAX_QUEUED:,} messages per subscriber; rates near the broker's own limit (see its"
        " CPU per message) tell little: compare CPU per message",
    ]
    for candidate in candidates:
        only_publishes = "" if candidate.receives else " (publishes only)"
        lines.append(f"  {candidate.label}: {candidate.title}{only_publishes}")
    return lines


def _measure(
    broker: PrivateBroker, candidates: Sequence[type[Candidate]], workload: Workload
) -> Iterator[Row]:
    """Run each candidate on `workload`, one after the other."""
    if workload.receive:
        with LoadPublisher(broker.port, workload.qos, workload.count) as load:
            for candidate in candidates:
                if candidate.receives:
                    started = time.perf_counter()
                    yield _timed(_receive(broker, load, candidate, workload), started)
    else:
        with DeliveryCounter(broker.port) as counter:
            for candidate in candidates:
                started = time.perf_counter()
                yield _timed(_publish(broker, counter, candidate, workload), started)


def main(scale: float = 1.0, only: Sequence[str] = ()) -> None:
    """`python -m bench mqtt`: every candidate stack on every workload, one broker."""
    candidates = [candidate for candidate in CANDIDATES if not only or candidate.key in only]
    workloads = [
        replace(workload, count=max(MIN_COUNT, round(workload.count * scale)))
        for workload in WORKLOADS
    ]
    began = time.perf_counter()
    print("\n".join(_header(candidates, workloads)), flush=True)
    rows: list[Row] = []
    with _stopped_by_sigterm(), PrivateBroker() as broker:
        for workload in workloads:
            rows.extend(_measure(broker, candidates, workload))
        broker_log = broker.log_text().strip()
    print("\n".join(_table(rows)))
    print(f"  fastest: {_best(rows, workloads, fastest=True)}")
    print(f"  least CPU per message: {_best(rows, workloads, fastest=False)}")
    if broker_log:
        print(f"  the broker said: {broker_log[:500]}")
    print(f"  ({time.perf_counter() - began:.0f} s, load average now {load_average()})")
