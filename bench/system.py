"""A private RoadWatch system for the benchmarks: every server and service on free ports.

Started with the runner `make up` uses, under a temporary folder with fresh secrets, and
removed at the end (also on Ctrl-C or SIGTERM): a benchmark never writes into a running
`make up` system.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout, free_port, read_pid
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.stack import Part, PythonService, service_probe
from roadwatch.settings import Settings

SERVICES = ("api", "collector")
# The broker's backlog for the gateway is drained when its count reaches what was published,
# or stops moving for this long (what is missing then was dropped), or at the time limit.
DRAIN_QUIET_S = 2.0
DRAIN_TIMEOUT_S = 20.0


def gateway_instances(settings: Settings, count: int) -> list[Settings]:
    """The settings of each gateway instance: one plain gateway, or `count` sharing the load."""
    if count <= 1:
        return [settings]
    return [
        settings.model_copy(
            update={
                "gateway_partitions": count,
                "gateway_instance": n,
                "gateway_metrics_port": settings.gateway_metrics_port if n == 0 else free_port(),
            }
        )
        for n in range(count)
    ]


@dataclass
class PrivateSystem:
    """The running system: its settings and layout, to find ports, pids and logs."""

    settings: Settings
    layout: RunLayout
    gateways: list[Settings]

    def gateway_pids(self) -> list[int]:
        return [self.pid(gateway.gateway_name) for gateway in self.gateways]

    @property
    def site(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def pid(self, name: str) -> int:
        pid = read_pid(self.layout.pidfile(name))
        if pid is None:
            raise RuntimeError(f"{name} is not running (see {self.layout.logfile(name)})")
        return pid

    def gateway_metrics(self) -> dict[str, float]:
        """The gateways' /metrics, added up: `name` or `name{labels}` -> value."""
        figures: dict[str, float] = {}
        for gateway in self.gateways:
            _add_metrics(figures, gateway.gateway_metrics_port, "roadwatch_gateway_")
        return figures

    def collector_metrics(self) -> dict[str, float]:
        """The collector's /metrics: `name` or `name{labels}` -> value."""
        figures: dict[str, float] = {}
        _add_metrics(figures, self.settings.collector_metrics_port, "roadwatch_collector_")
        return figures

    def received(self) -> int:
        """Vehicle messages the gateways have received since they started.

        Instances sharing the load also count the copies they pass on to each other; those
        are left out.
        """
        figures = self.gateway_metrics()
        copies = figures.get("partition_received_total", 0.0)
        return int(figures.get("messages_received_total", 0.0) - copies)

    def drain(self, expected: int) -> tuple[int, bool, float]:
        """Wait until the gateway has received `expected` messages in all (see DRAIN_QUIET_S).

        Returns its count; False when the time limit struck while it still moved; when (on
        the monotonic clock) the count last moved.
        """
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        count = self.received()
        moved_at = time.monotonic()
        while count < expected:
            if time.monotonic() - moved_at > DRAIN_QUIET_S:
                return count, True, moved_at
            if time.monotonic() > deadline:
                return count, False, moved_at
            time.sleep(0.05)
            latest = self.received()
            if latest != count:
                moved_at = time.monotonic()
            count = latest
        return count, True, moved_at


def _add_metrics(figures: dict[str, float], port: int, prefix: str) -> None:
    """Add the figures of the /metrics on `port` to `figures`, their names without `prefix`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.removeprefix(prefix)
            figures[key] = figures.get(key, 0.0) + float(value)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def private_system(gateways: int = 1, progress: bool = True) -> Iterator[PrivateSystem]:
    """Start the whole system privately; stop it and delete its folder however the block ends.

    `gateways` > 1 runs that many gateway instances sharing the load (docs/scaling.md)
    instead of the single gateway.
    """
    root = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    root.chmod(0o755)  # the servers run as their own users
    settings = private_settings(root)
    instances = gateway_instances(settings, gateways)
    layout = RunLayout(root)
    layout.ensure()
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped and the folder removed.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    parts: list[Part] = [
        MariaDB(settings, layout),
        Mosquitto(settings, layout),
        Prosody(settings, layout),
        Apache(settings, layout),
        *(
            PythonService(name, settings, layout, service_probe(settings, name))
            for name in SERVICES
        ),
        *(
            PythonService(
                gateway.gateway_name,
                gateway,
                layout,
                service_probe(gateway, gateway.gateway_name),
                command="gateway",
            )
            for gateway in instances
        ),
    ]
    started: list[Part] = []
    began = time.perf_counter()
    try:
        for part in parts:
            part.start()
            started.append(part)
        if progress:
            print(
                f"  private system up in {time.perf_counter() - began:.1f} s under {root}",
                file=sys.stderr,
            )
        yield PrivateSystem(settings, layout, instances)
    finally:
        for part in reversed(started):
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others
                print(f"  could not stop {part.name}: {exc}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        if not os.environ.get("ROADWATCH_KEEP_BENCH_RUN"):
            shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), counted here from field 3 (the state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"
