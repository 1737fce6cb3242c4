"""Mosquitto for the native runner: rendered config and ACL, password file, TLS, process."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
from pathlib import Path

from roadwatch.adapters.accounts import (
    AccountRegistry,
    mosquitto_password_hash,
    write_atomically,
)
from roadwatch.runner import tls
from roadwatch.runner.process import (
    Program,
    RunnerError,
    port_open,
    prioritised,
    program_environment,
)
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir, render_file

log = logging.getLogger(__name__)

# Mosquitto drops root privileges to this account, so its files must belong to it.
MOSQUITTO_USER = "mosquitto"
# The services' own hashes, joined with the account registry's into the broker's password file.
SERVICES_PASSWD = "passwd.services"


class Mosquitto(Server):
    """The MQTT broker of docs/contract/mqtt.md §1, authenticated, with the per-vehicle ACL."""

    name = "mosquitto"
    data_folder = "mosquitto"

    @property
    def passwd_file(self) -> Path:
        return self.folder / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.folder / "acl"

    @property
    def registry(self) -> AccountRegistry:
        return AccountRegistry(self.settings.account_folder, self.settings.its_prefix)

    def environment(self) -> dict[str, str]:
        env = self.settings.as_environment()
        env["ROADWATCH_MOSQUITTO_DIR"] = str(self.folder)
        # The broker's own copy of the server certificate and key (prepare()).
        env["ROADWATCH_MOSQUITTO_TLS_DIR"] = str(self.folder)
        return env

    @property
    def config_file(self) -> Path:
        return self.folder / "mosquitto.conf"

    def prepare(self) -> None:
        """Render the config, and the password file and ACL of the services and accounts."""
        env = self.environment()
        render_file(deploy_dir() / "mosquitto" / "mosquitto.conf", self.config_file, env)
        render_file(deploy_dir() / "mosquitto" / "acl", self._services_acl, env, mode=0o600)
        tls.install(tls.ensure_certificates(self.settings), self.folder)
        services = []
        for user, secret in (
            (self.settings.mqtt_gateway_user, self.settings.mqtt_gateway_password),
            (self.settings.mqtt_fleet_user, self.settings.mqtt_fleet_password),
        ):
            if not secret.get_secret_value():
                raise RunnerError(f"no MQTT password for {user}: run `make up` to generate .env")
            services.append(f"{user}:{mosquitto_password_hash(secret.get_secret_value())}\n")
        write_atomically(self._services_passwd, "".join(services).encode(), 0o600)
        self.registry.ensure()
        self.apply_accounts()

    def apply_accounts(self) -> None:
        """Write the broker's password file and ACL: the services' and then the registry's.

        A running broker sees them after `reload()`.
        """
        registry = self.registry
        for combined, parts, mode in (
            (self.passwd_file, (self._services_passwd, registry.passwd_file), 0o600),
            (self.acl_file, (self._services_acl, registry.acl_file), 0o600),
        ):
            text = "".join(part.read_text() for part in parts if part.exists())
            write_atomically(combined, text.encode(), mode)
        self._give_to_broker()

    def prepared(self) -> bool:
        """Tell whether `prepare()` made this broker's files in this run folder."""
        # Looked at without creating the folder: the containers' accounts tool has none.
        return (self.layout.root / self.data_folder / SERVICES_PASSWD).exists()

    @property
    def _services_passwd(self) -> Path:
        return self.folder / SERVICES_PASSWD

    @property
    def _services_acl(self) -> Path:
        return self.folder / "acl.services"

    def reload(self) -> None:
        """Make the running broker re-read its password file and ACL."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def program(self) -> Program:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return Program(
            self.name,
            prioritised((mosquitto, "-c", str(self.config_file)), self.settings.pipeline_nice),
            program_environment(self.layout.root, self.name, tls.certificate_tag(self.settings)),
            self.folder,
            ports=(self.settings.mqtt_port, self.settings.mqtt_tls_port),
        )

    def after_start(self, started: bool) -> None:
        if not started:
            # A broker that was already running learns the accounts prepare() has just written
            # (never a just-started one: SIGHUP before its handler is set would end it).
            self.reload()
        s = self.settings
        log.info(
            "mosquitto listening on %s:%d, with TLS on %s:%d",
            s.mqtt_host,
            s.mqtt_port,
            s.mqtt_tls_bind,
            s.mqtt_tls_port,
        )

    def healthy(self) -> bool:
        s = self.settings
        return (
            self.running()
            and port_open(s.mqtt_host, s.mqtt_port)
            and port_open(tls.probe_host(s.mqtt_tls_bind), s.mqtt_tls_port)
        )

    def _give_to_broker(self) -> None:
        try:
            account = pwd.getpwnam(MOSQUITTO_USER)
        except KeyError:
            return  # not running as a privileged user: the broker keeps our uid
        if os.geteuid() != 0:
            return
        for path in (self.folder, *self.folder.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
