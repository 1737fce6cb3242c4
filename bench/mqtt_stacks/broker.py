"""A bare private Mosquitto for the client comparison: anonymous, loopback only, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bench.system import cpu_seconds
from roadwatch.runner.process import free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# QoS 1 messages a publisher may have unacknowledged: Mosquitto's Receive Maximum.
RECEIVE_MAXIMUM = 1000
# Mosquitto drops messages for a subscriber this many messages behind, QoS 0 and 1 alike:
# a benchmark run publishes fewer, so no candidate loses any for being slow.
MAX_QUEUED = 1_000_000

_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
# Nagle adds milliseconds per message at these rates: production runs without it too.
set_tcp_nodelay true
persistence false
max_queued_messages {max_queued}
max_inflight_messages {receive_maximum}
log_dest stderr
log_type error
log_type warning
connection_messages false
"""


def mosquitto_version() -> str:
    """The broker's version, as `mosquitto -h` prints it."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    answer = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, check=False)
    first = (answer.stdout or answer.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ").strip() if first else "?"


class PrivateBroker:
    """Mosquitto on a free port under a temporary folder, removed when the block ends."""

    def __init__(self) -> None:
        self.port = 0
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the broker is not running")
        return self._process.pid

    def cpu_s(self) -> float:
        """CPU time the broker has used so far."""
        return cpu_seconds(self.pid)

    def __enter__(self) -> PrivateBroker:
        root = Path(tempfile.mkdtemp(prefix="rw-mqtt-bench-"))
        root.chmod(0o755)  # started as root, Mosquitto runs as its own user
        self._root = root
        self.port = free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(
            _CONFIG.format(port=self.port, max_queued=MAX_QUEUED, receive_maximum=RECEIVE_MAXIMUM)
        )
        conf.chmod(0o644)
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with (root / "mosquitto.log").open("wb") as log:
            self._process = subprocess.Popen(
                [mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_listening()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None and self._root is not None
            if self._process.poll() is not None:
                log = (self._root / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited at start: {log.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {self.port}") from None
                time.sleep(0.02)

    def log_text(self) -> str:
        """What the broker logged (errors and warnings only)."""
        if self._root is None:
            return ""
        path = self._root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        self._process = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
