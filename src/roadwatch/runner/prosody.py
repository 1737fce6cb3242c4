"""Prosody for the native runner: data folder, process, and the gateway and collector accounts."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
from collections.abc import Sequence
from pathlib import Path

from roadwatch.runner import procs, tls
from roadwatch.runner.process import (
    STANDARD_PATH,
    Program,
    RunnerError,
    port_open,
    prioritised,
    run_checked,
)
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir

log = logging.getLogger(__name__)

# Prosody refuses to run as root and half-starts when tried (docs/STACK-NOTES.md §6): it runs as
# this account.
PROSODY_USER = "prosody"
START_TIMEOUT_S = 20.0
PROSODYCTL_TIMEOUT_S = 30.0

# The only settings the config file reads (deploy/prosody/prosody.cfg.lua); passing the others
# would hand every secret of the system to a process that needs none of them.
_CONFIG_VARIABLES = (
    "ROADWATCH_XMPP_DOMAIN",
    "ROADWATCH_XMPP_PORT",
    "ROADWATCH_XMPP_BIND",
    "ROADWATCH_BOSH_PORT",
    "ROADWATCH_MYSQL_HOST",
    "ROADWATCH_MYSQL_PORT",
    "ROADWATCH_PROSODY_DB_NAME",
    "ROADWATCH_PROSODY_DB_USER",
    "ROADWATCH_PROSODY_DB_PASSWORD",
)
# Optional knobs of the config file, passed through from our own environment when set.
_OPTIONAL_VARIABLES = (
    "ROADWATCH_PROSODY_LOG_LEVEL",
    "ROADWATCH_PROSODY_MODULES_DIR",
    "ROADWATCH_PROSODY_SMACKS_HIBERNATION_S",
    "ROADWATCH_PROSODY_ARCHIVE_EXPIRES",
    "ROADWATCH_PUBSUB_MAX_ITEMS",
    # Bounds on ordinary accounts (deploy/prosody/modules/mod_account_limits.lua).
    "ROADWATCH_PROSODY_INPUT_RATE",
    "ROADWATCH_PROSODY_STORED_BURST",
    "ROADWATCH_PROSODY_STORED_PER_DAY",
    "ROADWATCH_PROSODY_STORED_BURST_BYTES",
    "ROADWATCH_PROSODY_STORED_BYTES_PER_DAY",
    "ROADWATCH_PROSODY_OFFLINE_MAX",
)


class Prosody(Server):
    """The XMPP server of docs/contract/xmpp.md §1: c2s, BOSH, PubSub and the archive, stored in
    MySQL."""

    name = "prosody"
    data_folder = "prosody"
    start_timeout_s = START_TIMEOUT_S

    @property
    def config_file(self) -> Path:
        return deploy_dir() / "prosody" / "prosody.cfg.lua"

    def environment(self) -> dict[str, str]:
        """Return the environment the config file reads, and nothing else of ours."""
        settings_env = self.settings.as_environment()
        env = {name: settings_env[name] for name in _CONFIG_VARIABLES}
        env.update({name: os.environ[name] for name in _OPTIONAL_VARIABLES if name in os.environ})
        env["ROADWATCH_PROSODY_DATA_DIR"] = str(self.folder)
        # Prosody's own copy of the server certificate and key (prepare()).
        env["ROADWATCH_PROSODY_TLS_DIR"] = str(self.folder)
        env.update(tls.certificate_tag(self.settings))
        env["ROADWATCH_PROSODY_INTERFACE"] = self.bosh_interface
        env["PATH"] = STANDARD_PATH
        env["LANG"] = "C.UTF-8"
        env["HOME"] = str(self.folder)
        return env

    @property
    def bosh_interface(self) -> str:
        """Return where BOSH listens: loopback unless told (Apache proxies it)."""
        return os.environ.get("ROADWATCH_PROSODY_INTERFACE", "127.0.0.1")

    def prepare(self) -> None:
        """Install the server certificate and give the data folder to the prosody user."""
        tls.install(tls.ensure_certificates(self.settings), self.folder)
        self._prepare_folder()

    def program(self) -> Program:
        prosody = shutil.which("prosody") or "/usr/bin/prosody"
        # -F keeps Prosody in the foreground (prosodyctl would daemonize it).
        argv = [prosody, "-F", "--config", str(self.config_file)]
        env = self.environment()
        env[procs.MARKER] = procs.marker(self.layout.root, self.name)
        return Program(
            self.name,
            prioritised(self._as_prosody_user(argv), self.settings.pipeline_nice),
            env,
            self.folder,
            ports=(self.settings.xmpp_port, self.settings.bosh_port),
        )

    def after_start(self, started: bool) -> None:
        """Create or update the service accounts."""
        self.ensure_accounts()
        log.info(
            "prosody serving %s on %s:%d (BOSH on port %d)",
            self.settings.xmpp_domain,
            self.settings.xmpp_host,
            self.settings.xmpp_port,
            self.settings.bosh_port,
        )

    def healthy(self) -> bool:
        if not self.running():
            return False
        s = self.settings
        return port_open(tls.probe_host(s.xmpp_bind), s.xmpp_port) and port_open(
            tls.probe_host(self.bosh_interface), s.bosh_port
        )

    def ensure_accounts(self) -> None:
        """Create gateway@ and collector@, or reset their passwords to the configured ones."""
        s = self.settings
        for user, secret in (
            ("gateway", s.xmpp_gateway_password),
            ("collector", s.xmpp_collector_password),
        ):
            self.set_password(user, secret.get_secret_value())

    def set_password(self, user: str, password: str) -> None:
        """Create or update the account USER@domain (prosodyctl register overwrites)."""
        if not password:
            raise RunnerError(f"no XMPP password for {user}: run `make up` to generate .env")
        if "\n" in password:
            raise RunnerError(f"the XMPP password for {user} contains a line break")
        argv = [
            shutil.which("prosodyctl") or "/usr/bin/prosodyctl",
            "--config",
            str(self.config_file),
            "register",
            user,
            self.settings.xmpp_domain,
        ]
        # The password goes through standard input (asked twice), never on a command line.
        run_checked(
            self._as_prosody_user(argv),
            f"prosodyctl register {user}",
            input=f"{password}\n{password}\n",
            env=self.environment(),
            cwd=self.folder,
            timeout=PROSODYCTL_TIMEOUT_S,
        )

    def delete_account(self, user: str) -> None:
        """Delete the account USER@domain, ending its open sessions when Prosody runs."""
        jid = f"{user}@{self.settings.xmpp_domain}"
        if self.running():
            self._shell(f"user:delete({_lua_string(jid)})", f"delete {user}")
            return
        argv = [self._prosodyctl(), "--config", str(self.config_file), "deluser", jid]
        run_checked(
            self._as_prosody_user(argv),
            f"prosodyctl deluser {user}",
            env=self.environment(),
            cwd=self.folder,
            timeout=PROSODYCTL_TIMEOUT_S,
        )

    def change_password(self, user: str, password: str) -> None:
        """Give USER@domain a new password, ending its open sessions when Prosody runs."""
        if not self.running():
            self.set_password(user, password)
            return
        jid = f"{user}@{self.settings.xmpp_domain}"
        # Through standard input, like every password: never on a command line.
        command = f"user:password({_lua_string(jid)}, {_lua_string(password)})"
        self._shell(command, f"new password for {user}")

    def _shell(self, command: str, what: str) -> None:
        """Run one command in the running server's admin shell (mod_admin_shell)."""
        argv = [self._prosodyctl(), "--config", str(self.config_file), "shell", "--quiet"]
        printed = run_checked(
            self._as_prosody_user(argv),
            f"prosodyctl shell: {what}",
            input=command + "\n",
            env=self.environment(),
            cwd=self.folder,
            timeout=PROSODYCTL_TIMEOUT_S,
        )
        # The shell prints "| OK: ..." or "! error" and exits 0 either way.
        if "! " in printed or "OK" not in printed:
            raise RunnerError(f"prosodyctl shell: {what} failed: {printed.strip()[:200]}")

    @staticmethod
    def _prosodyctl() -> str:
        return shutil.which("prosodyctl") or "/usr/bin/prosodyctl"

    def _prepare_folder(self) -> None:
        folder = self.folder
        account = self._account()
        if account is not None:
            for path in (folder, *folder.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        folder.chmod(0o750)

    def _account(self) -> pwd.struct_passwd | None:
        """Return the prosody account when we must switch to it (running as root), else None."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(PROSODY_USER)
        except KeyError as exc:
            raise RunnerError(
                f"no {PROSODY_USER!r} user: install the prosody package (apt-get install prosody)"
            ) from exc

    def _as_prosody_user(self, argv: Sequence[str]) -> list[str]:
        if self._account() is None:
            return list(argv)
        # setpriv execs in place (no extra parent), so the pidfile holds Prosody's own pid.
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [
            setpriv,
            f"--reuid={PROSODY_USER}",
            f"--regid={PROSODY_USER}",
            "--init-groups",
            "--",
            *argv,
        ]


def _lua_string(text: str) -> str:
    """Quote `text` as a Lua string literal (the admin shell evaluates Lua)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
