"""The MySQL adapter against a real MariaDB: migrations, idempotent upserts, listings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from roadwatch.adapters.mysql.connection import StoreUnavailable, connect
from roadwatch.adapters.mysql.migrate import (
    MigrationError,
    apply_migrations,
    load_migrations,
    split_statements,
)
from roadwatch.adapters.mysql.store import EventStore, InvalidCursor, encode_cursor
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import free_port
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

BASE_MS = 1_714_550_400_000  # 2024-05-01T08:00:00Z


def make_event(
    n: int,
    *,
    version: int = 1,
    kind: EventType = EventType.ACCIDENT,
    status: EventStatus = EventStatus.ACTIVE,
    stations: tuple[str, ...] = ("car-1",),
    started_ms: int | None = None,
    zone_id: str | None = None,
    lat: float = 48.85,
    lon: float = 2.35,
) -> Event:
    started = BASE_MS + n * 1000 if started_ms is None else started_ms
    return Event(
        id=new_event_id(started, "test", str(n)),
        type=kind,
        status=status,
        version=version,
        started_ms=started,
        updated_ms=started + version * 10,
        ended_ms=None if status is EventStatus.ACTIVE else started + 5000,
        lat=lat,
        lon=lon,
        cause_code=2 if kind is EventType.ACCIDENT else None,
        station_ids=stations,
        zone_id=zone_id,
        zone_name=None if zone_id is None else f"Zone {zone_id}",
        details={"vehicle_count": len(stations), "note": "é ✓", "version": version},
    )


def clear_tables(settings: Settings) -> None:
    conn = connect(settings, autocommit=True)
    try:
        with conn.cursor() as cur:
            for table in ("event_stations", "events", "collector_state"):
                cur.execute(f"DELETE FROM {table}")
    finally:
        conn.close()


def global_status(server: MariaDB, name: str) -> int:
    with server.admin_connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        row = cur.fetchone()
        assert row is not None
        return int(row[1])


@pytest.fixture
def store(mariadb: MariaDB, test_settings: Settings) -> Iterator[EventStore]:
    clear_tables(test_settings)
    with EventStore.connect(test_settings) as store:
        yield store


@pytest.fixture
def scratch_db(mariadb: MariaDB) -> Iterator[str]:
    name = "rw_scratch_migrations"
    with mariadb.admin_connection() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    yield name
    with mariadb.admin_connection() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")


# --- migrations ------------------------------------------------------------------------------


def test_started_server_is_migrated_and_reapplying_changes_nothing(
    mariadb: MariaDB, test_settings: Settings
) -> None:
    expected = [migration.name for migration in load_migrations()]
    assert expected[0] == "0001_events"
    conn = connect(test_settings)
    try:
        assert apply_migrations(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM schema_migrations ORDER BY name")
            assert [row[0] for row in cur.fetchall()] == expected
    finally:
        conn.close()
    assert mariadb.migrate() == []


def test_migrations_apply_in_order_to_an_empty_database_once(
    mariadb: MariaDB, scratch_db: str
) -> None:
    expected = [migration.name for migration in load_migrations()]
    with mariadb.admin_connection(scratch_db) as conn:
        conn.autocommit(False)
        assert apply_migrations(conn) == expected
        assert apply_migrations(conn) == []
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = {row[0] for row in cur.fetchall()}
    assert {"events", "event_stations", "collector_state", "zones"} <= tables


def test_concurrent_migration_runs_apply_each_file_once(mariadb: MariaDB, scratch_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            with mariadb.admin_connection(scratch_db) as conn:
                barrier.wait(timeout=10)
                results.append(apply_migrations(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    applied = [name for result in results for name in result]
    assert sorted(applied) == [migration.name for migration in load_migrations()]


def test_statement_splitter_ignores_semicolons_in_quotes_and_comments() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (a VARCHAR(3) DEFAULT ';', b TEXT COMMENT 'it''s; fine');
    /* block; comment */ INSERT INTO t VALUES ("x;y", 'a\\'b;');
    # hash comment;
    SELECT `odd;name` FROM t
    """
    assert split_statements(sql) == [
        "CREATE TABLE t (a VARCHAR(3) DEFAULT ';', b TEXT COMMENT 'it''s; fine')",
        """INSERT INTO t VALUES ("x;y", 'a\\'b;')""",
        "SELECT `odd;name` FROM t",
    ]
    with pytest.raises(MigrationError):
        split_statements("SELECT 'unterminated")


# --- upsert ----------------------------------------------------------------------------------


def test_upsert_stores_an_event_and_a_replay_changes_nothing(store: EventStore) -> None:
    event = make_event(1, stations=("car-1", "car-2"))
    assert len(store.upsert([event])) == 1
    assert store.get_event(event.id) == event
    assert len(store.upsert([event])) == 0
    assert len(store.upsert([event, event])) == 0
    assert store.get_event(event.id) == event


def test_lower_version_never_overwrites_a_higher_one(store: EventStore) -> None:
    v1 = make_event(2, stations=("old-car",))
    v3 = make_event(2, version=3, status=EventStatus.CLEARED, stations=("car-a", "car-b"))
    v2 = make_event(2, version=2, stations=("middle-car",))
    assert len(store.upsert([v1])) == 1
    assert len(store.upsert([v3])) == 1
    assert len(store.upsert([v2])) == 0
    assert len(store.upsert([v1])) == 0
    assert store.get_event(v1.id) == v3
    # The station rows follow the winning version.
    assert store.list_events(station="car-a")[0] == [v3]
    assert store.list_events(station="old-car")[0] == []
    assert store.list_events(station="middle-car")[0] == []


def test_one_batch_keeps_the_highest_version_of_each_id(store: EventStore) -> None:
    a1, a2, a3 = (make_event(3, version=v, stations=(f"s{v}",)) for v in (1, 2, 3))
    b1 = make_event(4)
    assert len(store.upsert([a2, b1, a3, a1])) == 2
    assert store.get_event(a1.id) == a3
    assert store.get_event(b1.id) == b1
    assert len(store.upsert([a1, a2, make_event(4, version=2)])) == 1


def test_duplicate_station_ids_are_stored_once(store: EventStore) -> None:
    event = make_event(5, stations=("car-1", "car-1", "car-2"))
    assert len(store.upsert([event])) == 1
    assert store.list_events(station="car-1")[0][0].id == event.id


def test_a_batch_of_1000_events_lands_in_one_call(store: EventStore, mariadb: MariaDB) -> None:
    events = [
        make_event(10_000 + n, stations=(f"car-{n}", f"car-{n + 1}"), kind=EventType.TRAFFIC_JAM)
        for n in range(1000)
    ]
    store.ping()
    # Statements sent by clients; Com_insert would also count those of the summary triggers.
    statements_before = global_status(mariadb, "Questions")
    started = time.perf_counter()
    assert len(store.upsert(events)) == 1000
    elapsed = time.perf_counter() - started
    statements = global_status(mariadb, "Questions") - statements_before
    # Multi-row statements, not one per row: the version check, events and stations (maybe
    # split by size), the commit, and the status query itself.
    assert statements <= 10, statements
    assert elapsed < 5.0
    page, _ = store.list_events(limit=1000)
    assert {event.id for event in page} == {event.id for event in events}
    # Updating all of them is also one batch, and replaying it again changes nothing.
    updated = [event.next_version(status=EventStatus.CLEARED) for event in events]
    assert len(store.upsert(updated)) == 1000
    assert len(store.upsert(updated)) == 0


def test_state_round_trips_and_commits_with_a_batch(store: EventStore) -> None:
    assert store.get_state("xmpp.archive") is None
    store.set_state("xmpp.archive", "first")
    store.set_state("xmpp.archive", "second")
    assert store.get_state("xmpp.archive") == "second"
    event = make_event(6)
    assert len(store.upsert([event], state={"xmpp.archive": "third"})) == 1
    assert store.get_state("xmpp.archive") == "third"
    assert len(store.upsert([], state={"xmpp.archive": "fourth"})) == 0
    assert store.get_state("xmpp.archive") == "fourth"
    with pytest.raises(ValueError, match="state key"):
        store.set_state("", "x")


def test_store_reconnects_once_after_its_session_is_killed(
    store: EventStore, mariadb: MariaDB, test_settings: Settings
) -> None:
    store.ping()
    with mariadb.admin_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM information_schema.processlist WHERE user = %s",
            (test_settings.mysql_user,),
        )
        for (session,) in cur.fetchall():
            cur.execute("KILL CONNECTION %s", (session,))
    event = make_event(7)
    assert len(store.upsert([event])) == 1
    assert store.get_event(event.id) == event


def test_unreachable_database_raises_store_unavailable(test_settings: Settings) -> None:
    closed = test_settings.model_copy(update={"mysql_port": free_port()})
    with EventStore.connect(closed) as store, pytest.raises(StoreUnavailable):
        store.ping()


# --- listing ---------------------------------------------------------------------------------


def test_list_filters_by_type_status_time_station_zone_and_box(store: EventStore) -> None:
    accident = make_event(20, stations=("car-a", "car-b"), lat=48.0, lon=2.0)
    jam = make_event(21, kind=EventType.TRAFFIC_JAM, stations=("car-b",), lat=49.0, lon=3.0)
    cleared = make_event(22, status=EventStatus.CLEARED, stations=("car-c",), lat=10.0, lon=179.5)
    enter = make_event(
        23, kind=EventType.ZONE_ENTER, status=EventStatus.INSTANT, zone_id="z1", lon=-179.5
    )
    assert len(store.upsert([accident, jam, cleared, enter])) == 4

    def ids(**filters: object) -> list[str]:
        page, cursor = store.list_events(**filters)  # type: ignore[arg-type]
        assert cursor is None
        return [event.id for event in page]

    assert ids() == [enter.id, cleared.id, jam.id, accident.id]
    assert ids(types=[EventType.ACCIDENT]) == [cleared.id, accident.id]
    assert ids(types=[EventType.TRAFFIC_JAM, EventType.ZONE_ENTER]) == [enter.id, jam.id]
    assert ids(status=EventStatus.CLEARED) == [cleared.id]
    assert ids(station="car-b") == [jam.id, accident.id]
    assert ids(station="car-b", types=[EventType.ACCIDENT]) == [accident.id]
    assert ids(station="nobody") == []
    assert ids(since_ms=jam.started_ms) == [enter.id, cleared.id, jam.id]
    assert ids(until_ms=jam.started_ms) == [accident.id]
    assert ids(since_ms=jam.started_ms, until_ms=enter.started_ms) == [cleared.id, jam.id]
    assert ids(station="car-b", since_ms=jam.started_ms) == [jam.id]
    assert ids(zone="z1") == [enter.id]
    assert ids(bbox=(1.5, 47.5, 3.5, 49.5)) == [jam.id, accident.id]
    # A box across the antimeridian.
    assert ids(bbox=(179.0, -90.0, -179.0, 90.0)) == [enter.id, cleared.id]
    # Bounds outside what DATETIME can hold are clamped, not errors.
    assert len(ids(since_ms=-50_000_000_000_000, until_ms=300_000_000_000_000)) == 4


@pytest.mark.parametrize("station", [None, "shared"])
def test_pagination_walks_every_row_exactly_once_newest_first(
    store: EventStore, station: str | None
) -> None:
    # Groups of events share a start time, so the id must break ties in the cursor.
    events = [
        make_event(100 + n, started_ms=BASE_MS + (n // 4) * 1000, stations=("shared", f"c{n}"))
        for n in range(53)
    ]
    store.upsert(events)
    expected = [e.id for e in sorted(events, key=lambda e: (e.started_ms, e.id), reverse=True)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list_events(station=station, limit=7, cursor=cursor)
        pages += 1
        seen.extend(event.id for event in page)
        if cursor is None:
            break
    assert seen == expected
    assert pages == 8


def test_an_exact_last_page_has_no_next_cursor(store: EventStore) -> None:
    store.upsert([make_event(200 + n) for n in range(10)])
    page, cursor = store.list_events(limit=10)
    assert len(page) == 10
    assert cursor is None


@pytest.mark.parametrize(
    "cursor", ["", "nonsense", "!!!", encode_cursor(1, "x")[:-2] + "@@", "WzEsMl0", "eyJhIjoxfQ"]
)
def test_a_foreign_cursor_is_refused(store: EventStore, cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        store.list_events(cursor=cursor)


def test_unknown_and_oversized_ids_are_simply_absent(store: EventStore) -> None:
    assert store.get_event("01HZZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert store.get_event("x" * 300) is None
    assert store.get_event("") is None


# --- runner ----------------------------------------------------------------------------------


def test_runner_start_is_idempotent_and_applies_a_changed_password(
    mariadb: MariaDB, test_settings: Settings
) -> None:
    mariadb.start()
    assert mariadb.healthy()
    changed = test_settings.model_copy(update={"mysql_password": SecretStr("another-secret-1")})
    try:
        MariaDB(changed, mariadb.layout).provision()
        with EventStore.connect(changed) as store:
            store.ping()
        with EventStore.connect(test_settings) as store, pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        mariadb.provision()
    with EventStore.connect(test_settings) as store:
        store.ping()


def test_a_small_box_lists_exactly_its_events_in_order_across_pages(store: EventStore) -> None:
    # Positions on a 3 x 3 km patch, so a 1 km box spans several grid cells and is read cell by
    # cell; some events share a start time, so the id must break ties across cells too.
    events = [
        make_event(
            300 + n,
            kind=(EventType.ACCIDENT, EventType.HAZARD, EventType.TRAFFIC_JAM)[n % 3],
            started_ms=BASE_MS + (n // 3) * 1000,
            lat=49.24 + ((n * 37) % 100) * 0.0003,
            lon=4.01 + ((n * 53) % 100) * 0.0004,
        )
        for n in range(300)
    ]
    store.upsert(events)
    box = (4.02, 49.245, 4.034, 49.254)

    def inside(event: Event) -> bool:
        return box[0] <= event.lon <= box[2] and box[1] <= event.lat <= box[3]

    newest_first = sorted(events, key=lambda e: (e.started_ms, e.id), reverse=True)
    for types in (None, [EventType.ACCIDENT, EventType.HAZARD]):
        expected = [e.id for e in newest_first if inside(e) and (not types or e.type in types)]
        assert expected
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = store.list_events(bbox=box, types=types, limit=6, cursor=cursor)
            seen.extend(event.id for event in page)
            if cursor is None:
                break
        assert seen == expected


def test_a_box_on_grid_lines_lists_its_edges_per_type_across_pages(store: EventStore) -> None:
    # The box is exactly one 0.005° grid square, so its upper edges lie on the lines where the
    # neighbouring squares begin: events exactly on them are inside the box (bounds are
    # inclusive) yet stored in those neighbours. Events also sit just outside every edge.
    lons = (4.0299, 4.03, 4.0312, 4.0325, 4.035, 4.0351)
    lats = (49.2449, 49.245, 49.2463, 49.2475, 49.25, 49.2501)
    kinds = (EventType.ACCIDENT, EventType.HAZARD, EventType.TRAFFIC_JAM, EventType.ZONE_EXIT)
    events = [
        make_event(
            500 + n,
            kind=kinds[n % len(kinds)],
            status=EventStatus.CLEARED if n % 3 else EventStatus.ACTIVE,
            started_ms=BASE_MS + (n // 5) * 1000,
            lat=lats[n % len(lats)],
            lon=lons[(n // len(lats)) % len(lons)],
        )
        for n in range(2 * len(lats) * len(lons) * len(kinds))
    ]
    store.upsert(events)
    box = (4.03, 49.245, 4.035, 49.25)
    newest_first = sorted(events, key=lambda e: (e.started_ms, e.id), reverse=True)
    filters: list[tuple[list[EventType] | None, EventStatus | None, int | None]] = [
        ([EventType.ACCIDENT], None, None),
        ([EventType.HAZARD, EventType.ZONE_EXIT], EventStatus.CLEARED, None),
        ([EventType.TRAFFIC_JAM], None, BASE_MS + 20_000),
        (list(EventType), None, None),
        (None, EventStatus.CLEARED, BASE_MS + 10_000),
    ]
    for types, status, since_ms in filters:
        expected = [
            e.id
            for e in newest_first
            if box[0] <= e.lon <= box[2]
            and box[1] <= e.lat <= box[3]
            and (types is None or e.type in types)
            and (status is None or e.status is status)
            and (since_ms is None or e.started_ms >= since_ms)
        ]
        assert any(e.lat == box[3] or e.lon == box[2] for e in events if e.id in expected)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = store.list_events(
                bbox=box, types=types, status=status, since_ms=since_ms, limit=4, cursor=cursor
            )
            seen.extend(event.id for event in page)
            if cursor is None:
                break
        assert seen == expected, (types, status, since_ms)
