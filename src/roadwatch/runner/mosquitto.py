"""Mosquitto for the native runner: rendered config and ACL, password file, process."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
from pathlib import Path

from roadwatch.runner.process import (
    Program,
    RunnerError,
    port_open,
    prioritised,
    program_environment,
    run_checked,
)
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir, render_file

log = logging.getLogger(__name__)

# Mosquitto drops root privileges to this account, so its files must belong to it.
MOSQUITTO_USER = "mosquitto"


class Mosquitto(Server):
    """The MQTT broker of SPEC §2, authenticated, with the per-vehicle ACL."""

    name = "mosquitto"
    data_folder = "mosquitto"

    @property
    def passwd_file(self) -> Path:
        return self.folder / "passwd"

    def environment(self) -> dict[str, str]:
        env = self.settings.as_environment()
        env["ROADWATCH_MOSQUITTO_DIR"] = str(self.folder)
        return env

    @property
    def config_file(self) -> Path:
        return self.folder / "mosquitto.conf"

    def prepare(self) -> None:
        """Render the config and ACL and make sure the service accounts exist."""
        env = self.environment()
        render_file(deploy_dir() / "mosquitto" / "mosquitto.conf", self.config_file, env)
        render_file(deploy_dir() / "mosquitto" / "acl", self.folder / "acl", env, mode=0o640)
        self.set_password(
            self.settings.mqtt_gateway_user, self.settings.mqtt_gateway_password.get_secret_value()
        )
        self.set_password(
            self.settings.mqtt_fleet_user, self.settings.mqtt_fleet_password.get_secret_value()
        )
        self._give_to_broker()

    def set_password(self, user: str, password: str) -> None:
        """Create or update one account in the password file (hashed by mosquitto_passwd)."""
        if not password:
            raise RunnerError(f"no MQTT password for {user}: run `make up` to generate .env")
        argv = ["mosquitto_passwd", str(self.passwd_file), user]
        if not self.passwd_file.exists():
            argv.insert(1, "-c")
        # The password goes through standard input (asked twice), never on a command line,
        # where any local user could read it in /proc.
        run_checked(argv, f"mosquitto_passwd for {user}", input=f"{password}\n{password}\n")
        self.passwd_file.chmod(0o600)  # hashes only, but for the broker's eyes alone
        self._give_to_broker()

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
            program_environment(self.layout.root, self.name),
            self.folder,
            ports=(self.settings.mqtt_port,),
        )

    def after_start(self, started: bool) -> None:
        if not started:
            # A broker that was already running learns the accounts prepare() has just written
            # (never a just-started one: SIGHUP before its handler is set would end it).
            self.reload()
        log.info("mosquitto listening on %s:%d", self.settings.mqtt_host, self.settings.mqtt_port)

    def healthy(self) -> bool:
        running = self.running()
        return running and port_open(self.settings.mqtt_host, self.settings.mqtt_port)

    def _give_to_broker(self) -> None:
        try:
            account = pwd.getpwnam(MOSQUITTO_USER)
        except KeyError:
            return  # not running as a privileged user: the broker keeps our uid
        if os.geteuid() != 0:
            return
        for path in (self.folder, *self.folder.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
