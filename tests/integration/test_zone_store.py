"""The zone store against a real MariaDB: CRUD, the revision counter, seeding, occupancy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from roadwatch.adapters.mysql.connection import StoreUnavailable
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.mysql.zones import Occupant, ZoneExists, ZoneStore
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.domain.zones import Zone, zone_from_feature
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import free_port
from roadwatch.settings import Settings
from tests.integration.db import clear_events, reset_zones

pytestmark = pytest.mark.integration

BASE_MS = 1_717_228_800_000  # 2024-06-01T08:00:00Z


def square_feature(
    zone_id: str,
    name: str | None = None,
    *,
    lon: float = 4.03,
    lat: float = 49.25,
    size: float = 0.01,
    **extra: Any,
) -> dict[str, Any]:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return {
        "type": "Feature",
        "properties": {"id": zone_id, "name": name or f"Zone {zone_id}", **extra},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def make_zone(zone_id: str, name: str | None = None, **kwargs: Any) -> Zone:
    return zone_from_feature(square_feature(zone_id, name, **kwargs))


def zone_event(kind: EventType, station: str, zone_id: str, t_s: int) -> Event:
    t = BASE_MS + t_s * 1000
    return Event(
        id=new_event_id(t, kind.value, station, zone_id),
        type=kind,
        status=EventStatus.INSTANT,
        version=1,
        started_ms=t,
        updated_ms=t,
        ended_ms=t,
        lat=49.255,
        lon=4.035,
        station_ids=(station,),
        zone_id=zone_id,
        zone_name=f"Zone {zone_id}",
        details={} if kind is EventType.ZONE_ENTER else {"reason": "left"},
    )


@pytest.fixture
def zones(mariadb: MariaDB, test_settings: Settings) -> Iterator[ZoneStore]:
    reset_zones(test_settings)
    with ZoneStore.connect(test_settings) as store:
        yield store


# --- CRUD ------------------------------------------------------------------------------------


def test_a_zone_round_trips_through_create_get_list_update_and_delete(zones: ZoneStore) -> None:
    centre = make_zone("centre", "Centre", hysteresis_m=25)
    gare = make_zone("gare", "Gare", lon=4.02)
    zones.create_zone(gare)
    zones.create_zone(centre)
    assert zones.get_zone("centre") == centre
    assert zones.get_zone("centre").to_feature() == centre.to_feature()  # type: ignore[union-attr]
    assert zones.list_zones() == [centre, gare]

    moved = make_zone("centre", "Centre, enlarged", size=0.02)
    assert zones.update_zone(moved) is False
    assert zones.get_zone("centre") == moved
    assert zones.update_zone(make_zone("new-one")) is True
    assert [zone.id for zone in zones.list_zones()] == ["centre", "gare", "new-one"]

    assert zones.delete_zone("centre") is True
    assert zones.get_zone("centre") is None
    assert zones.delete_zone("centre") is False
    assert [zone.id for zone in zones.list_zones()] == ["gare", "new-one"]


def test_a_multipolygon_zone_keeps_its_shape(zones: ZoneStore) -> None:
    feature = {
        "type": "Feature",
        "properties": {"id": "two-parts", "name": "Two parts"},
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                square_feature("a")["geometry"]["coordinates"],
                square_feature("b", lon=4.1)["geometry"]["coordinates"],
            ],
        },
    }
    zone = zone_from_feature(feature)
    zones.create_zone(zone)
    stored = zones.get_zone("two-parts")
    assert stored == zone
    assert stored is not None
    assert stored.to_feature()["geometry"]["type"] == "MultiPolygon"


def test_creating_a_taken_id_raises_zone_exists_and_keeps_the_first(zones: ZoneStore) -> None:
    first = make_zone("dup", "First")
    zones.create_zone(first)
    revision = zones.revision()
    with pytest.raises(ZoneExists, match="dup"):
        zones.create_zone(make_zone("dup", "Second"))
    assert zones.get_zone("dup") == first
    assert zones.revision() == revision


def test_unknown_empty_and_oversized_ids_are_simply_absent(zones: ZoneStore) -> None:
    assert zones.get_zone("nowhere") is None
    assert zones.get_zone("") is None
    assert zones.get_zone("z" * 300) is None
    assert zones.delete_zone("z" * 300) is False
    assert zones.occupancy("z" * 300) == []


def test_unicode_and_markup_in_names_round_trip_verbatim(zones: ZoneStore) -> None:
    name = "<img src=x onerror=alert(1)> Cathédrale 🚗 \"quoted\" 'single' \\ back"
    zones.create_zone(make_zone("odd-name", name))
    stored = zones.get_zone("odd-name")
    assert stored is not None
    assert stored.name == name


# --- revision --------------------------------------------------------------------------------


def test_revision_bumps_with_every_change_and_only_then(zones: ZoneStore) -> None:
    assert zones.revision() == 0
    zones.create_zone(make_zone("a"))
    assert zones.revision() == 1
    zones.update_zone(make_zone("a", "A renamed"))
    assert zones.revision() == 2
    zones.update_zone(make_zone("b"))
    assert zones.revision() == 3
    assert zones.delete_zone("a") is True
    assert zones.revision() == 4
    # Nothing changed: no bump.
    assert zones.delete_zone("a") is False
    assert zones.get_zone("b") is not None
    zones.list_zones()
    assert zones.revision() == 4
    assert zones.snapshot() == (4, [make_zone("b")])


def test_a_reader_on_another_session_sees_each_change(
    zones: ZoneStore, test_settings: Settings
) -> None:
    # The reader keeps one session open, as the gateway does; it must not see a stale snapshot.
    with ZoneStore.connect(test_settings) as reader:
        seen = [reader.revision()]
        zones.create_zone(make_zone("x"))
        seen.append(reader.revision())
        zones.delete_zone("x")
        seen.append(reader.revision())
        assert reader.list_zones() == []
    assert seen == [0, 1, 2]


def test_concurrent_writers_each_bump_the_revision(
    zones: ZoneStore, test_settings: Settings
) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with ZoneStore.connect(test_settings) as store:
                for k in range(10):
                    store.update_zone(make_zone(f"w{n}-{k}"))
                    if k % 2:
                        store.delete_zone(f"w{n}-{k - 1}")
        except BaseException as exc:
            errors.append(exc)

    # Eight writers creating new ids side by side is what once deadlocked on gap locks.
    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert zones.revision() == 8 * (10 + 5)
    assert len(zones.list_zones()) == 8 * 5


# --- seeding ---------------------------------------------------------------------------------


def test_seed_fills_an_untouched_table_once(zones: ZoneStore) -> None:
    seed = [make_zone("s1"), make_zone("s2", lon=4.1)]
    assert zones.seed_from(seed) is True
    assert zones.list_zones() == seed
    assert zones.revision() == 1
    assert zones.seed_from([make_zone("s3")]) is False
    assert [zone.id for zone in zones.list_zones()] == ["s1", "s2"]


def test_seed_does_not_resurrect_zones_deleted_by_a_user(zones: ZoneStore) -> None:
    seed = [make_zone("s1"), make_zone("s2", lon=4.1)]
    assert zones.seed_from(seed) is True
    assert zones.delete_zone("s1") is True
    assert zones.delete_zone("s2") is True
    # The next start seeds again from the same file: the table stays empty.
    assert zones.seed_from(seed) is False
    assert zones.list_zones() == []


def test_seed_leaves_zones_made_through_the_api_first_alone(zones: ZoneStore) -> None:
    mine = make_zone("s1", "Made by a user")
    zones.create_zone(mine)
    assert zones.seed_from([make_zone("s1", "From the file"), make_zone("s2")]) is False
    assert zones.list_zones() == [mine]


def test_an_empty_seed_changes_nothing(zones: ZoneStore) -> None:
    assert zones.seed_from([]) is False
    assert zones.revision() == 0


def test_concurrent_seeders_seed_once(zones: ZoneStore, test_settings: Settings) -> None:
    seed = [make_zone(f"s{n}", lon=4.0 + n * 0.02) for n in range(10)]
    results: list[bool] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        with ZoneStore.connect(test_settings) as store:
            barrier.wait(timeout=10)
            results.append(store.seed_from(seed))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False, False, True]
    assert zones.revision() == 1
    assert zones.list_zones() == seed


# --- occupancy -------------------------------------------------------------------------------


def test_occupancy_lists_stations_whose_latest_event_there_is_an_enter(
    zones: ZoneStore, test_settings: Settings
) -> None:
    clear_events(test_settings)
    enter, leave = EventType.ZONE_ENTER, EventType.ZONE_EXIT
    events = [
        zone_event(enter, "inside", "centre", 10),
        zone_event(enter, "came-and-went", "centre", 20),
        zone_event(leave, "came-and-went", "centre", 30),
        zone_event(enter, "back-again", "centre", 5),
        zone_event(leave, "back-again", "centre", 15),
        zone_event(enter, "back-again", "centre", 40),
        zone_event(enter, "elsewhere", "gare", 50),
        zone_event(enter, "timed-out", "centre", 1),
        zone_event(leave, "timed-out", "centre", 601),
        # A station inside two zones at once counts in both.
        zone_event(enter, "elsewhere", "centre", 45),
    ]
    # Stored in a shuffled order: the event times decide, not the order of arrival.
    with EventStore.connect(test_settings) as store:
        store.upsert(events[::2])
        store.upsert(events[1::2])
    # A non-zone event naming the zone does not count.
    accident = Event(
        id=new_event_id(BASE_MS, "accident"),
        type=EventType.ACCIDENT,
        status=EventStatus.ACTIVE,
        version=1,
        started_ms=BASE_MS + 99_000,
        updated_ms=BASE_MS + 99_000,
        ended_ms=None,
        lat=49.25,
        lon=4.03,
        cause_code=2,
        station_ids=("crasher",),
        zone_id="centre",
    )
    with EventStore.connect(test_settings) as store:
        store.upsert([accident])
    assert zones.occupancy("centre") == [
        Occupant("inside", BASE_MS + 10_000),
        Occupant("back-again", BASE_MS + 40_000),
        Occupant("elsewhere", BASE_MS + 45_000),
    ]
    assert zones.occupancy("gare") == [Occupant("elsewhere", BASE_MS + 50_000)]
    assert zones.occupancy("nowhere") == []
    clear_events(test_settings)


def test_occupancy_query_uses_the_zone_index(zones: ZoneStore, mariadb: MariaDB) -> None:
    with mariadb.admin_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.statistics "
            "WHERE table_schema = %s AND table_name = 'events' "
            "AND index_name = 'idx_events_zone_type_started'",
            (mariadb.settings.mysql_database,),
        )
        row = cur.fetchone()
    assert row is not None
    assert row[0] == 3


# --- failures --------------------------------------------------------------------------------


def test_store_reconnects_after_its_session_is_killed(
    zones: ZoneStore, mariadb: MariaDB, test_settings: Settings
) -> None:
    assert zones.revision() == 0
    with mariadb.admin_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM information_schema.processlist WHERE user = %s",
            (test_settings.mysql_user,),
        )
        for (session,) in cur.fetchall():
            cur.execute("KILL CONNECTION %s", (session,))
    zones.create_zone(make_zone("after-kill"))
    assert zones.revision() == 1


def test_unreachable_database_raises_store_unavailable(test_settings: Settings) -> None:
    closed = test_settings.model_copy(update={"mysql_port": free_port()})
    with ZoneStore.connect(closed) as store, pytest.raises(StoreUnavailable):
        store.revision()
