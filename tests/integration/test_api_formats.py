"""Event listings as GeoJSON and CSV, and per station, against a real MariaDB
(docs/contract/rest-api.md §5, §6)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.services.api.formats import CSV_COLUMNS
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.test_api import store_only

pytestmark = pytest.mark.integration

BASE_MS = 1_719_820_800_000  # 2024-07-01T08:00:00Z
JAM_EXTENT = {
    "type": "Polygon",
    "coordinates": [[[4.03, 49.25], [4.04, 49.25], [4.04, 49.26], [4.03, 49.25]]],
}
FORMULA_NAME = '=HYPERLINK("http://evil.example/","open me")'
AWKWARD_NAME = 'Place "Royale", north\nside; été'


def make_event(
    n: int,
    kind: EventType,
    stations: tuple[str, ...],
    *,
    zone_name: str | None = None,
    details: dict[str, Any] | None = None,
    lon: float = 4.03,
) -> Event:
    started = BASE_MS + n * 60_000
    zone = kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
    return Event(
        id=new_event_id(started, "formats-test", str(n)),
        type=kind,
        status=EventStatus.INSTANT if zone else EventStatus.ACTIVE,
        version=1,
        started_ms=started,
        updated_ms=started + 500,
        ended_ms=None,
        lat=49.25 + n / 1000,
        lon=lon,
        cause_code={EventType.ACCIDENT: 2, EventType.TRAFFIC_JAM: 1}.get(kind),
        station_ids=stations,
        zone_id=f"zone-{n}" if zone else None,
        zone_name=zone_name if zone else None,
        details=details or {},
    )


def seed_events() -> list[Event]:
    return [
        make_event(0, EventType.ACCIDENT, ("car-1", "bus-7"), details={"reporters": 2}),
        make_event(
            1,
            EventType.TRAFFIC_JAM,
            ("car-1", "car-2", "-lead"),
            details={"mean_speed_kmh": 12.5, "vehicle_count": 3, "extent": JAM_EXTENT},
        ),
        make_event(2, EventType.ZONE_ENTER, ("car-2",), zone_name=FORMULA_NAME),
        make_event(3, EventType.ZONE_EXIT, ("car-1",), zone_name=AWKWARD_NAME, lon=-1.5),
        # A phone's station (docs/contract/mqtt.md §5: `{user}.{device}`) beside a vehicle whose id
        # once equalled it.
        make_event(5, EventType.ZONE_ENTER, ("tr8310.car",), zone_name=FORMULA_NAME),
        make_event(6, EventType.ZONE_EXIT, ("tr8310-car",), zone_name=FORMULA_NAME),
        make_event(4, EventType.HAZARD, ("bus-7",), details={"note": "@admin +1 -1 =1"}),
    ]


@pytest.fixture(scope="module")
def events(mariadb: MariaDB, test_settings: Settings) -> list[Event]:
    return store_only(test_settings, seed_events())


@pytest.fixture(scope="module")
def client(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings) as client:
        yield client


def csv_rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    reader = csv.reader(io.StringIO(response.content.decode(), newline=""))
    header, *rows = list(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in rows]


def next_url(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match is not None, link
    return match.group(1)


# --- GeoJSON ---------------------------------------------------------------------------------


def test_geojson_gives_the_same_rows_as_points_with_the_event_as_properties(
    client: httpx.Client, events: list[Event]
) -> None:
    response = client.get("/api/events", params={"format": "geojson"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/geo+json"
    body = response.json()
    assert body["type"] == "FeatureCollection"
    assert body["next_cursor"] is None
    assert [feature["id"] for feature in body["features"]] == [event.id for event in events]
    for feature, event in zip(body["features"], events, strict=True):
        assert feature["type"] == "Feature"
        # RFC 7946: longitude first.
        assert feature["geometry"] == {"type": "Point", "coordinates": [event.lon, event.lat]}
        assert feature["properties"] == event.to_dict()
    jam = next(f for f in body["features"] if f["properties"]["type"] == "traffic_jam")
    assert jam["properties"]["details"]["extent"] == JAM_EXTENT


def test_geojson_pages_carry_the_cursor_in_the_collection_and_the_link_header(
    client: httpx.Client, events: list[Event]
) -> None:
    seen: list[str] = []
    url: str | None = "/api/events?format=geojson&limit=2"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        seen.extend(feature["id"] for feature in body["features"])
        url = next_url(response)
        if url is None:
            assert body["next_cursor"] is None
        else:
            assert f"cursor={body['next_cursor']}" in url
            assert "format=geojson" in url
            assert "limit=2" in url
    assert seen == [event.id for event in events]


# --- CSV -------------------------------------------------------------------------------------


def test_csv_is_an_attachment_with_a_header_and_one_row_per_event(
    client: httpx.Client, events: list[Event]
) -> None:
    response = client.get("/api/events", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        'attachment; filename="roadwatch-events.csv"'
    )
    rows = csv_rows(response)
    assert [row["id"] for row in rows] == [event.id for event in events]
    for row, event in zip(rows, events, strict=True):
        data = event.to_dict()
        assert row["type"] == data["type"]
        assert row["status"] == data["status"]
        assert int(row["version"]) == event.version
        assert row["started_at"] == data["started_at"]
        assert row["ended_at"] == ""
        assert (float(row["lat"]), float(row["lon"])) == (event.lat, event.lon)
        assert row["cause_code"] == ("" if event.cause_code is None else str(event.cause_code))
        assert orjson.loads(row["details"]) == event.details


def test_csv_quotes_awkward_text_and_defuses_spreadsheet_formulas(
    client: httpx.Client, events: list[Event]
) -> None:
    response = client.get("/api/events", params={"format": "csv"})
    rows = {row["id"]: row for row in csv_rows(response)}
    by_name = {event.zone_name: rows[event.id] for event in events if event.zone_name}
    # Commas, quotes and a line break inside a cell survive a CSV reader unchanged.
    assert by_name[AWKWARD_NAME]["zone_name"] == AWKWARD_NAME
    # A spreadsheet would run this; the leading apostrophe shows it as text instead.
    assert by_name[FORMULA_NAME]["zone_name"] == "'" + FORMULA_NAME
    jam = next(event for event in events if event.type is EventType.TRAFFIC_JAM)
    assert rows[jam.id]["station_ids"] == "car-1 car-2 -lead"
    # Numbers stay numbers: a western longitude keeps its minus sign and no apostrophe.
    assert by_name[AWKWARD_NAME]["lon"] == "-1.5"
    dangerous = ("=", "+", "-", "@")
    for row in rows.values():
        for column in ("id", "station_ids", "zone_id", "zone_name", "details"):
            assert not row[column].startswith(dangerous), (column, row[column])


def test_csv_pages_follow_the_link_header_through_every_event_once(
    client: httpx.Client, events: list[Event]
) -> None:
    seen: list[str] = []
    url: str | None = "/api/events?format=csv&limit=2"
    pages = 0
    while url is not None:
        response = client.get(url)
        seen.extend(row["id"] for row in csv_rows(response))
        url = next_url(response)
        pages += 1
    assert pages == (len(events) + 1) // 2
    assert seen == [event.id for event in events]


def test_an_unknown_format_is_a_400_naming_the_parameter(client: httpx.Client) -> None:
    response = client.get("/api/events", params={"format": "xml"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert [problem["parameter"] for problem in body["detail"]] == ["format"]


# --- per station -----------------------------------------------------------------------------


@pytest.mark.parametrize("station", ["car-1", "bus-7", "-lead", "tr8310.car", "tr8310-car"])
def test_station_events_are_the_events_that_station_is_involved_in(
    client: httpx.Client, events: list[Event], station: str
) -> None:
    response = client.get(f"/api/stations/{station}/events")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["id"] for item in body["items"]] == [
        event.id for event in events if station in event.station_ids
    ]
    assert body["next_cursor"] is None


def test_station_events_combine_filters_pages_and_formats(
    client: httpx.Client, events: list[Event]
) -> None:
    mine = [event for event in events if "car-1" in event.station_ids]
    seen: list[str] = []
    url: str | None = "/api/stations/car-1/events?limit=1&format=csv"
    while url is not None:
        response = client.get(url)
        assert response.headers["content-disposition"] == (
            'attachment; filename="roadwatch-events-car-1.csv"'
        )
        seen.extend(row["id"] for row in csv_rows(response))
        url = next_url(response)
        assert url is None or url.startswith("/api/stations/car-1/events?")
    assert seen == [event.id for event in mine]

    accidents = client.get("/api/stations/car-1/events", params={"type": "accident"}).json()
    assert [item["type"] for item in accidents["items"]] == ["accident"]

    geojson = client.get("/api/stations/bus-7/events", params={"format": "geojson"}).json()
    assert [f["id"] for f in geojson["features"]] == [
        event.id for event in events if "bus-7" in event.station_ids
    ]


def test_an_unknown_station_has_no_events(client: httpx.Client, events: list[Event]) -> None:
    response = client.get("/api/stations/nobody-here/events")
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "station",
    ["car%201", "a.b.c", ".lead", "car.", "%C3%A9t%C3%A9", "x" * 65, "%27%20OR%201%3D1", "%00"],
)
def test_a_malformed_station_id_is_a_400_naming_it(client: httpx.Client, station: str) -> None:
    response = client.get(f"/api/stations/{station}/events")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert [problem["parameter"] for problem in body["detail"]] == ["station_id"]


def test_the_openapi_document_describes_every_format_of_both_listings(
    client: httpx.Client,
) -> None:
    document = client.get("/api/openapi.json").json()
    for path in ("/api/events", "/api/stations/{station_id}/events"):
        operation = document["paths"][path]["get"]
        content = operation["responses"]["200"]["content"]
        assert set(content) == {"application/json", "application/geo+json", "text/csv"}
        assert "Link" in operation["responses"]["200"]["headers"]
        formats = next(p for p in operation["parameters"] if p["name"] == "format")
        assert formats["in"] == "query"
        # Client errors are documented as they are sent: 400, never FastAPI's 422.
        assert "400" in operation["responses"]
        assert "422" not in operation["responses"]
    assert "EventFeatureCollectionOut" in document["components"]["schemas"]
