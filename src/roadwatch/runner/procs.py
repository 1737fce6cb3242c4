"""What /proc says about the processes of a run: who is tagged as ours, who holds a port.

Every process the runner starts carries `ROADWATCH_PROGRAM=<run folder>/<name>` in its
environment, and so do its children (Apache's workers, say): that tag survives the death of the
parent, so the leftovers of a killed program can be found and ended, and `down` can prove that
nothing of a run is left. Only this module reads /proc; nothing here imports the rest of the
runner, so the launcher stays quick to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MARKER = "ROADWATCH_PROGRAM"
_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def marker(root: Path, name: str) -> str:
    """Return the tag value of program NAME of the run under `root`."""
    return f"{Path(root).resolve()}/{name}"


@dataclass(frozen=True)
class ProcessInfo:
    """One process as /proc shows it."""

    pid: int
    pgid: int
    tag: str | None
    cmdline: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.cmdline[:80]})"


def _pids() -> Iterator[int]:
    with contextlib.suppress(OSError):
        for entry in os.scandir(_PROC):
            if entry.name.isdigit():
                yield int(entry.name)


def _tag(pid: int) -> str | None:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = MARKER.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def _stat(pid: int) -> tuple[str, int] | None:
    """Return (state, process group) of `pid`, or None once it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[2]))


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat from the third (the state) on, or None."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started_at(pid: int) -> float | None:
    """Return when `pid` started (seconds since the epoch), or None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        boot = next(
            float(line.split()[1])
            for line in (_PROC / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    # Field 22 of proc(5), in clock ticks since boot.
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def info(pid: int) -> ProcessInfo | None:
    """Return what /proc knows of `pid`, or None when it is gone (or a zombie)."""
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    return ProcessInfo(pid, stat[1], _tag(pid), cmdline)


def alive(pid: int) -> bool:
    """Return True while `pid` exists and is not a zombie.

    A killed multi-threaded process (Apache's workers) shows its first thread as a zombie while
    the others are still exiting and still hold its files, listening sockets included: it is
    gone only once every thread is.
    """
    stat = _stat(pid)
    if stat is None:
        return False
    if stat[0] not in ("Z", "X"):
        return True
    try:
        tasks = [int(entry.name) for entry in os.scandir(_PROC / str(pid) / "task")]
    except OSError:
        return False
    return any(_task_running(pid, task) for task in tasks if task != pid)


def _task_running(pid: int, task: int) -> bool:
    try:
        text = (_PROC / str(pid) / "task" / str(task) / "stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def tagged(prefix: str) -> list[ProcessInfo]:
    """Every live process whose tag is `prefix` or lies under it (`<root>/` for a whole run)."""
    found = []
    own = os.getpid()
    for pid in _pids():
        if pid == own:
            continue
        tag = _tag(pid)
        if tag is None or not (tag == prefix or (prefix.endswith("/") and tag.startswith(prefix))):
            continue
        process = info(pid)
        if process is not None:
            found.append(process)
    return found


def of_run(root: Path) -> list[ProcessInfo]:
    """Every live process tagged as belonging to the run under `root`."""
    return tagged(f"{Path(root).resolve()}/")


def mentioning(root: Path) -> list[ProcessInfo]:
    """Every live process whose working folder or command line lies in or names `root`."""
    folder = str(Path(root).resolve())
    found = []
    own = os.getpid()
    for pid in _pids():
        if pid == own:
            continue
        try:
            cwd = os.readlink(_PROC / str(pid) / "cwd")
        except OSError:
            cwd = ""
        process = info(pid)
        if process is None:
            continue
        if cwd == folder or cwd.startswith(folder + "/") or folder in process.cmdline:
            found.append(process)
    return found


def _listening_inodes(ports: Iterable[int]) -> dict[int, int]:
    """Map the inode of each listening TCP socket on one of `ports` to its port."""
    wanted = set(ports)
    inodes: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                inodes[int(fields[9])] = port
    return inodes


def listeners(ports: Iterable[int]) -> dict[int, set[int]]:
    """Map each of `ports` that something listens on to the pids holding that socket."""
    inodes = _listening_inodes(ports)
    holders: dict[int, set[int]] = {}
    if not inodes:
        return holders
    for pid in _pids():
        try:
            fds = os.scandir(_PROC / str(pid) / "fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    port = inodes.get(int(target[8:-1]))
                    if port is not None:
                        holders.setdefault(port, set()).add(pid)
    return holders


def end(processes: Iterable[ProcessInfo], grace_s: float, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM `processes`, SIGKILL what is left after `grace_s`; return the pids still alive."""
    pids = [process.pid for process in processes]
    if grace_s > 0:
        _send(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.02)
    _send([pid for pid in pids if alive(pid)], signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.02)
    return [pid for pid in pids if alive(pid)]


def _send(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
