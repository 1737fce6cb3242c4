"""Run MariaDB natively: create the datadir, start mariadbd, provision databases and users."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pymysql

from roadwatch.adapters.mysql.connection import DbConnection, connect
from roadwatch.adapters.mysql.migrate import apply_migrations
from roadwatch.runner.process import (
    Program,
    RunnerError,
    prioritised,
    program_environment,
    run_checked,
)
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
# InnoDB flushes dirty pages and dumps the buffer pool list on a clean shutdown.
STOP_GRACE_S = 60.0
# sun_path holds 108 bytes on Linux; stay well below it.
MAX_SOCKET_PATH = 100
SERVER_USER = "mysql"
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
# Each application account is granted from anywhere (containers connect over a network) and
# from the local socket ('%' does not match 'localhost' in MySQL's account matching).
_ACCOUNT_HOSTS = ("%", "localhost")


class MariaDB(Server):
    """A private mariadbd for one run layout, provisioned for RoadWatch and Prosody."""

    name = "mariadb"
    data_folder = "mysql"
    start_timeout_s = START_TIMEOUT_S

    @property
    def config_file(self) -> Path:
        return deploy_dir() / "mysql" / "roadwatch.cnf"

    # --- paths -----------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self.folder / "data"

    @property
    def socket_path(self) -> Path:
        """The unix socket; moved to a short path in the temp folder if the home is too deep."""
        path = self.folder / "mysqld.sock"
        if len(str(path)) < MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"roadwatch-mysql-{digest}.sock"

    @property
    def _server_pidfile(self) -> Path:
        return self.folder / "mariadbd.pid"

    # --- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the datadir and its system tables, once."""
        self.layout.ensure()
        self._prepare_datadir()

    def program(self) -> Program:
        return Program(
            self.name,
            prioritised(self._server_argv(), self.settings.pipeline_nice),
            program_environment(self.layout.root, self.name),
            self.folder,
            stop_grace_s=STOP_GRACE_S,
            # A mariadbd left over from a killed supervisord shuts down cleanly, if it can.
            leftover_grace_s=STOP_GRACE_S,
            ports=(self.settings.mysql_port,),
        )

    def after_start(self, started: bool) -> None:
        """Provision databases, users and the schema (re-applied on every start)."""
        if started:
            log.info(
                "mariadb started on %s:%d (socket %s)",
                self.settings.mysql_host,
                self.settings.mysql_port,
                self.socket_path,
            )
        self.provision()
        self.migrate()

    def healthy(self) -> bool:
        """Return True when the server process runs and answers as administrator."""
        if not self.running():
            return False
        try:
            with self.admin_connection(connect_timeout=2.0) as conn:
                conn.ping(reconnect=False)
        except (pymysql.err.MySQLError, OSError):
            return False
        return True

    def migrate(self) -> list[str]:
        """Apply the pending migrations as the application user; return their names."""
        conn = connect(self.settings)
        try:
            applied = apply_migrations(conn)
        finally:
            conn.close()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        return applied

    def provision(self) -> None:
        """Create the databases and accounts; re-running applies changed passwords."""
        s = self.settings
        accounts = (
            (s.mysql_database, s.mysql_user, s.mysql_password.get_secret_value()),
            (s.prosody_db_name, s.prosody_db_user, s.prosody_db_password.get_secret_value()),
        )
        with self.admin_connection() as conn, conn.cursor() as cur:
            for database, user, password in accounts:
                if not _IDENTIFIER.match(database):
                    raise RunnerError(f"database name {database!r} is not a plain identifier")
                if not _USER_NAME.match(user):
                    raise RunnerError(f"user name {user!r} has unexpected characters")
                if not password:
                    raise RunnerError(f"no password set for the MySQL user {user!r}")
                # Identifiers cannot be parameters; the name was checked against a strict
                # pattern above. Account names and passwords are parameters (string literals).
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{database}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
                for host in _ACCOUNT_HOSTS:
                    cur.execute(
                        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password)
                    )
                    cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                    cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@%s", (user, host))
        log.debug("provisioned databases %s and %s", s.mysql_database, s.prosody_db_name)

    @contextlib.contextmanager
    def admin_connection(
        self, database: str | None = None, connect_timeout: float = 5.0
    ) -> Iterator[DbConnection]:
        """Connect as the server administrator over the unix socket (socket authentication)."""
        conn = pymysql.connect(
            unix_socket=str(self.socket_path),
            user=_admin_user(),
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=connect_timeout,
            defer_connect=True,
        )
        # PyMySQL leaks its unix socket when connect() itself fails (as it does while the
        # server starts), so the socket is opened and closed here.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        conn.connect(sock)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    # --- internals -------------------------------------------------------------------------

    def _server_argv(self) -> list[str]:
        argv = [
            _binary("mariadbd"),
            # Must come first: only this file's settings apply, never /etc/mysql's.
            f"--defaults-file={self.config_file}",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self._server_pidfile}",
            f"--port={self.settings.mysql_port}",
            f"--bind-address={self.settings.mysql_host}",
        ]
        if os.geteuid() == 0:
            argv.append(f"--user={SERVER_USER}")
        return argv

    def _prepare_datadir(self) -> None:
        """Create an empty datadir and the system tables, once."""
        home, datadir = self.folder, self.datadir
        datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # mariadbd drops to the mysql user, which must own where it writes.
            server = pwd.getpwnam(SERVER_USER)
            for path in (home, datadir):
                if path.stat().st_uid != server.pw_uid:
                    os.chown(path, server.pw_uid, server.pw_gid)
        if (datadir / "mysql").is_dir():
            return
        log.info("initialising the MariaDB datadir %s", datadir)
        argv = [
            _binary("mariadb-install-db"),
            f"--defaults-file={self.config_file}",
            f"--datadir={datadir}",
            f"--user={SERVER_USER if os.geteuid() == 0 else _admin_user()}",
            # Administration by unix socket only: no administrator password to generate or leak.
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        run_checked(argv, "mariadb-install-db", cwd=str(home))


def _admin_user() -> str:
    """The account that socket authentication maps to the current system user."""
    return "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise RunnerError(f"{name} not found; install the mariadb-server package")
    return found
