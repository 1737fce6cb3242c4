"""What every server of the native runner shares: its settings, folders, program and start."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from roadwatch.runner.process import (
    Program,
    RunLayout,
    RunnerError,
    read_pid,
    start_program,
    stop_process,
    wait_until,
)
from roadwatch.settings import Settings

LOG_TAIL_LINES = 20


class Server:
    """One server of a run, known by `name` in logs/, pids/ and supervisord.

    `prepare`, `program`, `healthy` and `after_start` describe it; `make up` hands the program
    to supervisord, while `start` runs it unsupervised (the test harness and the benchmarks).
    """

    name: ClassVar[str]
    # The folder under the run directory holding this server's data.
    data_folder: ClassVar[str]
    start_timeout_s: ClassVar[float] = 15.0

    def __init__(self, settings: Settings, layout: RunLayout) -> None:
        self.settings = settings
        self.layout = layout

    @property
    def folder(self) -> Path:
        return self.layout.data(self.data_folder)

    def pid(self) -> int | None:
        """Return the pid of the running server (recorded by whoever started it), or None."""
        return read_pid(self.layout.pidfile(self.name))

    def running(self) -> bool:
        """Return True while the server's process is alive."""
        return self.pid() is not None

    def prepare(self) -> None:
        """Create the files the server needs before it starts; safe to repeat."""

    def program(self) -> Program:
        """Return how to run the server in the foreground."""
        raise NotImplementedError

    def healthy(self) -> bool:
        """Return True when the server's process runs and answers."""
        raise NotImplementedError

    def after_start(self, started: bool) -> None:
        """Finish the set-up that needs the server answering (accounts, schema); safe to repeat.

        `started` tells whether the process was just started, or was running already.
        """

    def start(self) -> None:
        """Start the server unsupervised unless it runs, wait until it answers, finish set-up."""
        self.layout.ensure()
        self.prepare()
        started = not self.running()
        if started:
            start_program(self.layout, self.program())
        died = False

        def ready() -> bool:
            nonlocal died
            if not self.running():
                died = True
                return True
            return self.healthy()

        logfile = self.layout.logfile(self.name)
        wait_until(ready, self.name, self.start_timeout_s, logfile)
        if died:
            raise RunnerError(f"{self.name} exited during start-up{log_tail(logfile)}")
        self.after_start(started)

    def stop(self) -> None:
        """Stop the server: TERM to its process group, then KILL after its grace period."""
        stop_process(self.layout, self.name, grace_s=self.program().stop_grace_s)


def log_tail(logfile: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last lines of `logfile`, each on its own line, for an error message."""
    if not logfile.exists():
        return ""
    return "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:])
