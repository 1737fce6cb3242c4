"""The whole system on one machine without containers: `up`, `down`, `status`, `reset`."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TextIO

from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.process import (
    RunLayout,
    RunnerError,
    read_pid,
    start_process,
    stop_process,
    wait_until,
)
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.templates import repo_dir
from roadwatch.services.status import read_status
from roadwatch.settings import Settings

SERVICE_START_TIMEOUT_S = 30.0


class Part(Protocol):
    """Anything the runner starts: a server or one of our services."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def healthy(self) -> bool: ...


@dataclass
class PythonService:
    """One RoadWatch service (`roadwatch NAME`, or `roadwatch COMMAND`) as a background process.

    `command` runs one service under another name, e.g. gateway instances `gateway-0`,
    `gateway-1` sharing the load, each with its own pid file and log.
    """

    name: str
    settings: Settings
    layout: RunLayout
    probe: Callable[[], bool]
    command: str | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(self.settings.as_environment())
        env["ROADWATCH_ENV_FILE"] = ""  # everything is in the environment already
        argv = [sys.executable, "-m", "roadwatch", self.command or self.name]
        start_process(self.layout, self.name, argv, env=env, cwd=repo_dir())
        wait_until(
            self.healthy,
            self.name,
            SERVICE_START_TIMEOUT_S,
            self.layout.logfile(self.name),
            interval_s=0.1,
        )

    def stop(self) -> None:
        stop_process(self.layout, self.name)

    def healthy(self) -> bool:
        if read_pid(self.layout.pidfile(self.name)) is None:
            return False
        return self.probe()


def _status_ready(settings: Settings, name: str, process: str) -> Callable[[], bool]:
    pidfile = RunLayout(settings.run_dir).pidfile(process)

    def probe() -> bool:
        record = read_status(settings.run_dir, name)
        # The status must come from the process running now, not from one that was killed.
        return (
            record is not None
            and record.get("state") == "ready"
            and record.get("pid") == read_pid(pidfile)
        )

    return probe


def _api_ready(settings: Settings) -> Callable[[], bool]:
    def probe() -> bool:
        url = f"http://{settings.api_host}:{settings.api_port}/api/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return probe


def service_probe(settings: Settings, name: str) -> Callable[[], bool]:
    """How to tell that the service `roadwatch NAME` is ready."""
    if name == "api":
        return _api_ready(settings)
    return _status_ready(settings, "simulator" if name == "simulate" else name, name)


def parts(settings: Settings, layout: RunLayout, with_demo: bool | None = None) -> list[Part]:
    """Every part of the system in start order."""
    demo = settings.demo if with_demo is None else with_demo
    found: list[Part] = [
        MariaDB(settings, layout),
        Mosquitto(settings, layout),
        Prosody(settings, layout),
        *(
            PythonService(name, settings, layout, service_probe(settings, name))
            for name in ("api", "collector", "gateway")
        ),
    ]
    if demo:
        found.append(
            PythonService("simulate", settings, layout, service_probe(settings, "simulate"))
        )
    found.append(Apache(settings, layout))
    return found


class Console:
    """Progress lines for people running `make up` and friends."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.colour = out.isatty()

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, name: str, ok: bool, detail: str) -> None:
        mark = "ok  " if ok else "FAIL"
        if self.colour:
            mark = f"\033[32m{mark}\033[0m" if ok else f"\033[31m{mark}\033[0m"
        self.line(f"  {mark} {name:<10} {detail}")


def up(settings: Settings, console: Console) -> str:
    """Start every part not yet running, wait for all to be healthy, return the URL."""
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    started = time.monotonic()
    for part in parts(settings, layout):
        t0 = time.monotonic()
        was_running = part.healthy()
        try:
            part.start()
        except RunnerError as exc:
            console.step(part.name, False, str(exc))
            console.line(f"  logs: {layout.logfile(part.name)}")
            raise
        detail = "already running" if was_running else f"started in {time.monotonic() - t0:.1f} s"
        console.step(part.name, True, detail)
    url = Apache(settings, layout).url
    console.line(f"RoadWatch is up in {time.monotonic() - started:.1f} s: {url}")
    console.line(f"logs in {layout.logs}/, `make status` to check, `make down` to stop")
    return url


def down(settings: Settings, console: Console) -> None:
    """Stop exactly what `up` started, newest first."""
    layout = RunLayout(settings.run_dir)
    for part in reversed(parts(settings, layout, with_demo=True)):
        if read_pid(layout.pidfile(part.name)) is None:
            continue
        part.stop()
        console.step(part.name, True, "stopped")


def status(settings: Settings, console: Console) -> bool:
    """Print each part's state; return True when all are healthy."""
    layout = RunLayout(settings.run_dir)
    all_ok = True
    for part in parts(settings, layout, with_demo=True):
        pid = read_pid(layout.pidfile(part.name))
        if pid is None:
            if part.name == "simulate" and not settings.demo:
                console.step(part.name, True, "not started (ROADWATCH_DEMO=0)")
                continue
            console.step(part.name, False, "not running")
            all_ok = False
            continue
        ok = part.healthy()
        all_ok &= ok
        console.step(part.name, ok, f"pid {pid}{_counters(settings, part.name)}")
    return all_ok


def _counters(settings: Settings, name: str) -> str:
    record = read_status(settings.run_dir, "simulator" if name == "simulate" else name)
    if not record or not record.get("counters"):
        return ""
    # The XMPP adapters' own counters are many; the status line keeps to the service's.
    shown = ", ".join(
        f"{key} {value}"
        for key, value in record["counters"].items()
        if not isinstance(value, dict) and (key == "xmpp_reconnects" or not key.startswith("xmpp_"))
    )
    return f"  ({shown})"


def reset(settings: Settings, console: Console) -> None:
    """Stop everything and delete the run folder (all data, logs and state)."""
    down(settings, console)
    shutil.rmtree(settings.run_dir, ignore_errors=True)
    console.line(f"deleted {settings.run_dir}")


def names(found: Iterable[Part]) -> list[str]:
    return [part.name for part in found]
