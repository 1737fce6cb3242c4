"""supervisord for one run: its configuration, its life, and its programs over XML-RPC.

Each run (`make up`'s `.run/`, or a test's private folder) has its own supervisord, configured
from deploy/native/supervisord.conf and deploy/native/program.conf into `<run>/supervisor/`
(mode 0700), and reached over a unix socket there. Every program is started through
roadwatch.runner.launch, which reads the program's environment from a 0600 file in that
folder: no secret is ever on a command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shlex
import shutil
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roadwatch.runner import launch, procs
from roadwatch.runner.process import Program, RunLayout, RunnerError, read_pid
from roadwatch.runner.server import log_tail
from roadwatch.runner.templates import deploy_dir, render
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

SUPERVISORD_START_TIMEOUT_S = 15.0
SUPERVISORD_STOP_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 10.0
# sun_path holds 108 bytes on Linux; stay well below it.
MAX_SOCKET_PATH = 100
POLL_S = 0.05

# supervisord's fault codes (supervisor/xmlrpc.py) that the runner expects.
_BAD_NAME = 10
_NOT_RUNNING = 70
_ALREADY_STARTED = 60
# States in which supervisord has given up on a program, or was told to leave it alone.
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


class SupervisorError(RunnerError):
    """supervisord could not be started, reached or obeyed."""


@dataclass(frozen=True)
class ProgramStatus:
    """What supervisord says of one program, and how often it was launched."""

    name: str
    state: str  # STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN
    pid: int | None
    uptime_s: float | None
    restarts: int
    description: str

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


@dataclass(frozen=True)
class SupervisorPaths:
    """Where one run's supervisord keeps its files."""

    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "supervisor"

    @property
    def config(self) -> Path:
        return self.folder / "supervisord.conf"

    @property
    def pidfile(self) -> Path:
        return self.folder / "supervisord.pid"

    @property
    def socket(self) -> Path:
        """The unix socket; moved to a short path in the temp folder if the run is too deep."""
        path = self.folder / "supervisord.sock"
        if len(str(path)) < MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"roadwatch-supervisor-{digest}.sock"

    def environment_file(self, name: str) -> Path:
        return self.folder / "env" / f"{name}.json"


# supervisord reads ` ;` and ` #` as the start of a comment, even inside a value.
_INLINE_COMMENT = re.compile(r"\s[;#]")


def _escape(value: str) -> str:
    """Quote a value for supervisord, which expands `%(name)s` and reads one line per key."""
    if "\n" in value or "\r" in value:
        raise RunnerError(f"a line break in a supervisord setting: {value!r}")
    if _INLINE_COMMENT.search(value):
        raise RunnerError(f"supervisord would cut this setting at ';' or '#': {value!r}")
    return value.replace("%", "%%")


def launcher_argv(paths: SupervisorPaths, layout: RunLayout, program: Program) -> list[str]:
    """Return the command supervisord runs for `program`: the launcher, then the program."""
    return [
        sys.executable,
        "-m",
        "roadwatch.runner.launch",
        "--env",
        str(paths.environment_file(program.name)),
        "--pidfile",
        str(layout.pidfile(program.name)),
        "--leftover-grace",
        f"{program.leftover_grace_s:g}",
        "--",
        *program.argv,
    ]


def environment_digest(program: Program) -> str:
    """Return a short digest of the program's environment (changes restart the program)."""
    text = json.dumps(dict(program.env), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_config(paths: SupervisorPaths, layout: RunLayout, programs: Iterable[Program]) -> str:
    """Render supervisord.conf for `programs` from the templates in deploy/native/."""
    program_template = (deploy_dir() / "native" / "program.conf").read_text()
    sections = [
        render(
            program_template,
            {
                "NAME": program.name,
                "COMMAND": _escape(shlex.join(launcher_argv(paths, layout, program))),
                "DIRECTORY": _escape(str(program.cwd)),
                "STOP_WAIT_S": f"{max(1, round(program.stop_grace_s))}",
                "LOG_FILE": _escape(str(layout.logfile(program.name))),
                "DIGEST": environment_digest(program),
            },
        )
        for program in programs
    ]
    root = str(layout.root.resolve())
    return render(
        (deploy_dir() / "native" / "supervisord.conf").read_text(),
        {
            "SOCKET": _escape(str(paths.socket)),
            "LOG_DIR": _escape(str(layout.logs)),
            "PIDFILE": _escape(str(paths.pidfile)),
            "RUN_DIR": _escape(root),
            "IDENTIFIER": hashlib.sha256(root.encode()).hexdigest()[:12],
            "USER": str(os.getuid()),
            "PROGRAMS": "\n".join(sections),
        },
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # Kept where Transport.close() finds it, like the base class does.
        connection = _UnixConnection(self._path, self._timeout)
        self._connection = host, connection
        return connection


class Supervisor:
    """The supervisord of one run, and the programs it runs.

    For fault tests as much as for the runner: `up` and `down` for the whole run (any
    Settings, a private system's included); `pid`, `wait_running`, `stop`, `start`, and
    `signal` (to a program's whole process group) for one program.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = RunLayout(settings.run_dir)
        self.paths = SupervisorPaths(settings.run_dir)

    # --- the whole run ---------------------------------------------------------------------

    def up(self, only: Collection[str] | None = None) -> str:
        """Start the run as `make up` does, without printing (see stack.up); return its URL."""
        from roadwatch.runner import stack  # noqa: PLC0415 (stack builds on this module)

        return stack.up(self.settings, only=only)

    def down(self) -> None:
        """Stop the run as `make down` does, without printing (see stack.down)."""
        from roadwatch.runner import stack  # noqa: PLC0415 (stack builds on this module)

        stack.down(self.settings)

    # --- supervisord itself ----------------------------------------------------------------

    def _call(self, method: str, *args: object, timeout_s: float = RPC_TIMEOUT_S) -> Any:
        """Call supervisord's XML-RPC `method` over the run's unix socket."""
        transport = _UnixTransport(self.paths.socket, timeout_s)
        with xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport) as proxy:
            target: Any = proxy
            for part in method.split("."):
                target = getattr(target, part)
            try:
                return target(*args)
            except (OSError, http.client.HTTPException) as exc:
                raise SupervisorError(
                    f"supervisord of {self.layout.root} unreachable: {exc}"
                ) from exc

    def supervisord_pid(self) -> int | None:
        """Return supervisord's pid while it runs, else None."""
        return read_pid(self.paths.pidfile)

    def running(self) -> bool:
        """Return True when this run's supervisord answers."""
        if not self.paths.socket.exists():
            return False
        try:
            state = self._call("supervisor.getState", timeout_s=2.0)
        except (SupervisorError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def configure(self, programs: Sequence[Program]) -> list[str]:
        """Write the programs' environment files and supervisord.conf; apply them if it runs.

        Returns the names of the programs that a running supervisord had to restart because
        their command or environment changed (they are left stopped, for `up` to start).
        """
        folder = self.paths.folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        self.layout.ensure()
        for program in programs:
            launch.write_environment(self.paths.environment_file(program.name), dict(program.env))
        self.paths.environment_file("any").parent.chmod(0o700)
        text = render_config(self.paths, self.layout, programs)
        config = self.paths.config
        if not config.exists() or config.read_text() != text:
            temporary = config.with_name(config.name + ".new")
            temporary.unlink(missing_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            temporary.replace(config)
        if not self.running():
            return []
        return self._apply_config()

    def _apply_config(self) -> list[str]:
        """Do what `supervisorctl update` does: add, replace and remove program groups."""
        [[added, changed, removed]] = self._call("supervisor.reloadConfig")
        for name in (*changed, *removed):
            self._stop_quietly(name)
            self._call("supervisor.removeProcessGroup", name)
        for name in (*changed, *added):
            self._call("supervisor.addProcessGroup", name)
        if added or changed or removed:
            log.info("supervisord: added %s, changed %s, removed %s", added, changed, removed)
        return list(changed)

    def start_supervisord(self) -> None:
        """Start this run's supervisord (it daemonizes), unless it answers already."""
        if self.running():
            return
        if not self.paths.config.exists():
            raise SupervisorError(f"no {self.paths.config}: configure() first")
        supervisord = shutil.which("supervisord") or shutil.which(
            "supervisord", path="/usr/bin:/usr/sbin:/bin:/sbin"
        )
        if supervisord is None:
            raise SupervisorError(
                "supervisord not found; install the supervisor package "
                "(deploy/native/bootstrap.sh does)"
            )
        self.paths.socket.unlink(missing_ok=True)
        # Its own environment is minimal and tagged: programs get theirs from their files.
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
            "LANG": "C.UTF-8",
            procs.MARKER: procs.marker(self.layout.root, "supervisord"),
        }
        if "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]
        result = subprocess.run(
            [supervisord, "-c", str(self.paths.config)],
            env=env,
            cwd=self.layout.root,
            capture_output=True,
            text=True,
            check=False,
            timeout=SUPERVISORD_START_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise SupervisorError(
                f"supervisord failed ({result.returncode}): {result.stderr or result.stdout}"
            )
        deadline = time.monotonic() + SUPERVISORD_START_TIMEOUT_S
        while not self.running():
            if time.monotonic() > deadline:
                raise SupervisorError(
                    "supervisord not answering on "
                    f"{self.paths.socket}{log_tail(self.layout.logfile('supervisord'))}"
                )
            time.sleep(POLL_S)
        log.info("supervisord started (pid %s)", self.supervisord_pid())

    def shutdown(self, timeout_s: float = SUPERVISORD_STOP_TIMEOUT_S) -> bool:
        """Stop supervisord (and whatever it still runs); return True if it was running."""
        pid = self.supervisord_pid()
        if not self.running():
            return False
        # The call may end with the connection when supervisord exits: that is success.
        with contextlib.suppress(SupervisorError, xmlrpc.client.Error):
            self._call("supervisor.shutdown")
        deadline = time.monotonic() + timeout_s
        while procs.alive(pid) if pid is not None else self.running():
            if time.monotonic() > deadline:
                raise SupervisorError(f"supervisord (pid {pid}) still running after {timeout_s} s")
            time.sleep(POLL_S)
        return True

    # --- programs --------------------------------------------------------------------------

    def _status(self, info: dict[str, Any]) -> ProgramStatus:
        pid = int(info["pid"]) or None
        up = info["now"] - info["start"] if info["statename"] == "RUNNING" else None
        name = str(info["name"])
        launched = launch.read_starts(self.layout.pidfile(name))
        return ProgramStatus(
            name=name,
            state=str(info["statename"]),
            pid=pid,
            uptime_s=float(up) if up is not None else None,
            restarts=max(launched - 1, 0),
            description=str(info.get("spawnerr") or info.get("description") or ""),
        )

    def status(self, name: str) -> ProgramStatus:
        """Return what supervisord says of program NAME."""
        try:
            return self._status(self._call("supervisor.getProcessInfo", name))
        except xmlrpc.client.Fault as exc:
            if exc.faultCode == _BAD_NAME:
                raise SupervisorError(f"no program {name!r} in {self.paths.config}") from exc
            raise

    def statuses(self) -> dict[str, ProgramStatus]:
        """Return every program's status, in the order of the configuration."""
        return {
            status.name: status
            for status in map(self._status, self._call("supervisor.getAllProcessInfo"))
        }

    def pid(self, name: str) -> int | None:
        """Return the pid of program NAME while supervisord has it alive, else None."""
        status = self.status(name)
        return status.pid if status.state in ("STARTING", "RUNNING", "STOPPING") else None

    def start(self, name: str) -> None:
        """Ask supervisord to start program NAME (without waiting); its restarts count anew."""
        self.layout.pidfile(name).unlink(missing_ok=True)
        launch.starts_file(self.layout.pidfile(name)).write_text("0\n")
        try:
            self._call("supervisor.startProcess", name, False)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != _ALREADY_STARTED:
                raise SupervisorError(f"cannot start {name}: {exc.faultString}") from exc

    def stop(self, name: str) -> None:
        """Stop program NAME and its whole process group; return once it has exited."""
        try:
            self._call("supervisor.stopProcess", name, True, timeout_s=self._stop_timeout(name))
        except xmlrpc.client.Fault as exc:
            if exc.faultCode != _NOT_RUNNING:
                raise SupervisorError(f"cannot stop {name}: {exc.faultString}") from exc

    def _stop_quietly(self, name: str) -> None:
        with contextlib.suppress(xmlrpc.client.Fault):
            self._call("supervisor.stopProcess", name, True, timeout_s=self._stop_timeout(name))

    def _stop_timeout(self, name: str) -> float:
        # stopProcess waits for the program's own stopwaitsecs, then its SIGKILL.
        for line in self.paths.config.read_text().split(f"[program:{name}]", 1)[-1].splitlines():
            if line.startswith("stopwaitsecs="):
                return float(line.split("=", 1)[1]) + RPC_TIMEOUT_S
        return 60.0 + RPC_TIMEOUT_S

    def signal(self, name: str, sig: signals.Signals | int) -> None:
        """Send `sig` to program NAME's whole process group (SIGSTOP and SIGCONT included)."""
        pid = self.pid(name)
        if pid is None:
            raise SupervisorError(f"{name} is not running")
        # supervisord makes each program the leader of its own process group.
        os.killpg(pid, sig)

    def wait_running(self, name: str, timeout_s: float = 30.0, replacing: int | None = None) -> int:
        """Wait until supervisord reports NAME running (with a pid other than `replacing`).

        Returns its pid; raises SupervisorError when supervisord gives up on it (FATAL) or
        the time runs out.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(name)
            if status.running and status.pid is not None and status.pid != replacing:
                return status.pid
            if status.state == "FATAL":
                raise SupervisorError(
                    f"{name} FATAL: {status.description}{log_tail(self.layout.logfile(name))}"
                )
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"{name} not running after {timeout_s:.0f} s ({status.state})"
                    f"{log_tail(self.layout.logfile(name))}"
                )
            time.sleep(POLL_S)
