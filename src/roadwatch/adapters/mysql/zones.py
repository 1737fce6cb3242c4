"""The zone store of docs/contract/storage.md §4 and docs/contract/rest-api.md §8: zones as GeoJSON
Features, a change counter, occupancy."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import pymysql
from pymysql.cursors import Cursor

from roadwatch.adapters.mysql.connection import (
    SourceStore,
    StoreError,
    error_code,
)
from roadwatch.adapters.mysql.store import datetime_to_ms, same_id
from roadwatch.domain.events import EventType
from roadwatch.domain.zones import MAX_ZONE_ID_LEN, InvalidZone, Zone, zone_from_feature

log = logging.getLogger(__name__)

# MySQL "duplicate entry" error number.
_DUPLICATE_KEY = 1062

_UPSERT_ZONE = (
    "INSERT INTO zones (id, name, feature, hysteresis_m, min_lat, min_lon, max_lat, max_lon) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE name = VALUES(name), feature = VALUES(feature), "
    "hysteresis_m = VALUES(hysteresis_m), min_lat = VALUES(min_lat), "
    "min_lon = VALUES(min_lon), max_lat = VALUES(max_lat), max_lon = VALUES(max_lon), "
    "version = version + 1"
)
_INSERT_ZONE = (
    "INSERT INTO zones (id, name, feature, hysteresis_m, min_lat, min_lon, max_lat, max_lon) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
# Written as an upsert so that a database whose counter row went missing heals itself.
_BUMP_REVISION = (
    "INSERT INTO zone_revision (id, revision) VALUES (1, 1) "
    "ON DUPLICATE KEY UPDATE revision = revision + 1"
)
_SELECT_REVISION = "SELECT revision FROM zone_revision WHERE id = 1"
_LOCK_REVISION = f"{_SELECT_REVISION} FOR UPDATE"
# The latest zone event of each station for one zone (ties on time broken by the sortable id);
# the station is inside when that event is an enter. Covered by idx_events_zone_type_started.
_OCCUPANCY = (
    "SELECT station_id, started_at FROM ("
    " SELECT s.station_id, e.started_at, e.type,"
    " ROW_NUMBER() OVER (PARTITION BY s.station_id ORDER BY e.started_at DESC, e.id DESC) AS nth"
    " FROM events e JOIN event_stations s ON s.event_id = e.id"
    f" WHERE {same_id('e.zone_id')} AND e.type IN (%s, %s)"
    ") latest WHERE nth = 1 AND type = %s ORDER BY started_at, station_id"
)


class ZoneExists(StoreError):
    """A zone with this id is already stored."""

    def __init__(self, zone_id: str) -> None:
        super().__init__(f"a zone with id {zone_id!r} already exists")
        self.zone_id = zone_id


class Occupant(NamedTuple):
    """A station inside a zone now, and the event time of its entry (epoch milliseconds)."""

    station_id: str
    since_ms: int


def _zone_row(zone: Zone) -> tuple[Any, ...]:
    min_lon, min_lat, max_lon, max_lat = zone.bbox
    return (
        zone.id,
        zone.name,
        orjson.dumps(zone.to_feature()).decode(),
        zone.hysteresis_m,
        min_lat,
        min_lon,
        max_lat,
        max_lon,
    )


def _zones_from_rows(rows: Iterable[Sequence[Any]]) -> list[Zone]:
    zones: list[Zone] = []
    for ident, feature in rows:
        try:
            zones.append(zone_from_feature(orjson.loads(feature)))
        except (InvalidZone, orjson.JSONDecodeError) as exc:
            # A row written under older validation rules: skip it rather than lose every zone.
            log.warning("stored zone %r is not valid any more, ignored: %s", ident, exc)
    return zones


class ZoneStore(SourceStore):
    """Zones in MySQL with a revision counter bumped by every change, over a connection source.

    Every method is one transaction. A session lost in the middle is reopened and the work run
    once more, as in the event store.
    """

    _log = log

    # --- reads -----------------------------------------------------------------------------

    def revision(self) -> int:
        """Return the change counter: 0 until the zones are first seeded or edited."""

        def work(cur: Cursor) -> int:
            return _read_revision(cur)

        return self._run(work, "zone revision", transaction=False)

    def list_zones(self) -> list[Zone]:
        """Return every stored zone, ordered by id."""
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, list[Zone]]:
        """Return the revision and every zone (ordered by id), read in one consistent view."""

        def work(cur: Cursor) -> tuple[int, list[Zone]]:
            revision = _read_revision(cur)
            cur.execute("SELECT id, feature FROM zones ORDER BY id")
            return revision, _zones_from_rows(cur.fetchall())

        return self._run(work, "zone snapshot", transaction=True)

    def get_zone(self, zone_id: str) -> Zone | None:
        """Return one zone, or None."""
        if not 0 < len(zone_id) <= MAX_ZONE_ID_LEN:
            return None

        def work(cur: Cursor) -> Zone | None:
            cur.execute(f"SELECT id, feature FROM zones WHERE {same_id('id')}", (zone_id,) * 2)
            zones = _zones_from_rows(cur.fetchall())
            return zones[0] if zones else None

        return self._run(work, "get zone", transaction=False)

    def occupancy(self, zone_id: str) -> list[Occupant]:
        """Return the stations whose latest event for this zone is a `zone_enter`, oldest first."""
        if not 0 < len(zone_id) <= MAX_ZONE_ID_LEN:
            return []
        params = (
            zone_id,
            zone_id,
            EventType.ZONE_ENTER.value,
            EventType.ZONE_EXIT.value,
            EventType.ZONE_ENTER.value,
        )

        def work(cur: Cursor) -> list[Occupant]:
            cur.execute(_OCCUPANCY, params)
            return [
                Occupant(str(station), datetime_to_ms(since)) for station, since in cur.fetchall()
            ]

        return self._run(work, "zone occupancy", transaction=False)

    # --- writes ----------------------------------------------------------------------------

    def create_zone(self, zone: Zone) -> None:
        """Store a new zone; raise ZoneExists if its id is taken."""
        row = _zone_row(zone)

        def work(cur: Cursor) -> None:
            try:
                cur.execute(_INSERT_ZONE, row)
            except pymysql.err.IntegrityError as exc:
                if error_code(exc) == _DUPLICATE_KEY:
                    raise ZoneExists(zone.id) from exc
                raise
            cur.execute(_BUMP_REVISION)

        self._run(work, "create zone", transaction=True)

    def update_zone(self, zone: Zone) -> bool:
        """Create or replace the zone with this id; return True if it was created."""
        row = _zone_row(zone)

        def work(cur: Cursor) -> bool:
            # Every zone writer locks the revision row first: writers take turns instead of
            # deadlocking on the gap locks of zone ids not yet stored.
            cur.execute(_LOCK_REVISION)
            cur.execute("SELECT 1 FROM zones WHERE id = %s FOR UPDATE", (zone.id,))
            created = cur.fetchone() is None
            cur.execute(_UPSERT_ZONE, row)
            cur.execute(_BUMP_REVISION)
            return created

        return self._run(work, "update zone", transaction=True)

    def delete_zone(self, zone_id: str) -> bool:
        """Delete one zone; return False if there was none."""
        if not 0 < len(zone_id) <= MAX_ZONE_ID_LEN:
            return False

        def work(cur: Cursor) -> bool:
            cur.execute(_LOCK_REVISION)
            deleted = cur.execute(f"DELETE FROM zones WHERE {same_id('id')}", (zone_id,) * 2) > 0
            if deleted:
                cur.execute(_BUMP_REVISION)
            return deleted

        return self._run(work, "delete zone", transaction=True)

    def seed_from(self, zones: Sequence[Zone]) -> bool:
        """Store `zones` only if the zones were never seeded nor edited; return True if stored.

        A zone deleted through the API thus stays deleted when the service starts again.
        """
        rows = [_zone_row(zone) for zone in zones]
        if not rows:
            return False

        def work(cur: Cursor) -> bool:
            # The row lock makes concurrent seeders take turns: one seeds, the others see 1.
            cur.execute(_LOCK_REVISION)
            found = cur.fetchone()
            if found is not None and int(found[0]) != 0:
                return False
            cur.executemany(_UPSERT_ZONE, rows)
            cur.execute(_BUMP_REVISION)
            return True

        return self._run(work, "seed zones", transaction=True)


def _read_revision(cur: Cursor) -> int:
    cur.execute(_SELECT_REVISION)
    row = cur.fetchone()
    return 0 if row is None else int(row[0])
