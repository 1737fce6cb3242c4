"""Clients people already use, run unchanged as their own processes against the test servers.

- slixmpp's example PubSub client (tests/vendor/slixmpp), given only the server's address
  (custom_host.py), its password typed on standard input as at its prompt;
- profanity (Debian), in a pseudo-terminal, with the account file its own `/account set`
  commands write; what it shows is read off its screen;
- mosquitto_pub and mosquitto_sub with their options file (tests/integration/test_mqtt_clients.py).

Each trusts the RoadWatch CA the way OpenSSL-based programs take a CA without any option of
their own: the SSL_CERT_FILE variable (docs/accounts-and-tls.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PUBSUB_EXAMPLE = REPO / "tests" / "vendor" / "slixmpp" / "pubsub_client.py"
CUSTOM_HOST = Path(__file__).with_name("custom_host.py")
CLIENT_TIMEOUT_S = 60.0
# Escape sequences of a terminal (CSI, OSC, character sets): what is left is the text shown.
_ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>])")


@dataclass(frozen=True)
class XmppAccount:
    """A person's account and where their client connects (the domain resolves nowhere)."""

    jid: str
    password: str
    host: str
    port: int


def trusting(ca: Path | None) -> dict[str, str]:
    """Return this environment with `ca` as the only CA OpenSSL trusts (None: the system's)."""
    env = {name: value for name, value in os.environ.items() if name != "SSL_CERT_FILE"}
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    return env


def pubsub_example(
    account: XmppAccount, *arguments: str, ca: Path | None
) -> subprocess.CompletedProcess[str]:
    """Run slixmpp's example PubSub client as `account` with its defaults; return its output.

    Its own session (no controlling terminal) makes getpass() read the password from standard
    input, where a person would type it; it never is on the command line.
    """
    argv = [sys.executable, str(CUSTOM_HOST), account.host, str(account.port)]
    argv += [str(PUBSUB_EXAMPLE), "-j", account.jid, *arguments]
    return subprocess.run(
        argv,
        input=f"{account.password}\n",
        env=trusting(ca),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        start_new_session=True,
        check=False,
    )


class Profanity:
    """profanity logged in to `account` in a pseudo-terminal; `screen()` is what it shows.

    Its settings are its defaults but for the account file, as `/account add` and `/account set
    ... server|port|password` would write it: the domain resolves nowhere, so the host is given.
    """

    def __init__(self, account: XmppAccount, home: Path, ca: Path | None) -> None:
        self.account = account
        self.home = home
        self.ca = ca
        self._output = bytearray()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Profanity:
        data = self.home / "data" / "profanity"
        data.mkdir(parents=True, exist_ok=True)
        (self.home / "config").mkdir(exist_ok=True)
        accounts = data / "accounts"
        accounts.write_text(
            f"[{self.account.jid}]\n"
            "enabled=true\n"
            f"jid={self.account.jid}\n"
            f"server={self.account.host}\n"
            f"port={self.account.port}\n"
            "resource=profanity\n"
            f"password={self.account.password}\n"
        )
        accounts.chmod(0o600)
        env = trusting(self.ca)
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / "config"),
            XDG_DATA_HOME=str(self.home / "data"),
            TERM="xterm",
            LANG="C.UTF-8",
        )
        master, slave = pty.openpty()
        os.set_blocking(master, False)
        # A wide screen, so that a line of text is never cut.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 240, 0, 0))
        self._process = subprocess.Popen(
            ["profanity", "-a", self.account.jid],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=self.home,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, name="profanity-pty", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        while self._process is not None and self._master >= 0:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                if self._process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    def screen(self) -> str:
        """Return everything profanity has drawn, escape sequences removed, spaces collapsed."""
        with self._lock:
            raw = bytes(self._output)
        text = _ESCAPES.sub(b" ", raw).decode(errors="replace")
        return re.sub(r"\s+", " ", text)

    def wait_for(self, pattern: str, timeout_s: float) -> bool:
        """Wait until the screen shows `pattern` (a regular expression)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if re.search(pattern, self.screen()):
                return True
            if self._process is not None and self._process.poll() is not None:
                return bool(re.search(pattern, self.screen()))
            time.sleep(0.1)
        return False

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1


@contextlib.contextmanager
def profanity(account: XmppAccount, home: Path, ca: Path | None) -> Iterator[Profanity]:
    """Run profanity as `account` for the duration."""
    with Profanity(account, home, ca) as client:
        yield client
