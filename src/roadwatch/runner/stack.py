"""The whole system on one machine without containers: `up`, `down`, `status`, `reset`.

Every server and service is a program of the run's own supervisord (runner/supervisor.py),
which restarts whichever exits. `up` starts them one by one in dependency order and waits until
each answers its probe; `down` stops them and supervisord, then makes sure that no process of
the run is left. The parts can also start unsupervised (`Part.start`), as the test harness and
the benchmarks do.
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from roadwatch.runner import procs, tls
from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.process import (
    STOP_GRACE_S,
    Program,
    RunLayout,
    RunnerError,
    prioritised,
    program_environment,
    read_pid,
    start_program,
    stop_process,
    wait_until,
)
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.server import log_tail
from roadwatch.runner.supervisor import STOPPED_STATES, ProgramStatus, Supervisor
from roadwatch.runner.templates import repo_dir
from roadwatch.services.status import read_status
from roadwatch.settings import Settings

SERVICE_START_TIMEOUT_S = 30.0
# Longer than deploy/native/program.conf's startsecs.
STARTSECS_MARGIN_S = 5.0
# `up` gives up on a program that has exited this many times right after its start.
FAILED_STARTS = 3
POLL_S = 0.05


class Part(Protocol):
    """Anything the runner starts: a server or one of our services."""

    @property
    def name(self) -> str: ...

    @property
    def start_timeout_s(self) -> float: ...

    def prepare(self) -> None: ...

    def program(self) -> Program: ...

    def healthy(self) -> bool: ...

    def after_start(self, started: bool) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class PythonService:
    """One RoadWatch service (`roadwatch NAME`, or `roadwatch COMMAND`) as a process.

    `command` runs one service under another name, e.g. gateway instances `gateway-0`,
    `gateway-1` sharing the load, each with its own pid file and log.
    """

    name: str
    settings: Settings
    layout: RunLayout
    probe: Callable[[], bool]
    command: str | None = None
    start_timeout_s: float = SERVICE_START_TIMEOUT_S

    def prepare(self) -> None:
        """Nothing to prepare: a service creates its own state."""

    def program(self) -> Program:
        command = self.command or self.name
        settings_env = {
            **self.settings.as_environment(),
            # Everything is in the environment already: no `.env` is read on top.
            "ROADWATCH_ENV_FILE": "",
            # Logs reach the log file as they are written, not a pipe's buffer later.
            "PYTHONUNBUFFERED": "1",
        }
        port_of = _SERVICE_PORTS.get(command)
        port = port_of(self.settings) if port_of is not None else 0
        return Program(
            self.name,
            prioritised(
                (sys.executable, "-m", "roadwatch", command),
                self.settings.pipeline_nice if command in PIPELINE_SERVICES else 0,
            ),
            program_environment(self.layout.root, self.name, settings_env),
            repo_dir(),
            ports=(port,) if port else (),
        )

    def after_start(self, started: bool) -> None:
        """Nothing to finish: a service is ready once its probe answers."""

    def start(self) -> None:
        """Start the service unsupervised and wait until its probe answers."""
        start_program(self.layout, self.program())
        wait_until(
            self.healthy,
            self.name,
            self.start_timeout_s,
            self.layout.logfile(self.name),
            interval_s=0.1,
        )

    def stop(self) -> None:
        stop_process(self.layout, self.name)

    def healthy(self) -> bool:
        if read_pid(self.layout.pidfile(self.name)) is None:
            return False
        return self.probe()


# The services an alert goes through, run at Settings.pipeline_nice (the API and the simulator
# are not: an alert never waits for them).
PIPELINE_SERVICES = frozenset({"gateway", "collector"})
_SERVICE_PORTS: dict[str, Callable[[Settings], int]] = {
    "api": lambda s: s.api_port,
    "gateway": lambda s: s.gateway_metrics_port,
    "collector": lambda s: s.collector_metrics_port,
    "simulate": lambda s: s.simulator_metrics_port,
}


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
    """Progress lines for people running `make up` and friends; silent without `out`."""

    def __init__(self, out: TextIO | None = sys.stdout) -> None:
        self.out = out
        self.colour = out is not None and out.isatty()

    def line(self, text: str) -> None:
        if self.out is None:
            return
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, name: str, ok: bool, detail: str) -> None:
        mark = "ok  " if ok else "FAIL"
        if self.colour:
            mark = f"\033[32m{mark}\033[0m" if ok else f"\033[31m{mark}\033[0m"
        self.line(f"  {mark} {name:<11} {detail}")


def up(
    settings: Settings, console: Console | None = None, only: Collection[str] | None = None
) -> str:
    """Start supervisord and every part not yet running, in order, each healthy; return the URL.

    `only` restricts the parts started to those named (the others stay stopped programs).
    """
    console = console or Console(None)
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    began = time.monotonic()
    found = parts(settings, layout)
    unknown = set(only or ()) - {part.name for part in found}
    if unknown:
        raise RunnerError(f"no such part: {', '.join(sorted(unknown))}")
    supervisor = Supervisor(settings)
    if not supervisor.running():
        _end_unsupervised(settings, layout, console)
    # Before the programs are compared: a renewed certificate restarts the servers serving it.
    tls.ensure_certificates(settings)
    replaced = supervisor.configure([part.program() for part in found])
    if supervisor.running():
        detail = "already running"
        if replaced:
            detail += f"; restarting {', '.join(replaced)} (settings changed)"
    else:
        t0 = time.monotonic()
        supervisor.start_supervisord()
        detail = f"started in {time.monotonic() - t0:.1f} s (pid {supervisor.supervisord_pid()})"
    console.step("supervisord", True, detail)
    for part in found:
        if only is not None and part.name not in only:
            continue
        t0 = time.monotonic()
        try:
            started = _start(supervisor, part)
        except RunnerError as exc:
            console.step(part.name, False, str(exc))
            console.line(f"  logs: {layout.logfile(part.name)}")
            raise
        detail = f"started in {time.monotonic() - t0:.1f} s" if started else "already running"
        console.step(part.name, True, f"{detail} (pid {supervisor.pid(part.name)})")
    # Each answered its probe; now supervisord must count each as started (startsecs), so
    # that what `up` reports is what `status` says next.
    for part in found:
        if only is None or part.name in only:
            supervisor.wait_running(part.name, STARTSECS_MARGIN_S)
    url = Apache(settings, layout).url
    console.line(f"RoadWatch is up in {time.monotonic() - began:.1f} s: {url}")
    console.line(f"logs in {layout.logs}/, `make status` to check, `make down` to stop")
    return url


def _start(supervisor: Supervisor, part: Part) -> bool:
    """Start one part under supervisord unless it runs healthy; return True if it started."""
    part.prepare()
    status = supervisor.status(part.name)
    if status.running and part.healthy():
        part.after_start(False)
        return False
    if status.state in STOPPED_STATES:
        program = part.program()
        _check_ports(supervisor.layout.root, program)
        supervisor.start(part.name)
    deadline = time.monotonic() + part.start_timeout_s
    logfile = supervisor.layout.logfile(part.name)
    while True:
        status = supervisor.status(part.name)
        # Its dependencies answer already: a program that keeps exiting will not get better.
        if status.state in ("FATAL", "STOPPED") or (
            status.state == "BACKOFF" and status.restarts >= FAILED_STARTS
        ):
            supervisor.stop(part.name)
            raise RunnerError(
                f"{part.name} {status.state}: {status.description}{log_tail(logfile)}"
            )
        # A program answering before supervisord counts it as started (startsecs) is ready.
        if status.state in ("STARTING", "RUNNING") and _probe(part):
            break
        if time.monotonic() > deadline:
            raise RunnerError(
                f"{part.name} not ready after {part.start_timeout_s:.0f} s "
                f"({status.state}){log_tail(logfile)}"
            )
        time.sleep(POLL_S)
    part.after_start(True)
    return True


def _probe(part: Part) -> bool:
    try:
        return part.healthy()
    except Exception:  # a probe that fails is simply not ready yet
        return False


def _check_ports(root: Path, program: Program) -> None:
    """Refuse to start `program` while a process that is not its own holds one of its ports."""
    own = procs.marker(root, program.name)
    for port, pids in procs.listeners(program.ports).items():
        for pid in sorted(pids):
            holder = procs.info(pid)
            # Leftovers of the program itself are ended by its launcher.
            if holder is not None and holder.tag != own:
                raise RunnerError(
                    f"port {port} of {program.name} is taken by {holder.describe()}: "
                    "stop it, or choose another port in .env"
                )


def _end_unsupervised(settings: Settings, layout: RunLayout, console: Console) -> None:
    """End what runs of this run without its supervisord: an older runner's, or orphans."""
    for part in reversed(parts(settings, layout, with_demo=True)):
        pid = read_pid(layout.pidfile(part.name))
        if pid is not None:
            stop_process(layout, part.name, grace_s=part.program().stop_grace_s)
            console.step(part.name, True, f"stopped unsupervised process {pid}")
    left = procs.of_run(layout.root)
    if left:
        survivors = procs.end(left, STOP_GRACE_S)
        ended = ", ".join(process.describe() for process in left)
        console.step("leftovers", not survivors, f"ended {ended}")
        if survivors:
            raise RunnerError(f"processes of {layout.root} survive SIGKILL: {survivors}")


def down(settings: Settings, console: Console | None = None) -> None:
    """Stop every program (newest first) and supervisord; leave no process of the run."""
    console = console or Console(None)
    layout = RunLayout(settings.run_dir)
    supervisor = Supervisor(settings)
    if supervisor.running():
        order = [part.name for part in parts(settings, layout, with_demo=True)]
        statuses = supervisor.statuses()
        for name in sorted(statuses, key=lambda n: order.index(n) if n in order else -1)[::-1]:
            if statuses[name].state not in STOPPED_STATES:
                supervisor.stop(name)
                console.step(name, True, "stopped")
        supervisor.shutdown()
        console.step("supervisord", True, "stopped")
    _end_unsupervised(settings, layout, console)


@dataclass(frozen=True)
class PartReport:
    """One line of `status`: a part, whether it is all right, and why."""

    name: str
    ok: bool
    detail: str


def inspect(settings: Settings) -> list[PartReport]:
    """Tell the state of supervisord and of every part, as `status` prints it."""
    layout = RunLayout(settings.run_dir)
    supervisor = Supervisor(settings)
    statuses: dict[str, ProgramStatus] = {}
    reports = []
    if supervisor.running():
        statuses = supervisor.statuses()
        pid = supervisor.supervisord_pid()
        reports.append(PartReport("supervisord", True, f"pid {pid}, {supervisor.paths.socket}"))
    else:
        reports.append(PartReport("supervisord", False, "not running"))
    tagged = procs.of_run(layout.root)
    for part in parts(settings, layout, with_demo=True):
        status = statuses.get(part.name)
        # The demo is not part of a system started without it (ROADWATCH_DEMO=0, --no-demo).
        if status is None and part.name == "simulate" and (statuses or not settings.demo):
            reports.append(PartReport(part.name, True, "not started (no demo)"))
            continue
        reports.append(_report(settings, part, status, tagged, bool(statuses)))
    return reports


def _report(
    settings: Settings,
    part: Part,
    status: ProgramStatus | None,
    tagged: list[procs.ProcessInfo],
    supervised: bool,
) -> PartReport:
    root = Path(settings.run_dir)
    program = part.program()
    group = status.pid if status is not None and status.state != "STOPPED" else None
    own = procs.marker(root, part.name)
    # Processes of this part outside the supervised process group: Apache's workers after a
    # kill -9 of their parent, or anything left over from an earlier run.
    strays = {p.pid for p in tagged if p.tag == own and (group is None or p.pgid != group)}
    for pids in procs.listeners(program.ports).values():
        for pid in pids:
            holder = procs.info(pid)
            if holder is not None and (group is None or holder.pgid != group):
                strays.add(pid)
    healthy = _probe(part)
    notes = []
    if status is None:
        state = "not a program of supervisord: run `make up`" if supervised else "not running"
    else:
        state = status.state
        if status.pid is not None and status.state not in STOPPED_STATES:
            state += f" pid {status.pid}"
        if status.uptime_s is not None:
            state += f", up {_duration(status.uptime_s)}"
        if status.restarts:
            state += f", {status.restarts} restart{'s' if status.restarts > 1 else ''}"
        if status.state in ("BACKOFF", "FATAL") and status.description:
            notes.append(status.description)
    notes.append("probe ok" if healthy else "probe failing")
    if strays:
        notes.append(f"unsupervised processes hold it: {', '.join(map(str, sorted(strays)))}")
    ok = status is not None and status.running and healthy and not strays
    return PartReport(part.name, ok, f"{state}; {'; '.join(notes)}{_counters(settings, part.name)}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status(settings: Settings, console: Console | None = None) -> bool:
    """Print each part's state; return True when all are healthy."""
    console = console or Console(None)
    reports = inspect(settings)
    for report in reports:
        console.step(report.name, report.ok, report.detail)
    return all(report.ok for report in reports)


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


def reset(settings: Settings, console: Console | None = None) -> None:
    """Stop everything and delete the run folder (all data, logs and state)."""
    console = console or Console(None)
    down(settings, console)
    shutil.rmtree(settings.run_dir, ignore_errors=True)
    console.line(f"deleted {settings.run_dir}")


def names(found: Collection[Part]) -> list[str]:
    return [part.name for part in found]
