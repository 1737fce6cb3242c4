"""A whole private RoadWatch under supervisord, a trace replayed into it, and a fault injected.

Each run gets a system of its own (fresh folder, ports, secrets, database), so runs share
nothing. What a run leaves is read back three ways: the events stored in MySQL, the inputs the
gateway journaled (its journal is kept whole for the audit, ROADWATCH_GATEWAY_KEEP_JOURNAL),
and what the replay published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.state import ARCHIVE_NAME, Record, decode_record
from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event
from roadwatch.domain.messages import Cam, Denm
from roadwatch.runner import stack
from roadwatch.runner.private import private_settings
from roadwatch.runner.supervisor import Supervisor
from roadwatch.services.replay import ReplayStats, replay
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# Every part of the system, as supervisord names them.
SERVERS = ("mariadb", "mosquitto", "prosody", "apache")
SERVICES = ("api", "collector", "gateway")
# How long the system may take to be whole again once the fault is over.
RECOVERY_S = 90.0
# The system is settled when neither the gateway nor the collector moved for this long.
QUIET_S = 3.0
SETTLE_TIMEOUT_S = 120.0

Fault = Callable[["FaultRun"], None]


@dataclass
class Outcome:
    """What one run left behind."""

    name: str
    settings: Settings
    stored: dict[str, Event]
    journaled: list[Record]
    replay: ReplayStats
    restarts: dict[str, int]
    fault_log: list[str] = field(default_factory=list)


class FaultRun:
    """One private system: started under supervisord, replayed into, hurt, and read back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"rw-fault-{name}-"))
        self.root.chmod(0o755)  # the servers run as their own users
        base = private_settings(self.root)
        self.settings: Settings = base.model_copy(
            update={
                "gateway_keep_journal": True,
                # Snapshots often, so that a kill finds a short journal to replay.
                "state_snapshot_interval_s": 2.0,
            }
        )
        self.supervisor = Supervisor(self.settings)
        self.fault_log: list[str] = []
        self._started = time.monotonic()

    # -- life -------------------------------------------------------------------------------

    def up(self) -> None:
        stack.up(self.settings)

    def down(self) -> None:
        try:
            stack.down(self.settings)
        finally:
            if not os.environ.get("ROADWATCH_KEEP_TEST_RUN"):
                shutil.rmtree(self.root, ignore_errors=True)

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self._started:7.1f} s  {text}"
        self.fault_log.append(line)
        log.info("fault %s: %s", self.name, line)

    # -- faults -----------------------------------------------------------------------------

    def kill(self, program: str) -> int:
        """`kill -9` a program's whole process group; return the pid that died."""
        pid = self.supervisor.pid(program)
        assert pid is not None, f"{program} is not running"
        self.supervisor.signal(program, signal.SIGKILL)
        self.note(f"kill -9 {program} (pid {pid})")
        return pid

    def terminate(self, program: str) -> int:
        pid = self.supervisor.pid(program)
        assert pid is not None, f"{program} is not running"
        os.kill(pid, signal.SIGTERM)
        self.note(f"SIGTERM {program} (pid {pid})")
        return pid

    def wait_back(self, program: str, replacing: int, timeout_s: float = RECOVERY_S) -> None:
        """Wait until supervisord has restarted `program` by itself."""
        pid = self.supervisor.wait_running(program, timeout_s, replacing=replacing)
        self.note(f"{program} back (pid {pid})")

    def freeze(self, program: str, seconds: float) -> None:
        self.supervisor.signal(program, signal.SIGSTOP)
        self.note(f"SIGSTOP {program} for {seconds:.0f} s")
        time.sleep(seconds)
        self.supervisor.signal(program, signal.SIGCONT)
        self.note(f"SIGCONT {program}")

    def wait_gateway_drained(self, timeout_s: float = RECOVERY_S) -> float:
        """Return the seconds until the gateway has no event left unacknowledged by Prosody."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            with contextlib.suppress(OSError):
                gateway = _metrics(self.settings.gateway_metrics_port)
                if not _gateway_pending(gateway):
                    took = time.monotonic() - began
                    self.note(f"every gateway event acknowledged by Prosody after {took:.1f} s")
                    return took
            time.sleep(0.1)
        raise AssertionError(f"the gateway still held events after {timeout_s:.0f} s")

    def down_for(self, program: str, seconds: float) -> None:
        self.supervisor.stop(program)
        self.note(f"{program} stopped for {seconds:.0f} s")
        time.sleep(seconds)
        self.supervisor.start(program)
        self.supervisor.wait_running(program, RECOVERY_S)
        self.note(f"{program} started again")

    # -- the run ----------------------------------------------------------------------------

    def run(
        self, trace: Path, offset_ms: int, speedup: float, fault: Fault | None, at: float
    ) -> Outcome:
        """Replay `trace`; at fraction `at` of it, run `fault` beside the replay."""
        injected: list[threading.Thread] = []
        errors: list[BaseException] = []

        def inject(_stats: ReplayStats) -> None:
            def work() -> None:
                try:
                    assert fault is not None
                    fault(self)
                except BaseException as exc:  # reported by the test, not lost in a thread
                    errors.append(exc)

            thread = threading.Thread(target=work, name=f"fault-{self.name}")
            thread.start()
            injected.append(thread)

        checkpoints = {at: inject} if fault is not None else {}
        stats = replay(self.settings, trace, speedup, offset_ms=offset_ms, checkpoints=checkpoints)
        self.note(f"replay done: {stats.published} publications")
        for thread in injected:
            thread.join(RECOVERY_S * 2)
        if errors:
            raise errors[0]
        self.wait_whole()
        self.wait_settled()
        return Outcome(
            self.name,
            self.settings,
            self.stored_events(),
            self.journaled(),
            stats,
            {name: self.supervisor.status(name).restarts for name in (*SERVERS, *SERVICES)},
            self.fault_log,
        )

    def wait_whole(self) -> None:
        """Wait until every part is running and answers its probe."""
        deadline = time.monotonic() + RECOVERY_S
        while True:
            reports = stack.inspect(self.settings)
            failing = [r for r in reports if not r.ok]
            if not failing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the system did not recover: "
                    + "; ".join(f"{r.name}: {r.detail}" for r in failing)
                )
            time.sleep(0.5)

    def wait_settled(self) -> None:
        """Wait until the gateway and the collector have nothing left to do."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        last: tuple[Any, ...] | None = None
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            figures = self._progress()
            if figures != last:
                last = figures
                quiet_since = time.monotonic()
            elif figures is not None and time.monotonic() - quiet_since >= QUIET_S:
                return
            time.sleep(0.25)
        raise AssertionError(f"the system never settled: {last}")

    def _progress(self) -> tuple[Any, ...] | None:
        """Figures that move while events are on their way; None when unreadable."""
        try:
            gateway = _metrics(self.settings.gateway_metrics_port)
        except OSError:
            return None
        stored = self._count_stored()
        if _gateway_pending(gateway):
            return None  # not settled while anything waits
        return (gateway.get("roadwatch_gateway_messages_received_total"), stored)

    def _count_stored(self) -> int | None:
        try:
            with EventStore.connect(self.settings) as store:
                return sum(1 for _ in _all_events(store))
        except Exception:  # the database may still be coming back
            return None

    # -- reading back -----------------------------------------------------------------------

    def stored_events(self) -> dict[str, Event]:
        with EventStore.connect(self.settings) as store:
            return {event.id: event for event in _all_events(store)}

    def journaled(self) -> list[Record]:
        """Everything the gateway's detector was fed, in order, across all its lives."""
        folder = self.settings.run_dir / self.settings.gateway_name
        segments = sorted(
            [*(folder / ARCHIVE_NAME).glob("journal-*.jsonl"), *folder.glob("journal-*.jsonl")],
            key=lambda path: path.name,
        )
        return [
            decode_record(line)
            for path in segments
            for line in path.read_bytes().splitlines()
            if line
        ]


def _all_events(store: EventStore) -> Iterator[Event]:
    cursor: str | None = None
    while True:
        page, cursor = store.list_events(limit=1000, cursor=cursor)
        yield from page
        if cursor is None:
            return


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            figures[name] = float(value)
    return figures


def _gateway_pending(figures: dict[str, float]) -> float:
    """Events the gateway holds that Prosody has not acknowledged (queued or in flight)."""
    return figures.get("roadwatch_gateway_outbox_unsent", 0) + figures.get(
        "roadwatch_gateway_xmpp_pending", 0
    )


def detect(records: list[Record], settings: Settings) -> dict[str, Event]:
    """The latest version of every event the detection core makes of `records`, in order."""
    detector = Detector(settings.detection_rules)
    latest: dict[str, Event] = {}
    for record in records:
        if isinstance(record, list):
            events = detector.set_zones(record)
        else:
            events = detector.process(record)
        for event in events:
            latest[event.id] = event
    return latest


def messages_of(records: list[Record]) -> list[Cam | Denm]:
    return [record for record in records if not isinstance(record, list)]


# ("c" or "d", station, timestamp): one publication, whatever the way it came.
MessageKey = tuple[str, str, int]


def message_key(message: Cam | Denm) -> MessageKey:
    return ("d" if isinstance(message, Denm) else "c", message.station_id, message.timestamp_ms)


def trace_messages(trace: Path, offset_ms: int) -> list[MessageKey]:
    """The keys of every publication of `trace`, as the replay shifts them."""
    keys = []
    for raw in trace.read_bytes().splitlines():
        line = orjson.loads(raw)
        kind = "d" if line["topic"].endswith("/denm") else "c"
        keys.append((kind, line["payload"]["stationId"], line["payload"]["timestamp"] + offset_ms))
    return keys


def random_point(seed: str) -> float:
    """A reproducible 'random' share of the replay, between 25 % and 60 %."""
    return round(random.Random(seed).uniform(0.25, 0.6), 3)
