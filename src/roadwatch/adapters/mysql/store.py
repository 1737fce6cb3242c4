"""The event store of docs/contract/storage.md §7: idempotent batched upserts and keyset-paginated
reads."""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from pymysql.cursors import Cursor

from roadwatch.adapters.mysql.connection import (
    ConnectionSource,
    SourceStore,
    StoreError,
)
from roadwatch.domain.events import Event, EventStatus, EventType

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ID_LEN = 64
MAX_STATE_KEY_LEN = 64
# Bounds the number of placeholders in one `IN (...)` list.
_IN_CHUNK = 1000
_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
# DATETIME covers years 1000 to 9999; a query bound outside means no bound, or no event.
DATETIME_MIN_MS = (datetime(1000, 1, 1) - _EPOCH) // _MS
DATETIME_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000) - _EPOCH) // _MS

BBox = tuple[float, float, float, float]

_COLUMNS = (
    "id, type, status, version, started_at, updated_at, ended_at, lat, lon, cause_code, "
    "zone_id, zone_name, station_ids, details"
)
_E_COLUMNS = ", ".join(f"e.{name.strip()}" for name in _COLUMNS.split(","))

# Placeholders only inside VALUES: PyMySQL's executemany() rewrites the batch into one
# multi-row statement only then, and otherwise silently sends one statement per row.
# Every column keeps its value unless the incoming version is strictly higher; `version` is
# assigned last because MySQL evaluates these assignments left to right.
_UPDATED = (
    "type",
    "status",
    "started_at",
    "updated_at",
    "ended_at",
    "lat",
    "lon",
    "cause_code",
    "zone_id",
    "zone_name",
    "station_count",
    "station_ids",
    "details",
)
_INSERT_EVENTS = (
    "INSERT INTO events (id, type, status, version, started_at, updated_at, ended_at, lat, lon, "
    "cause_code, zone_id, zone_name, station_count, station_ids, details) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE "
    + ", ".join(f"{c} = IF(VALUES(version) > version, VALUES({c}), {c})" for c in _UPDATED)
    + ", version = GREATEST(version, VALUES(version))"
)
_INSERT_STATIONS = (
    "INSERT INTO event_stations (event_id, station_id, started_at) VALUES (%s, %s, %s)"
)
_UPSERT_STATE = (
    "INSERT INTO collector_state (state_key, value) VALUES (%s, %s) "
    "ON DUPLICATE KEY UPDATE value = VALUES(value)"
)


# The grid of the events.grid_cell column (migration 0004): squares of 1/200 degree, numbered
# row (from -90° latitude) times GRID_COLUMNS plus column (from -180° longitude).
GRID_STEPS_PER_DEGREE = 200
GRID_ROWS = 180 * GRID_STEPS_PER_DEGREE + 1
GRID_COLUMNS = 360 * GRID_STEPS_PER_DEGREE + 1
# A bounding box over at most this many grid cells is read cell by cell, each cell's newest
# events from its index; larger boxes hold enough events to be read in plain time order.
MAX_BBOX_CELLS = 64
# At most this many (type, cell) parts in one listing; beyond, the box is read by cell only.
MAX_BBOX_PARTS = 128


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor that this store did not issue."""


def same_id(column: str) -> str:
    """Return SQL for `column` equal to a parameter, exactly: pass the parameter twice.

    Identifier columns are utf8mb4_bin, a PAD SPACE collation, where `=` alone finds 'a' for
    'a ': a client could read or delete another id's row. Equal lengths rule that out, and the
    equality still uses the column's index.
    """
    return f"({column} = %s AND CHAR_LENGTH({column}) = CHAR_LENGTH(%s))"


def ms_to_datetime(ms: int) -> datetime:
    """Convert epoch milliseconds to the naive UTC datetime stored in DATETIME(3)."""
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(moment: datetime) -> int:
    """Convert a naive UTC datetime read from DATETIME(3) to epoch milliseconds."""
    return (moment - _EPOCH) // _MS


def encode_cursor(started_ms: int, event_id: str) -> str:
    """Return the opaque cursor that resumes a listing after this event."""
    raw = orjson.dumps([started_ms, event_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Return (started_ms, id) from a cursor made by `encode_cursor`."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        data = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API issued") from exc
    if (
        not isinstance(data, list)
        or len(data) != 2
        or isinstance(data[0], bool)
        or not isinstance(data[0], int)
        or not isinstance(data[1], str)
        or not 0 < len(data[1]) <= MAX_ID_LEN
    ):
        raise InvalidCursor("cursor is not one this API issued")
    return data[0], data[1]


def grid_row(lat: float) -> int:
    """The grid row of a latitude, computed exactly as MariaDB computes the column."""
    return math.floor((lat + 90.0) * GRID_STEPS_PER_DEGREE)


def grid_column(lon: float) -> int:
    """The grid column of a longitude, computed exactly as MariaDB computes the column."""
    return math.floor((lon + 180.0) * GRID_STEPS_PER_DEGREE)


def grid_cell(lat: float, lon: float) -> int:
    """The events.grid_cell value of a position."""
    return grid_row(lat) * GRID_COLUMNS + grid_column(lon)


def grid_cell_bounds(cell: int) -> BBox:
    """Return (min_lon, min_lat, max_lon, max_lat) of a grid cell."""
    row, column = divmod(cell, GRID_COLUMNS)
    step = 1.0 / GRID_STEPS_PER_DEGREE
    min_lat = row * step - 90.0
    min_lon = column * step - 180.0
    return (
        round(min_lon, 9),
        round(min_lat, 9),
        round(min_lon + step, 9),
        round(min_lat + step, 9),
    )


def cells_covering(bbox: BBox, most: int) -> list[int] | None:
    """The grid cells that hold every point of the box, or None if there are more than `most`."""
    min_lon, min_lat, max_lon, max_lat = bbox
    rows = range(grid_row(min_lat), grid_row(max_lat) + 1)
    if min_lon <= max_lon:
        columns = list(range(grid_column(min_lon), grid_column(max_lon) + 1))
    else:  # across the antimeridian
        columns = [
            *range(grid_column(min_lon), grid_column(180.0) + 1),
            *range(grid_column(-180.0), grid_column(max_lon) + 1),
        ]
    if len(rows) * len(columns) > most:
        return None
    return [row * GRID_COLUMNS + column for row in rows for column in columns]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _clamp_ms(ms: int) -> int:
    return min(max(ms, DATETIME_MIN_MS), DATETIME_MAX_MS)


def _json(value: object, what: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from exc


def _event_row(event: Event, stations: Sequence[str]) -> tuple[Any, ...]:
    return (
        event.id,
        event.type.value,
        event.status.value,
        event.version,
        ms_to_datetime(event.started_ms),
        ms_to_datetime(event.updated_ms),
        None if event.ended_ms is None else ms_to_datetime(event.ended_ms),
        event.lat,
        event.lon,
        event.cause_code,
        event.zone_id,
        event.zone_name,
        len(stations),
        _json(list(stations), f"station_ids of event {event.id}"),
        _json(event.details, f"details of event {event.id}"),
    )


def _event_from_row(row: Sequence[Any]) -> Event:
    (ident, kind, status, version, started, updated, ended, lat, lon, cause, zone_id, zone_name,
     stations, details) = row  # fmt: skip
    return Event(
        id=ident,
        type=EventType(kind),
        status=EventStatus(status),
        version=int(version),
        started_ms=datetime_to_ms(started),
        updated_ms=datetime_to_ms(updated),
        ended_ms=None if ended is None else datetime_to_ms(ended),
        lat=float(lat),
        lon=float(lon),
        cause_code=None if cause is None else int(cause),
        station_ids=tuple(orjson.loads(stations)),
        zone_id=zone_id,
        zone_name=zone_name,
        details=orjson.loads(details),
    )


class EventStore(SourceStore):
    """Events in MySQL, one row per id at its highest version, over a connection source.

    Every method is one unit of work: it commits (ending any read snapshot) before returning.
    A session lost in the middle is reopened and the work run once more, which is safe because
    every write here is idempotent.
    """

    _log = log

    @property
    def source(self) -> ConnectionSource:
        """The connections this store works over, for other stores sharing them."""
        return self._source

    # --- writes ----------------------------------------------------------------------------

    def upsert(
        self, events: Sequence[Event], *, state: Mapping[str, str] | None = None
    ) -> list[Event]:
        """Store a batch in one transaction; return the events that were inserted or replaced.

        A row is replaced only by a strictly higher version, so replays and late older versions
        change nothing, and the station rows follow the winning version. `state` entries (such
        as the collector's archive position) are committed in the same transaction.
        """
        latest: dict[str, Event] = {}
        for event in events:
            held = latest.get(event.id)
            if held is None or event.version > held.version:
                latest[event.id] = event
        if state:
            for key in state:
                _check_state_key(key)
        if not latest and not state:
            return []
        # Sorted ids lock rows in one global order, which keeps concurrent writers from
        # deadlocking each other.
        batch = [latest[ident] for ident in sorted(latest)]
        stations = {event.id: tuple(dict.fromkeys(event.station_ids)) for event in batch}
        rows = {event.id: _event_row(event, stations[event.id]) for event in batch}

        def work(cur: Cursor) -> list[Event]:
            stored: dict[str, int] = {}
            for chunk in _chunks([event.id for event in batch], _IN_CHUNK):
                cur.execute(
                    f"SELECT id, version FROM events WHERE id IN ({_placeholders(len(chunk))}) "
                    "FOR UPDATE",
                    chunk,
                )
                stored.update((ident, int(version)) for ident, version in cur.fetchall())
            winners = [event for event in batch if event.version > stored.get(event.id, 0)]
            if winners:
                cur.executemany(_INSERT_EVENTS, [rows[event.id] for event in winners])
                replaced = [event.id for event in winners if event.id in stored]
                for chunk in _chunks(replaced, _IN_CHUNK):
                    cur.execute(
                        "DELETE FROM event_stations "
                        f"WHERE event_id IN ({_placeholders(len(chunk))})",
                        chunk,
                    )
                station_rows = [
                    (event.id, station, rows[event.id][4])
                    for event in winners
                    for station in stations[event.id]
                ]
                if station_rows:
                    cur.executemany(_INSERT_STATIONS, station_rows)
            if state:
                cur.executemany(_UPSERT_STATE, list(state.items()))
            return winners

        return self._run(work, "upsert", transaction=True)

    def set_state(self, key: str, value: str) -> None:
        """Store one state value under `key` (replacing any previous one)."""
        _check_state_key(key)

        def work(cur: Cursor) -> None:
            cur.execute(_UPSERT_STATE, (key, value))

        self._run(work, "set_state", transaction=True)

    # --- reads -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        """Return the state value stored under `key`, or None."""
        _check_state_key(key)

        def work(cur: Cursor) -> str | None:
            cur.execute("SELECT value FROM collector_state WHERE state_key = %s", (key,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return self._run(work, "get_state", transaction=False)

    def get_event(self, event_id: str) -> Event | None:
        """Return the latest stored version of one event, or None."""
        if not 0 < len(event_id) <= MAX_ID_LEN:
            return None

        def work(cur: Cursor) -> Event | None:
            cur.execute(f"SELECT {_COLUMNS} FROM events WHERE {same_id('id')}", (event_id,) * 2)
            row = cur.fetchone()
            return None if row is None else _event_from_row(row)

        return self._run(work, "get_event", transaction=False)

    def list_events(
        self,
        *,
        types: Collection[EventType] | None = None,
        status: EventStatus | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        station: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        zone: str | None = None,
        bbox: BBox | None = None,
    ) -> tuple[list[Event], str | None]:
        """Return one page of events, newest start first, and the cursor of the next page.

        `since_ms` (inclusive) and `until_ms` (exclusive) bound the start time; `bbox` is
        (min_lon, min_lat, max_lon, max_lat) and may cross the antimeridian (min_lon > max_lon).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = None if cursor is None else decode_cursor(cursor)
        if station is not None:
            # Driven by the station index, which yields that station's events in time order.
            source = "event_stations s STRAIGHT_JOIN events e ON e.id = s.event_id"
            time_col, id_col = "s.started_at", "s.event_id"
            where = [same_id("s.station_id")]
            params: list[Any] = [station, station]
        else:
            source = "events e"
            time_col, id_col = "e.started_at", "e.id"
            where, params = [], []
        if since_ms is not None and since_ms > DATETIME_MAX_MS:
            return [], None  # nothing stored starts that late
        # Every stored time is at least DATETIME_MIN_MS, and at most DATETIME_MAX_MS: a bound
        # beyond either is no bound (clamping `until` would drop the last millisecond).
        if since_ms is not None and since_ms > DATETIME_MIN_MS:
            where.append(f"{time_col} >= %s")
            params.append(ms_to_datetime(since_ms))
        if until_ms is not None and until_ms <= DATETIME_MAX_MS:
            where.append(f"{time_col} < %s")
            params.append(ms_to_datetime(max(until_ms, DATETIME_MIN_MS)))
        if after is not None:
            # Spelled out rather than as a row comparison so that MariaDB can use a range scan.
            after_time = ms_to_datetime(_clamp_ms(after[0]))
            where.append(f"({time_col} < %s OR ({time_col} = %s AND {id_col} < %s))")
            params.extend((after_time, after_time, after[1]))
        cells = None
        # A station's, a zone's and the active events are few enough to filter by position
        # one by one; otherwise a small box is read cell by cell.
        if bbox is not None and station is None and zone is None and status != EventStatus.ACTIVE:
            cells = cells_covering(bbox, MAX_BBOX_CELLS)
        kinds = sorted({EventType(kind).value for kind in types or ()})
        # Some types only, in few enough cells: each (type, cell) pair is read on its own, so a
        # rare type never makes a scan wade through a busy cell's other events.
        by_type = (
            cells is not None
            and 0 < len(kinds) < len(EventType)
            and len(kinds) * len(cells) <= MAX_BBOX_PARTS
        )
        _event_filters(
            where,
            params,
            types=None if by_type else types,
            status=status,
            zone=zone,
            bbox=bbox,
        )
        if cells is not None and bbox is not None:
            listing = _BoxListing(
                bbox,
                cells,
                kinds=kinds if by_type else [],
                where=where,
                params=params,
                rows=limit + 1,
            )
            # Its two reads see one snapshot, so that the bound found by the first holds.
            found = self._run(listing.read, "list_events", transaction=listing.bounded)
        else:
            sql = f"SELECT {_E_COLUMNS} FROM {source}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += f" ORDER BY {time_col} DESC, {id_col} DESC LIMIT %s"
            # One row more than asked tells whether a next page exists.
            params.append(limit + 1)

            def work(cur: Cursor) -> list[Event]:
                cur.execute(sql, params)
                return [_event_from_row(row) for row in cur.fetchall()]

            found = self._run(work, "list_events", transaction=False)
        if len(found) <= limit:
            return found, None
        page = found[:limit]
        return page, encode_cursor(page[-1].started_ms, page[-1].id)

    def ping(self) -> None:
        """Check that the database answers; raise StoreUnavailable if not."""

        def work(cur: Cursor) -> None:
            cur.execute("SELECT 1")
            cur.fetchall()

        self._run(work, "ping", transaction=False)


class _BoxListing:
    """The listing of a small box: each grid cell's newest `rows`, then the newest of all.

    Every part reads one cell of idx_events_cell_started in time order and checks type,
    status and position inside the index, so it stops after `rows` matches without reading
    rows it rejects; only the final page's rows are read from the table. With `kinds`, there
    is one part per type and cell instead, read from idx_events_type_cell_started, and `where`
    must not filter on the type.

    A cell the box barely touches holds few matches, and its part would run through the
    whole cell looking for more. So over several cells, the cell most inside the box is read
    first: the page can hold nothing older than the last row of a full page of that cell
    alone, and that start time bounds every part.
    """

    def __init__(
        self,
        bbox: BBox,
        cells: Sequence[int],
        *,
        kinds: Sequence[str],
        where: Sequence[str],
        params: Sequence[Any],
        rows: int,
    ) -> None:
        self.cells = cells
        self.kinds = kinds
        self.where = list(where)
        self.params = list(params)
        self.rows = rows
        self.fullest = max(cells, key=lambda cell: _share_inside(cell, bbox))
        self.bounded = len(cells) > 1

    def read(self, cur: Cursor) -> list[Event]:
        """Read the page's rows, newest first."""
        if not self.bounded:
            cur.execute(*self._query(self.cells, None, ()))
            return [_event_from_row(row) for row in cur.fetchall()]
        union, params = self._union([self.fullest], None)
        cur.execute(
            f"SELECT u.id, u.started_at FROM ({union}) AS u "
            "ORDER BY u.started_at DESC, u.id DESC LIMIT %s",
            [*params, self.rows],
        )
        fullest_page = cur.fetchall()
        if len(fullest_page) == self.rows:
            cur.execute(*self._query(self.cells, fullest_page[-1][1], ()))
        else:
            # That cell was read to its end: its rows are known, and the other cells are
            # read without a bound.
            others = [cell for cell in self.cells if cell != self.fullest]
            cur.execute(*self._query(others, None, [ident for ident, _ in fullest_page]))
        return [_event_from_row(row) for row in cur.fetchall()]

    def _union(self, cells: Sequence[int], oldest: datetime | None) -> tuple[str, list[Any]]:
        where, params = self.where, self.params
        if oldest is not None:
            where = [*where, "e.started_at >= %s"]
            params = [*params, oldest]
        if self.kinds:
            index = "idx_events_type_cell_started"
            keys: list[tuple[Any, ...]] = [(kind, cell) for kind in self.kinds for cell in cells]
            conditions = " AND ".join(["e.type = %s", "e.grid_cell = %s", *where])
        else:
            index = "idx_events_cell_started"
            keys = [(cell,) for cell in cells]
            conditions = " AND ".join(["e.grid_cell = %s", *where])
        part = (
            f"(SELECT e.id, e.started_at FROM events e FORCE INDEX ({index}) "
            f"WHERE {conditions} ORDER BY e.started_at DESC, e.id DESC LIMIT %s)"
        )
        all_params: list[Any] = []
        for key in keys:
            all_params.extend((*key, *params, self.rows))
        return " UNION ALL ".join([part] * len(keys)), all_params

    def _query(
        self, cells: Sequence[int], oldest: datetime | None, known_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """The page from `cells` and the events `known_ids`, none started before `oldest`."""
        union, params = self._union(cells, oldest)
        if known_ids:
            union += (
                " UNION ALL (SELECT e.id, e.started_at FROM events e "
                f"WHERE e.id IN ({_placeholders(len(known_ids))}))"
            )
            params.extend(known_ids)
        sql = (
            f"SELECT {_E_COLUMNS} FROM ("
            f"SELECT u.id, u.started_at FROM ({union}) AS u "
            "ORDER BY u.started_at DESC, u.id DESC LIMIT %s"
            ") AS k STRAIGHT_JOIN events e ON e.id = k.id "
            "ORDER BY e.started_at DESC, e.id DESC"
        )
        return sql, [*params, self.rows]


def _share_inside(cell: int, bbox: BBox) -> float:
    """The part of a grid cell's area inside the box (0 to 1)."""
    cell_min_lon, cell_min_lat, cell_max_lon, cell_max_lat = grid_cell_bounds(cell)
    min_lon, min_lat, max_lon, max_lat = bbox
    lon_spans = (
        [(min_lon, max_lon)] if min_lon <= max_lon else [(min_lon, 180.0), (-180.0, max_lon)]
    )
    width = sum(
        max(0.0, min(cell_max_lon, high) - max(cell_min_lon, low)) for low, high in lon_spans
    )
    height = max(0.0, min(cell_max_lat, max_lat) - max(cell_min_lat, min_lat))
    return width * height * GRID_STEPS_PER_DEGREE**2


def _event_filters(
    where: list[str],
    params: list[Any],
    *,
    types: Collection[EventType] | None,
    status: EventStatus | None,
    zone: str | None,
    bbox: BBox | None,
) -> None:
    """Append the conditions on the events table (alias `e`) to `where` and `params`."""
    if types:
        kinds = sorted({EventType(kind).value for kind in types})
        where.append(f"e.type IN ({_placeholders(len(kinds))})")
        params.extend(kinds)
    if status is not None:
        where.append("e.status = %s")
        params.append(EventStatus(status).value)
    if zone is not None:
        where.append(same_id("e.zone_id"))
        params.extend((zone, zone))
    if bbox is not None:
        min_lon, min_lat, max_lon, max_lat = bbox
        where.append("e.lat BETWEEN %s AND %s")
        params.extend((min_lat, max_lat))
        if min_lon <= max_lon:
            where.append("e.lon BETWEEN %s AND %s")
        else:
            where.append("(e.lon >= %s OR e.lon <= %s)")
        params.extend((min_lon, max_lon))


def _check_state_key(key: str) -> None:
    if not key or len(key) > MAX_STATE_KEY_LEN or not key.isascii():
        raise ValueError(f"state key must be 1 to {MAX_STATE_KEY_LEN} ASCII characters")
