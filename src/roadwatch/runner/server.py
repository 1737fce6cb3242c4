"""What every server of the native runner shares: its settings, folders, pidfile and stop."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from roadwatch.runner.process import RunLayout, read_pid, stop_process
from roadwatch.settings import Settings


class Server:
    """One server process started by the runner, known by `name` in logs/ and pids/."""

    name: ClassVar[str]
    # The folder under the run directory holding this server's data.
    data_folder: ClassVar[str]

    def __init__(self, settings: Settings, layout: RunLayout) -> None:
        self.settings = settings
        self.layout = layout

    @property
    def folder(self) -> Path:
        return self.layout.data(self.data_folder)

    def running(self) -> bool:
        """Return True while the process the runner started is alive."""
        return read_pid(self.layout.pidfile(self.name)) is not None

    def stop(self) -> None:
        """Stop the server: TERM, then KILL after a grace period."""
        stop_process(self.layout, self.name)
