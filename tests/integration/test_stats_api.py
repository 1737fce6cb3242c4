"""The statistics routes against a real MariaDB: exact counts, zero-filled buckets, hotspots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.domain.events import (
    Event,
    EventStatus,
    EventType,
    ms_to_rfc3339,
    new_event_id,
    rfc3339_to_ms,
)
from roadwatch.runner.mariadb import MariaDB
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events

pytestmark = pytest.mark.integration

HOUR = 3_600_000
DAY = 24 * HOUR
BASE_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z, a UTC day boundary
ALL_TYPES = [kind.value for kind in EventType]
# Three places about 2 km apart, with 5, 3 and 1 accidents.
PLACES = ((49.2581, 4.0312, 5), (49.2412, 4.0611, 3), (49.2742, 4.0013, 1))


def event(
    n: int,
    started_ms: int,
    kind: EventType = EventType.ACCIDENT,
    status: EventStatus = EventStatus.CLEARED,
    lat: float = 49.25,
    lon: float = 4.03,
    version: int = 1,
) -> Event:
    return Event(
        id=new_event_id(started_ms, "stats-test", str(n)),
        type=kind,
        status=status,
        version=version,
        started_ms=started_ms,
        updated_ms=started_ms + 1000,
        ended_ms=None if status is EventStatus.ACTIVE else started_ms + 1000,
        lat=lat,
        lon=lon,
        station_ids=(f"car-{n}",),
    )


def spread_events() -> list[Event]:
    """Events of every type over three days, at uneven minutes, some in the same hour."""
    kinds = list(EventType)
    events = []
    for n in range(120):
        kind = kinds[n % len(kinds)]
        status = (
            EventStatus.INSTANT
            if kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
            else (EventStatus.ACTIVE if n % 3 == 0 else EventStatus.CLEARED)
        )
        started = BASE_MS + (n * n * 7_919_000) % (3 * DAY) + n
        events.append(event(n, started, kind, status, lat=49.2 + n * 0.001, lon=4.0))
    return events


@pytest.fixture(scope="module")
def client(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings) as client:
        yield client


@pytest.fixture(scope="module")
def store(mariadb: MariaDB, test_settings: Settings) -> Iterator[EventStore]:
    with EventStore.connect(test_settings) as store:
        yield store


@pytest.fixture
def empty(test_settings: Settings, mariadb: MariaDB) -> None:
    clear_events(test_settings)


@pytest.fixture(scope="module")
def spread(store: EventStore, test_settings: Settings) -> list[Event]:
    clear_events(test_settings)
    events = spread_events()
    assert len(store.upsert(events)) == len(events)
    return events


def get(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/stats/{path}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def expected_summary(events: list[Event], since: int, until: int) -> Counter[tuple[str, str]]:
    return Counter((e.type.value, e.status.value) for e in events if since <= e.started_ms < until)


# --- empty database ------------------------------------------------------------------------


def test_an_empty_database_gives_zeros_everywhere(client: httpx.Client, empty: None) -> None:
    summary = get(client, "summary")
    assert summary["total"] == 0
    assert summary["by_type"] == dict.fromkeys(ALL_TYPES, 0)
    assert summary["by_status"] == {"active": 0, "cleared": 0, "instant": 0}
    series = get(
        client,
        "timeseries",
        bucket="hour",
        since=ms_to_rfc3339(BASE_MS),
        until=ms_to_rfc3339(BASE_MS + 3 * HOUR),
    )
    assert [b["start"] for b in series["buckets"]] == [
        ms_to_rfc3339(BASE_MS + h * HOUR) for h in range(3)
    ]
    assert all(b["total"] == 0 and set(b["counts"]) == set(ALL_TYPES) for b in series["buckets"])
    assert get(client, "hotspots")["cells"] == []


# --- summary ---------------------------------------------------------------------------------


def test_summary_counts_every_event_per_type_and_status(
    client: httpx.Client, spread: list[Event]
) -> None:
    body = get(client, "summary")
    expected = expected_summary(spread, 0, 2**62)
    assert body["total"] == len(spread)
    for kind in ALL_TYPES:
        for status in ("active", "cleared", "instant"):
            assert body["by_type_and_status"][kind][status] == expected[(kind, status)]
    assert body["by_type"] == {
        k: sum(expected[(k, s)] for s in body["by_status"]) for k in ALL_TYPES
    }


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    since=st.integers(BASE_MS - 2 * HOUR, BASE_MS + 3 * DAY),
    length=st.integers(0, 3 * DAY),
)
def test_summary_is_exact_for_any_range_even_across_partial_hours(
    client: httpx.Client, spread: list[Event], since: int, length: int
) -> None:
    until = since + length
    body = get(client, "summary", since=ms_to_rfc3339(since), until=ms_to_rfc3339(until))
    expected = expected_summary(spread, since, until)
    assert body["total"] == sum(expected.values())
    assert {
        (kind, status): count
        for kind, row in body["by_type_and_status"].items()
        for status, count in row.items()
        if count
    } == dict(expected)


# --- time series -----------------------------------------------------------------------------


@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    since=st.integers(BASE_MS - DAY, BASE_MS + 3 * DAY),
    length=st.integers(1, 4 * DAY),
    bucket=st.sampled_from(["hour", "day"]),
    types=st.lists(st.sampled_from(ALL_TYPES), max_size=2, unique=True),
)
def test_timeseries_buckets_are_contiguous_zero_filled_and_exact(
    client: httpx.Client,
    spread: list[Event],
    since: int,
    length: int,
    bucket: str,
    types: list[str],
) -> None:
    unit = HOUR if bucket == "hour" else DAY
    until = since + length
    body = get(
        client,
        "timeseries",
        bucket=bucket,
        since=ms_to_rfc3339(since),
        until=ms_to_rfc3339(until),
        type=types,
    )
    chosen = types or ALL_TYPES
    assert body["types"] == [kind for kind in ALL_TYPES if kind in chosen]
    first = since - since % unit
    starts = list(range(first, until, unit))
    assert [b["start"] for b in body["buckets"]] == [ms_to_rfc3339(s) for s in starts]
    expected = Counter(
        (e.started_ms - e.started_ms % unit, e.type.value)
        for e in spread
        if since <= e.started_ms < until and e.type.value in chosen
    )
    for start, row in zip(starts, body["buckets"], strict=True):
        assert row["counts"] == {kind: expected[(start, kind)] for kind in body["types"]}
        assert row["total"] == sum(row["counts"].values())


def test_timeseries_buckets_before_1970_hold_their_own_events(
    client: httpx.Client, store: EventStore, test_settings: Settings
) -> None:
    # Summary hours before the epoch are negative hour numbers: they must fall in their own
    # day and hour, not be rounded towards 1970.
    clear_events(test_settings)
    starts = (-DAY - 1, -HOUR - 1, -HOUR, -1, 0, HOUR + 1)
    events = [
        replace(event(n, 0), id=f"pre-epoch-{n}", started_ms=ms, updated_ms=ms, ended_ms=ms)
        for n, ms in enumerate(starts)
    ]
    assert len(store.upsert(events)) == len(events)
    for bucket, unit in (("hour", HOUR), ("day", DAY)):
        body = get(
            client,
            "timeseries",
            bucket=bucket,
            type="accident",
            since=ms_to_rfc3339(-2 * DAY),
            until=ms_to_rfc3339(DAY),
        )
        expected = Counter(ms - ms % unit for ms in starts)
        got = {b["start"]: b["counts"]["accident"] for b in body["buckets"] if b["total"]}
        assert got == {ms_to_rfc3339(start): count for start, count in expected.items()}


def test_timeseries_defaults_to_the_last_day_of_hours(
    client: httpx.Client, spread: list[Event]
) -> None:
    body = get(client, "timeseries")
    assert body["bucket"] == "hour"
    assert len(body["buckets"]) in (24, 25)  # 25 unless now is exactly on the hour


# --- hotspots --------------------------------------------------------------------------------


def test_hotspots_rank_places_most_first_with_their_squares(
    client: httpx.Client, store: EventStore, test_settings: Settings
) -> None:
    clear_events(test_settings)
    events: list[Event] = []
    for lat, lon, count in PLACES:
        for k in range(count):
            n = len(events)
            events.append(event(n, BASE_MS + n * HOUR, lat=lat + k * 1e-5, lon=lon))
    # Jams at the quietest place count only when every type is asked for.
    events.append(event(99, BASE_MS, EventType.TRAFFIC_JAM, lat=PLACES[2][0], lon=PLACES[2][1]))
    events.append(event(98, BASE_MS + HOUR, EventType.TRAFFIC_JAM, lat=PLACES[2][0], lon=4.0014))
    store.upsert(events)

    body = get(client, "hotspots", type="accident")
    assert [cell["count"] for cell in body["cells"]] == [5, 3, 1]
    for (lat, lon, _), cell in zip(PLACES, body["cells"], strict=True):
        min_lon, min_lat, max_lon, max_lat = cell["bbox"]
        assert min_lon <= lon < max_lon
        assert min_lat <= lat < max_lat
        assert abs(cell["lat"] - lat) <= body["cell_size_deg"] / 2
        assert abs(cell["lon"] - lon) <= body["cell_size_deg"] / 2
        ring = cell["polygon"]["coordinates"][0]
        assert ring[0] == ring[-1]
        assert len(ring) == 5
    assert [c["count"] for c in get(client, "hotspots", type="accident", limit=2)["cells"]] == [
        5,
        3,
    ]
    everything = get(client, "hotspots")["cells"]
    assert [c["count"] for c in everything] == [5, 3, 3]
    # The last accident started at BASE_MS + 8 h: a range that ends before it leaves 5, 3.
    window = get(
        client,
        "hotspots",
        type="accident",
        since=ms_to_rfc3339(BASE_MS),
        until=ms_to_rfc3339(BASE_MS + 8 * HOUR),
    )
    assert [c["count"] for c in window["cells"]] == [5, 3]


def test_a_status_change_moves_the_event_between_counts(
    client: httpx.Client, store: EventStore, test_settings: Settings
) -> None:
    clear_events(test_settings)
    active = event(1, BASE_MS + 10, status=EventStatus.ACTIVE)
    store.upsert([active])
    assert get(client, "summary")["by_status"]["active"] == 1
    store.upsert([active.next_version(status=EventStatus.CLEARED, ended_ms=BASE_MS + 20)])
    summary = get(client, "summary")
    assert summary["by_status"] == {"active": 0, "cleared": 1, "instant": 0}
    # An older version arriving late changes nothing.
    store.upsert([active])
    assert get(client, "summary")["by_status"]["cleared"] == 1


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("summary", {"since": "yesterday"}, "since"),
        ("summary", {"until": "2024-06-01T00:00:00"}, "until"),
        ("summary", {"since": "2024-06-02T00:00:00Z", "until": "2024-06-01T00:00:00Z"}, "since"),
        ("summary", {"since": "0999-12-31T00:00:00Z"}, "since"),
        ("timeseries", {"bucket": "week"}, "bucket"),
        ("timeseries", {"type": "meteor"}, "type"),
        (
            "timeseries",
            {"bucket": "hour", "since": "2024-01-01T00:00:00Z", "until": "2024-06-01T00:00:00Z"},
            "since",
        ),
        ("timeseries", {"since": "2999-01-01T00:00:00Z"}, "since"),
        ("hotspots", {"limit": "0"}, "limit"),
        ("hotspots", {"limit": "501"}, "limit"),
        ("hotspots", {"limit": "many"}, "limit"),
        ("hotspots", {"type": "accident,hazard"}, "type"),
    ],
)
def test_bad_parameters_get_a_400_naming_the_parameter(
    client: httpx.Client, path: str, params: dict[str, str], parameter: str
) -> None:
    response = client.get(f"/api/stats/{path}", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert [problem["parameter"] for problem in body["detail"]] == [parameter]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("summary", {"since": "9999-12-31T23:00:01Z"}),
        ("summary", {"since": "9999-12-31T23:59:59.999Z"}),
        ("summary", {"until": "1000-01-01T00:00:00.001Z"}),
        ("hotspots", {"since": "9999-12-31T00:00:01Z"}),
        ("hotspots", {"until": "1000-01-01T00:00:01Z"}),
        ("timeseries", {"since": "9999-12-31T22:00:00Z", "until": "9999-12-31T23:59:59Z"}),
    ],
)
def test_ranges_at_the_edges_of_what_dates_hold_are_answered_not_a_500(
    client: httpx.Client, spread: list[Event], path: str, params: dict[str, str]
) -> None:
    body = get(client, path, **params)  # a 200, whatever it counts
    for bound in ("since", "until"):
        if bound in params:
            assert body[bound] == ms_to_rfc3339(rfc3339_to_ms(params[bound]))  # as asked


def test_too_many_buckets_says_how_many_and_the_limit(client: httpx.Client) -> None:
    response = client.get(
        "/api/stats/timeseries",
        params={"bucket": "day", "since": "2000-01-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"},
    )
    assert response.status_code == 400
    message = response.json()["detail"][0]["message"]
    assert "8766 day buckets" in message
    assert "at most 1000" in message


def test_the_stats_routes_are_documented(client: httpx.Client) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for route in ("summary", "timeseries", "hotspots"):
        operation = paths[f"/api/stats/{route}"]["get"]
        assert "200" in operation["responses"]
        assert "400" in operation["responses"]
