"""Background processes for the native runner and the test harness: pidfiles, logs, readiness."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from roadwatch.runner import procs

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
# Process start times come in clock ticks from the boot time, which is rounded to the second.
PID_CLOCK_SLACK_S = 2.0
# What every program gets from the runner's own environment; everything else it is given.
# PATH and HOME are not among them: `make up` from another shell (or through sudo) must not
# count as a change of every program's environment, which restarts it.
_INHERITED = (
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "ROADWATCH_REPO_DIR",
    "ROADWATCH_DEPLOY_DIR",
)
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Children started by this process, kept so that they are reaped (no zombies, no
# "still running" warnings) when this process stops them; `make up` exits and leaves them.
_children: dict[int, subprocess.Popen[bytes]] = {}


class RunnerError(RuntimeError):
    """A server could not be prepared, started or stopped."""


@dataclass(frozen=True)
class RunLayout:
    """Where one running system keeps its state: every path lives under `root`."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    def data(self, server: str) -> Path:
        """The data folder of one server (created on demand)."""
        path = self.root / server
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def ensure(self) -> None:
        for path in (self.root, self.logs, self.pids):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Program:
    """One long-lived process of a run, in the foreground, as supervisord or a test starts it."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    # SIGTERM to SIGKILL, for supervisord's stopwaitsecs and the runner's own stop.
    stop_grace_s: float = STOP_GRACE_S
    # SIGTERM to SIGKILL for the leftovers of a previous run of the program (0: SIGKILL at once).
    leftover_grace_s: float = 2.0
    # Ports the program listens on: whoever else holds one is in its way.
    ports: tuple[int, ...] = field(default=())


def prioritised(argv: Sequence[str], nice: int) -> tuple[str, ...]:
    """`argv` run at CPU priority `nice` (Settings.pipeline_nice), set before it starts.

    Through nice(1): the priority is in place before the program creates its threads or
    workers, which all inherit it, whoever starts it (supervisord or the runner).
    """
    return tuple(argv) if nice == 0 else ("nice", "-n", str(nice), *argv)


def program_environment(root: Path, name: str, *extra: Mapping[str, str]) -> dict[str, str]:
    """Return the environment of program NAME: a few inherited variables, `extra`, and its tag.

    Nothing else of the runner's environment is passed on: each program is given the settings
    it needs, so a secret exported in the caller's shell reaches no other program.
    """
    env = {key: value for key, value in os.environ.items() if key in _INHERITED}
    env["PATH"] = STANDARD_PATH
    env.setdefault("LANG", "C.UTF-8")
    for more in extra:
        env.update(more)
    env[procs.MARKER] = procs.marker(root, name)
    return env


def read_pid(pidfile: Path) -> int | None:
    """Return the pid in `pidfile` if that process is alive, else None.

    A process that started after the file was written is another one that got the same pid
    (after a reboot, say), never the one recorded.
    """
    try:
        pid = int(pidfile.read_text().strip())
        written = pidfile.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not is_alive(pid):
        return None
    started = procs.started_at(pid)
    if started is not None and started > written + PID_CLOCK_SLACK_S:
        return None
    return pid


def is_alive(pid: int) -> bool:
    """Return True while process `pid` runs (a zombie child of ours counts as gone)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def start_process(
    layout: RunLayout,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` detached in its own session, logging to logs/NAME.log; return its pid.

    Does nothing and returns the existing pid when NAME is already running (idempotent up).
    """
    layout.ensure()
    existing = read_pid(layout.pidfile(name))
    if existing is not None:
        return existing
    logfile = layout.logfile(name)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    layout.pidfile(name).write_text(f"{proc.pid}\n")
    log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
    return proc.pid


def start_program(layout: RunLayout, program: Program) -> int:
    """Start `program` unsupervised (see start_process); return its pid."""
    return start_process(layout, program.name, program.argv, env=program.env, cwd=program.cwd)


def stop_process(layout: RunLayout, name: str, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop NAME (its whole process group): TERM, then KILL after `grace_s`; True if it ran."""
    pidfile = layout.pidfile(name)
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    # Wait on the process itself, not its pidfile: some servers remove their pidfile
    # before they have finished exiting.
    deadline = time.monotonic() + grace_s
    killed = False
    while is_alive(pid):
        if time.monotonic() > deadline:
            if killed:
                raise RunnerError(f"{name} (pid {pid}) survives SIGKILL")
            log.warning("%s did not stop in %.0f s; killing it", name, grace_s)
            _signal_group(pid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + grace_s
        time.sleep(0.05)
    _children.pop(pid, None)
    pidfile.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Return True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout_s: float = 30.0,
    logfile: Path | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll `check` until it is true; on timeout raise with the tail of `logfile`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # a probe that fails is simply not ready yet
            log.debug("%s not ready: %s", what, exc)
        time.sleep(interval_s)
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
    raise RunnerError(f"{what} not ready after {timeout_s:.0f} s{tail}")


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_checked(argv: Sequence[str], what: str, **kwargs: object) -> str:
    """Run a short command; raise RunnerError with its output when it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RunnerError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}")
    out: str = result.stdout
    return out
