"""Versioned schema migrations: numbered `.sql` files applied once each, in order.

A migration is a file `NNNN_name.sql` in `migrations/`, holding statements separated by `;`.
MySQL commits DDL implicitly, so a migration is not atomic: write its statements so that they can
run again after a partial failure (`CREATE TABLE IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`…).
Runs are serialised across processes with a named server lock, so two services starting together
both succeed and apply each file once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pymysql

from roadwatch.adapters.mysql.connection import (
    DbConnection,
    StoreError,
    StoreUnavailable,
    is_connection_lost,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Long enough for another process to finish applying the same migrations.
LOCK_TIMEOUT_S = 60

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    checksum   CHAR(64) CHARACTER SET ascii NOT NULL,
    applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (name)
) ENGINE = InnoDB
"""


class MigrationError(StoreError):
    """A migration could not be applied."""


# Checksums these files had before only their comments were reworded: a database that
# recorded them applied the same statements, and is not told its migrations changed.
EARLIER_CHECKSUMS: dict[str, frozenset[str]] = {
    "0001_events": frozenset({"11beaa4034602bd31b7821caccb71d9e2c1a8edaf12d84acdda6c20f3d685949"}),
    "0002_zones": frozenset({"d0a2cd8c2e2ade193da39aee738fe1e46604a03f832bef33dae1e9e7974970e6"}),
    "0003_zone_revision": frozenset(
        {"9f9990b4aabee14e5d75b6c97b3fd96b2a5b6cd66d94f4fcf8d1dff663776ce5"}
    ),
    "0004_query_performance": frozenset(
        {"d156fbf886238c464f12360801e7b45e5e9551873d8797d908ed32b7d424dc57"}
    ),
    "0005_type_cell_index": frozenset(
        {"343fca273a30afebf98ca0b7cbe01d28c23cea80cfe4f295a5d9838bcf0eb4e6"}
    ),
}


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def matches(self, recorded: str) -> bool:
        """Tell whether a recorded checksum is this file's, now or before a comment rewording."""
        return recorded == self.checksum or recorded in EARLIER_CHECKSUMS.get(self.name, ())

    def statements(self) -> list[str]:
        """Return the statements of this file, comments removed."""
        return split_statements(self.sql)


def default_directory() -> Traversable:
    """The migrations shipped with the package."""
    return resources.files("roadwatch.adapters.mysql").joinpath("migrations")


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """Read the migration files of `directory`, ordered by number."""
    folder = directory if directory is not None else default_directory()
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise MigrationError(f"two migrations numbered {number:04d}")
        found[number] = Migration(
            name=entry.name.removesuffix(".sql"), sql=entry.read_text("utf-8")
        )
    return [found[number] for number in sorted(found)]


def apply_migrations(
    connection: DbConnection, directory: Traversable | Path | None = None
) -> list[str]:
    """Apply the migrations not yet recorded in `schema_migrations`; return their names."""
    migrations = load_migrations(directory)
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            row = cur.fetchone()
            if row is None or row[0] is None:
                raise MigrationError("the connection has no current database")
            # Server-wide lock name, so include the database it protects (max 64 characters).
            lock = f"rw.migrations.{row[0]}"[:64]
            cur.execute("SELECT GET_LOCK(%s, %s)", (lock, LOCK_TIMEOUT_S))
            got = cur.fetchone()
            if got is None or got[0] != 1:
                raise MigrationError(f"migration lock {lock!r} busy for {LOCK_TIMEOUT_S} s")
            try:
                return _apply_locked(connection, migrations)
            finally:
                cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                cur.fetchall()
    except pymysql.err.MySQLError as exc:
        if is_connection_lost(exc):
            raise StoreUnavailable(f"lost the database while migrating: {exc}") from exc
        raise MigrationError(f"migration failed: {exc}") from exc


def _apply_locked(connection: DbConnection, migrations: Iterable[Migration]) -> list[str]:
    applied: list[str] = []
    with connection.cursor() as cur:
        cur.execute(_CREATE_TABLE)
        cur.execute("SELECT name, checksum FROM schema_migrations")
        done: dict[str, str] = {name: checksum for name, checksum in cur.fetchall()}
        connection.commit()
        for migration in migrations:
            recorded = done.get(migration.name)
            if recorded is not None:
                if not migration.matches(recorded):
                    # An applied file was edited: the change will never run; say so loudly.
                    log.warning("migration %s changed after it was applied", migration.name)
                continue
            log.info("applying migration %s", migration.name)
            for statement in migration.statements():
                try:
                    cur.execute(statement)
                except pymysql.err.MySQLError as exc:
                    connection.rollback()
                    raise MigrationError(f"{migration.name}: {exc}") from exc
            cur.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)",
                (migration.name, migration.checksum),
            )
            connection.commit()
            applied.append(migration.name)
    return applied


def split_statements(sql: str) -> list[str]:
    """Split SQL text on `;` outside quotes and comments; drop comments and empty statements."""
    statements: list[str] = []
    current: list[str] = []
    i, length = 0, len(sql)
    while i < length:
        char = sql[i]
        pair = sql[i : i + 2]
        if pair == "--" or char == "#":
            end = sql.find("\n", i)
            i = length if end < 0 else end
            continue
        if pair == "/*":
            end = sql.find("*/", i + 2)
            i = length if end < 0 else end + 2
            current.append(" ")
            continue
        if char in "'\"`":
            end = _closing_quote(sql, i)
            current.append(sql[i:end])
            i = end
            continue
        if char == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current))
    return [text.strip() for text in statements if text.strip()]


def _closing_quote(sql: str, start: int) -> int:
    """Return the index just past the quoted literal starting at `start`."""
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\" and quote != "`":
            i += 2
            continue
        if sql[i] == quote:
            # A doubled quote is an escaped quote inside the literal.
            if sql[i + 1 : i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    raise MigrationError("unterminated quoted text in a migration")
