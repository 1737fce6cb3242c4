"""The REST API against a real MariaDB: health, event listing, errors as 4xx JSON."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import free_port
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events

pytestmark = pytest.mark.integration

BASE_MS = 1_717_228_800_000  # 2024-06-01T08:00:00Z
KINDS = (EventType.ACCIDENT, EventType.TRAFFIC_JAM, EventType.ZONE_ENTER)


def seed_events() -> list[Event]:
    events = []
    for n in range(30):
        kind = KINDS[n % 3]
        started = BASE_MS + n * 60_000
        events.append(
            Event(
                id=new_event_id(started, "api-test", str(n)),
                type=kind,
                status=EventStatus.INSTANT
                if kind is EventType.ZONE_ENTER
                else (EventStatus.ACTIVE if n % 2 else EventStatus.CLEARED),
                version=1 + n % 4,
                started_ms=started,
                updated_ms=started + 1000,
                ended_ms=None if n % 2 else started + 2000,
                lat=45.0 + n * 0.1,
                lon=4.0 + n * 0.1,
                cause_code=2 if kind is EventType.ACCIDENT else None,
                station_ids=(f"car-{n}", "bus-7") if n < 10 else (f"car-{n}",),
                zone_id="lyon" if kind is EventType.ZONE_ENTER else None,
                zone_name="Lyon" if kind is EventType.ZONE_ENTER else None,
                details={"vehicle_count": n, "reason": None},
            )
        )
    return events


def store_only(settings: Settings, events: list[Event]) -> list[Event]:
    """Empty the events table and store `events`; return them as listed, newest start first."""
    clear_events(settings)
    with EventStore.connect(settings) as store:
        assert len(store.upsert(events)) == len(events)
    return sorted(events, key=lambda e: (e.started_ms, e.id), reverse=True)


@pytest.fixture(scope="module")
def events(mariadb: MariaDB, test_settings: Settings) -> list[Event]:
    return store_only(test_settings, seed_events())


@pytest.fixture(scope="module")
def client(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings) as client:
        yield client


@pytest.fixture
def down_client(test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings.model_copy(update={"mysql_port": free_port()})) as client:
        yield client


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["items"]]


def assert_client_error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


# --- health ----------------------------------------------------------------------------------


def test_health_is_ok_when_the_database_answers(client: httpx.Client) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert isinstance(body["version"], str)


def test_health_is_503_degraded_when_the_database_is_down(down_client: httpx.Client) -> None:
    response = down_client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"] == "unavailable"


def test_event_routes_answer_503_json_when_the_database_is_down(down_client: httpx.Client) -> None:
    for path in ("/api/events", "/api/events/01HZZZZZZZZZZZZZZZZZZZZZZZ"):
        response = down_client.get(path)
        body = assert_client_error(response, 503)
        assert body["error"] == "database_unavailable"
        assert "retry-after" in response.headers


# --- events ----------------------------------------------------------------------------------


def test_events_are_listed_newest_first_in_the_event_shape(
    client: httpx.Client, events: list[Event]
) -> None:
    response = client.get("/api/events")
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] is None
    assert body["items"] == [event.to_dict() for event in events]


def test_events_filter_by_repeated_type_status_station_zone_time_and_box(
    client: httpx.Client, events: list[Event]
) -> None:
    def listed(**params: Any) -> list[str]:
        response = client.get("/api/events", params=params)
        assert response.status_code == 200, response.text
        return ids(response.json())

    def expected(keep: Any) -> list[str]:
        return [event.id for event in events if keep(event)]

    assert listed(type=["accident", "zone_enter"]) == expected(
        lambda e: e.type in (EventType.ACCIDENT, EventType.ZONE_ENTER)
    )
    assert listed(type="traffic_jam", status="active") == expected(
        lambda e: e.type is EventType.TRAFFIC_JAM and e.status is EventStatus.ACTIVE
    )
    assert listed(station="bus-7") == expected(lambda e: "bus-7" in e.station_ids)
    assert listed(station="car-12") == expected(lambda e: "car-12" in e.station_ids)
    assert listed(zone="lyon") == expected(lambda e: e.zone_id == "lyon")
    since, until = events[20], events[5]
    assert listed(since=since.to_dict()["started_at"], until=until.to_dict()["started_at"]) == [
        event.id for event in events[6:21]
    ]
    # Offsets and lower-case designators are valid RFC 3339.
    assert listed(since="2024-06-01t10:15:00+02:00") == expected(
        lambda e: e.started_ms >= BASE_MS + 15 * 60_000
    )
    assert listed(bbox="4.0,45.0,4.55,45.55") == expected(lambda e: e.lat <= 45.55)


def test_pages_follow_next_cursor_through_every_event_once(
    client: httpx.Client, events: list[Event]
) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    for _ in range(20):
        body = client.get("/api/events", params=params).json()
        assert len(body["items"]) <= 4
        seen.extend(ids(body))
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == [event.id for event in events]


def test_one_event_by_id_and_404_json_for_an_unknown_one(
    client: httpx.Client, events: list[Event]
) -> None:
    wanted = events[3]
    response = client.get(f"/api/events/{wanted.id}")
    assert response.status_code == 200
    assert response.json() == wanted.to_dict()
    missing = assert_client_error(client.get("/api/events/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404)
    assert missing["error"] == "not_found"
    long_id = assert_client_error(client.get("/api/events/" + "x" * 5000), 404)
    # The unknown id is quoted back, cut short.
    assert "xxxx" in long_id["detail"]
    assert len(long_id["detail"]) < 200


# --- client errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("type=bogus", "type"),
        ("type=accident&type=volcano", "type"),
        ("status=finished", "status"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=abc", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=WzEsMl0", "cursor"),
        ("cursor=" + "A" * 300, "cursor"),
        ("since=yesterday", "since"),
        ("since=2024-06-01T08:00:00", "since"),
        ("until=2024-13-01T00:00:00Z", "until"),
        ("since=2024-06-02T00:00:00Z&until=2024-06-01T00:00:00Z", "since"),
        ("bbox=1,2,3", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("bbox=0,50,10,40", "bbox"),
        ("bbox=0,0,200,10", "bbox"),
        ("bbox=nan,0,1,1", "bbox"),
        ("station=", "station"),
        ("station=" + "s" * 65, "station"),
    ],
)
def test_bad_parameters_get_a_400_json_error_naming_the_parameter(
    client: httpx.Client, events: list[Event], query: str, parameter: str
) -> None:
    body = assert_client_error(client.get(f"/api/events?{query}"))
    assert body["error"] == "invalid_parameter"
    assert [problem["parameter"] for problem in body["detail"]] == [parameter]
    assert all(problem["message"] for problem in body["detail"])


@pytest.mark.parametrize(
    "query",
    [
        "station=%F0%9F%9A%97",
        "station=%00",
        "station=%FF%FE",
        "zone=%27%20OR%201%3D1%20--",
        "cursor=%E2%9C%93",
        "since=%00",
        "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "type=&status=",
        "limit=-1",
        "bbox=,,,",
        "unknown=1&limit=1",
    ],
)
def test_odd_query_strings_never_cause_a_server_error(
    client: httpx.Client, events: list[Event], query: str
) -> None:
    response = client.get(f"/api/events?{query}")
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")


def test_unknown_paths_and_methods_are_json_errors(client: httpx.Client) -> None:
    assert assert_client_error(client.get("/api/nothing-here"), 404)["error"] == "not_found"
    body = assert_client_error(client.post("/api/events", json={}), 405)
    assert body["error"] == "method_not_allowed"


def test_openapi_document_and_docs_page_are_served_without_any_cdn(
    client: httpx.Client,
) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "/api/events" in document["paths"]
    assert "/api/events/{event_id}" in document["paths"]
    assert "/api/stations/{station_id}/events" in document["paths"]

    page = client.get("/api/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<script src="/vendor/swagger-ui/swagger-ui-bundle.js"></script>' in html
    assert '<link rel="stylesheet" href="/vendor/swagger-ui/swagger-ui.css">' in html
    # Nothing from another origin, and no inline script (the site's CSP forbids it).
    assert "//" not in html
    assert "<script>" not in html
    script = client.get("/api/docs/init.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert '"/api/openapi.json"' in script.text
    # FastAPI's own pages, which load Swagger UI and ReDoc from a CDN, are off.
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs").status_code == 404
