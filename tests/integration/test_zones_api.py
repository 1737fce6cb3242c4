"""The zone routes of the REST API and ZoneSync against a real MariaDB
(docs/contract/detection.md §6, docs/contract/rest-api.md §8)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.domain.events import EventType
from roadwatch.domain.zones import Zone
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import free_port
from roadwatch.services.api.dependencies import MAX_BODY_BYTES
from roadwatch.services.zone_sync import ZoneSync
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events, reset_zones
from tests.integration.test_zone_store import (
    BASE_MS,
    make_zone,
    square_feature,
    zone_event,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(mariadb: MariaDB, test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings) as client:
        yield client


@pytest.fixture
def client(api: httpx.Client, test_settings: Settings) -> httpx.Client:
    reset_zones(test_settings)
    return api


@pytest.fixture
def auth(test_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {test_settings.api_token.get_secret_value()}"}


def assert_json_error(response: httpx.Response, status: int, error: str | None = None) -> str:
    """Check a JSON error answer and return its detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    if error is not None:
        assert body["error"] == error
    assert body["detail"]
    return str(body["detail"])


# --- CRUD ------------------------------------------------------------------------------------


def test_zone_crud_round_trip(client: httpx.Client, auth: dict[str, str]) -> None:
    assert client.get("/api/zones").json() == {"type": "FeatureCollection", "features": []}

    feature = square_feature("centre", "Centre", hysteresis_m=25)
    created = client.post("/api/zones", json=feature, headers=auth)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == "application/geo+json"
    assert created.headers["location"] == "/api/zones/centre"
    assert created.json() == make_zone("centre", "Centre", hysteresis_m=25).to_feature()

    one = client.get("/api/zones/centre")
    assert one.status_code == 200
    assert one.json() == created.json()
    listed = client.get("/api/zones")
    assert listed.status_code == 200
    assert listed.json() == {"type": "FeatureCollection", "features": [created.json()]}

    replaced = client.put(
        "/api/zones/centre",
        json=square_feature("centre", "Centre, bigger", size=0.05),
        headers=auth,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["properties"] == {"id": "centre", "name": "Centre, bigger"}
    assert client.get("/api/zones/centre").json() == replaced.json()

    # PUT to a new id creates it.
    made = client.put("/api/zones/gare", json=square_feature("gare", "Gare"), headers=auth)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/api/zones/gare"
    ids = [f["properties"]["id"] for f in client.get("/api/zones").json()["features"]]
    assert ids == ["centre", "gare"]

    deleted = client.delete("/api/zones/centre", headers=auth)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_json_error(client.get("/api/zones/centre"), 404, "not_found")
    assert_json_error(client.delete("/api/zones/centre", headers=auth), 404, "not_found")
    ids = [f["properties"]["id"] for f in client.get("/api/zones").json()["features"]]
    assert ids == ["gare"]


def test_the_zone_list_answers_304_when_unchanged(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    client.post("/api/zones", json=square_feature("a"), headers=auth)
    first = client.get("/api/zones")
    etag = first.headers["etag"]
    again = client.get("/api/zones", headers={"If-None-Match": etag})
    assert again.status_code == 304
    client.post("/api/zones", json=square_feature("b"), headers=auth)
    changed = client.get("/api/zones", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


def test_creating_a_taken_id_is_409_and_keeps_the_first(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    assert client.post("/api/zones", json=square_feature("dup", "First"), headers=auth).is_success
    detail = assert_json_error(
        client.post("/api/zones", json=square_feature("dup", "Second"), headers=auth),
        409,
        "conflict",
    )
    assert "dup" in detail
    assert client.get("/api/zones/dup").json()["properties"]["name"] == "First"


def test_unknown_zones_are_404_json(client: httpx.Client, auth: dict[str, str]) -> None:
    for path in ("/api/zones/nowhere", "/api/zones/nowhere/occupancy", "/api/zones/" + "z" * 300):
        assert_json_error(client.get(path), 404, "not_found")
    assert_json_error(client.delete("/api/zones/nowhere", headers=auth), 404, "not_found")


# --- authorisation ---------------------------------------------------------------------------

WRITES = [
    ("POST", "/api/zones"),
    ("PUT", "/api/zones/guarded"),
    ("DELETE", "/api/zones/guarded"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Token abc",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer é-non-ascii".encode(),
    ],
)
def test_writes_without_the_right_token_are_401(
    client: httpx.Client,
    auth: dict[str, str],
    method: str,
    path: str,
    authorization: str | bytes | None,
) -> None:
    original = square_feature("guarded", "Original")
    assert client.post("/api/zones", json=original, headers=auth).status_code == 201
    headers: dict[bytes, bytes] = {}
    if authorization is not None:
        raw = authorization if isinstance(authorization, bytes) else authorization.encode()
        headers[b"Authorization"] = raw
    body = None if method == "DELETE" else orjson.dumps(square_feature("guarded", "Changed"))
    response = client.request(method, path, content=body, headers=headers)
    assert_json_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    # Nothing changed.
    assert client.get("/api/zones/guarded").json()["properties"]["name"] == "Original"


def test_the_token_is_checked_before_the_body(client: httpx.Client) -> None:
    response = client.post("/api/zones", content=b"not json", headers={"Authorization": "Bearer x"})
    assert_json_error(response, 401, "unauthorized")


def test_the_scheme_name_is_case_insensitive(client: httpx.Client, test_settings: Settings) -> None:
    token = test_settings.api_token.get_secret_value()
    response = client.post(
        "/api/zones", json=square_feature("ci"), headers={"Authorization": f"bearer {token}"}
    )
    assert response.status_code == 201, response.text


def test_writes_are_refused_when_no_token_is_configured(
    mariadb: MariaDB, test_settings: Settings
) -> None:
    reset_zones(test_settings)
    with serve(test_settings.model_copy(update={"api_token": SecretStr("")})) as client:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}):
            response = client.post("/api/zones", json=square_feature("x"), headers=headers)
            assert_json_error(response, 403, "writes_disabled")
        assert client.get("/api/zones").json()["features"] == []


def test_openapi_documents_the_zone_routes_and_the_bearer_scheme(client: httpx.Client) -> None:
    document = client.get("/api/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"].lower() == "bearer" for s in schemes.values())
    paths = document["paths"]
    for method in ("post",):
        assert paths["/api/zones"][method]["security"]
        assert "requestBody" in paths["/api/zones"][method]
    for method in ("put", "delete"):
        assert paths["/api/zones/{zone_id}"][method]["security"]
    assert "security" not in paths["/api/zones"]["get"]
    assert "security" not in paths["/api/zones/{zone_id}"]["get"]
    assert "/api/zones/{zone_id}/occupancy" in paths


# --- bad input -------------------------------------------------------------------------------


def feature_with(**changes: Any) -> bytes:
    feature = square_feature("bad", "Bad")
    for key, value in changes.items():
        if key in ("id", "name", "hysteresis_m"):
            feature["properties"][key] = value
        elif key == "drop":
            del feature["properties"][value]
        else:
            feature[key] = value
    return orjson.dumps(feature)


RING = square_feature("x")["geometry"]["coordinates"][0]


@pytest.mark.parametrize(
    ("body", "error", "mentions"),
    [
        (b"", "invalid_json", "empty"),
        (b"{not json", "invalid_json", "JSON"),
        (b'"\\ud800"', "invalid_json", "JSON"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json", "JSON"),
        (b"[]", "invalid_zone", "Feature"),
        (b'{"type": "FeatureCollection", "features": []}', "invalid_zone", "Feature"),
        (feature_with(drop="id"), "invalid_zone", "properties.id"),
        (feature_with(drop="name"), "invalid_zone", "properties.name"),
        (feature_with(id="has space"), "invalid_zone", "properties.id"),
        (feature_with(id="a/b"), "invalid_zone", "properties.id"),
        (feature_with(id="z" * 65), "invalid_zone", "properties.id"),
        (feature_with(id=7), "invalid_zone", "properties.id"),
        (feature_with(name=""), "invalid_zone", "properties.name"),
        (feature_with(name="n" * 201), "invalid_zone", "properties.name"),
        (feature_with(hysteresis_m=-1), "invalid_zone", "hysteresis"),
        (feature_with(properties=None), "invalid_zone", "properties"),
        (feature_with(geometry=None), "invalid_zone", "geometry"),
        (
            feature_with(geometry={"type": "Point", "coordinates": [4.0, 49.0]}),
            "invalid_zone",
            "Point",
        ),
        (
            feature_with(geometry={"type": "Polygon", "coordinates": [RING[:-1]]}),
            "invalid_zone",
            "ring",
        ),
        (
            feature_with(
                geometry={"type": "Polygon", "coordinates": [[*RING[:-1], [200.0, 49.0], RING[0]]]}
            ),
            "invalid_zone",
            "longitude",
        ),
        (
            feature_with(geometry={"type": "Polygon", "coordinates": "nope"}),
            "invalid_zone",
            "geometry.coordinates",
        ),
    ],
)
def test_invalid_features_get_a_400_saying_what_is_wrong(
    client: httpx.Client, auth: dict[str, str], body: bytes, error: str, mentions: str
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    detail = assert_json_error(client.post("/api/zones", content=body, headers=headers), 400, error)
    assert mentions in detail
    put = client.put("/api/zones/bad", content=body, headers=headers)
    assert_json_error(put, 400, error)
    assert client.get("/api/zones").json()["features"] == []


def test_put_with_another_id_in_the_body_is_400(client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.put("/api/zones/one", json=square_feature("two"), headers=auth)
    detail = assert_json_error(response, 400, "invalid_zone")
    assert "'two'" in detail
    assert "'one'" in detail
    assert client.get("/api/zones").json()["features"] == []


def test_an_oversized_body_is_413_json(client: httpx.Client, auth: dict[str, str]) -> None:
    feature = square_feature("big", "x" * 100)
    feature["properties"]["padding"] = "p" * (MAX_BODY_BYTES + 1)
    response = client.post("/api/zones", content=orjson.dumps(feature), headers=auth)
    assert_json_error(response, 413, "payload_too_large")

    # Without a Content-Length, the limit is counted while reading.
    def chunks() -> Iterator[bytes]:
        yield orjson.dumps(feature)

    streamed = client.post("/api/zones", content=chunks(), headers=auth)
    assert_json_error(streamed, 413, "payload_too_large")
    assert client.get("/api/zones").json()["features"] == []


def test_a_body_not_sent_as_json_is_415(client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.post(
        "/api/zones",
        content=orjson.dumps(square_feature("form")),
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_json_error(response, 415, "unsupported_media_type")


def test_geojson_media_type_is_accepted(client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.post(
        "/api/zones",
        content=orjson.dumps(square_feature("geo")),
        headers={**auth, "Content-Type": "application/geo+json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text


def test_markup_in_a_zone_name_is_stored_and_returned_verbatim_as_json(
    client: httpx.Client, auth: dict[str, str]
) -> None:
    name = "<img src=x onerror=alert(1)>"
    created = client.post("/api/zones", json=square_feature("xss", name), headers=auth)
    assert created.status_code == 201, created.text
    for response in (client.get("/api/zones/xss"), client.get("/api/zones")):
        assert response.status_code == 200
        # Served as JSON (never HTML), the text as sent: escaping is the renderer's job.
        assert response.headers["content-type"] == "application/geo+json"
        assert b"<img src=x onerror=alert(1)>" in response.content
    assert client.get("/api/zones/xss").json()["properties"]["name"] == name


@pytest.mark.parametrize(
    "path",
    [
        "/api/zones/%00",
        "/api/zones/%F0%9F%9A%97",
        "/api/zones/%FF%FE",
        "/api/zones/%27%20OR%201%3D1%20--",
        "/api/zones/%ED%A0%80/occupancy",
        "/api/zones/..%2F..%2Fetc",
    ],
)
def test_odd_zone_ids_in_the_path_never_cause_a_server_error(
    client: httpx.Client, auth: dict[str, str], path: str
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        content = orjson.dumps(square_feature("odd")) if method == "PUT" else None
        response = client.request(method, path, content=content, headers=auth)
        assert response.status_code < 500, (method, response.text)
        assert response.headers["content-type"].startswith("application/json")


def test_zone_routes_answer_503_json_when_the_database_is_down(
    test_settings: Settings, auth: dict[str, str]
) -> None:
    with serve(test_settings.model_copy(update={"mysql_port": free_port()})) as client:
        for response in (
            client.get("/api/zones"),
            client.get("/api/zones/a"),
            client.get("/api/zones/a/occupancy"),
            client.post("/api/zones", json=square_feature("a"), headers=auth),
            client.put("/api/zones/a", json=square_feature("a"), headers=auth),
            client.delete("/api/zones/a", headers=auth),
        ):
            assert_json_error(response, 503, "database_unavailable")


# --- occupancy -------------------------------------------------------------------------------


def test_occupancy_lists_the_stations_inside_now(
    client: httpx.Client, auth: dict[str, str], test_settings: Settings
) -> None:
    client.post("/api/zones", json=square_feature("centre"), headers=auth)
    clear_events(test_settings)
    enter, leave = EventType.ZONE_ENTER, EventType.ZONE_EXIT
    with EventStore.connect(test_settings) as store:
        store.upsert(
            [
                zone_event(enter, "car-1", "centre", 10),
                zone_event(enter, "car-2", "centre", 20),
                zone_event(leave, "car-2", "centre", 30),
                zone_event(enter, "car-3", "centre", 40),
            ]
        )
    try:
        response = client.get("/api/zones/centre/occupancy")
        assert response.status_code == 200
        assert response.json() == {
            "zone_id": "centre",
            "stations": [
                {"station_id": "car-1", "since": "2024-06-01T08:00:10.000Z"},
                {"station_id": "car-3", "since": "2024-06-01T08:00:40.000Z"},
            ],
            "count": 2,
        }
    finally:
        clear_events(test_settings)
    assert BASE_MS == 1_717_228_800_000


# --- ZoneSync --------------------------------------------------------------------------------


class Recorder:
    """Collects what ZoneSync delivers."""

    def __init__(self) -> None:
        self.calls: list[list[Zone]] = []

    def __call__(self, zones: list[Zone]) -> None:
        self.calls.append(zones)

    def ids(self, n: int = -1) -> list[str]:
        return [zone.id for zone in self.calls[n]]


async def until(predicate: Any, timeout_s: float, what: str) -> float:
    """Wait in the event loop until `predicate()` holds; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def write_zones_file(path: Path, *zone_ids: str) -> Path:
    features = [square_feature(zone_id, lon=4.0 + n * 0.02) for n, zone_id in enumerate(zone_ids)]
    path.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_zone_sync_seeds_then_sees_api_changes_within_5_s(
    client: httpx.Client, auth: dict[str, str], test_settings: Settings, tmp_path: Path
) -> None:
    settings = test_settings.model_copy(
        update={"zones_file": write_zones_file(tmp_path / "z.geojson", "f1", "f2")}
    )
    recorder = Recorder()

    async def scenario() -> None:
        sync = ZoneSync(settings, recorder)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_loaded(), 10)
            assert recorder.ids() == ["f1", "f2"]
            assert sync.counters()["zones_seeded"] == 2

            created = await asyncio.to_thread(
                client.post, "/api/zones", json=square_feature("api-made"), headers=auth
            )
            assert created.status_code == 201
            took = await until(lambda: "api-made" in recorder.ids(), 5, "create seen")
            assert took < 5

            deleted = await asyncio.to_thread(client.delete, "/api/zones/f1", headers=auth)
            assert deleted.status_code == 204
            await until(lambda: recorder.ids() == ["api-made", "f2"], 5, "delete seen")

            renamed = square_feature("f2", "Renamed", lon=4.02)
            replaced = await asyncio.to_thread(
                client.put, "/api/zones/f2", json=renamed, headers=auth
            )
            assert replaced.status_code == 200
            await until(lambda: recorder.calls[-1][-1].name == "Renamed", 5, "update seen")
            counters = sync.counters()
            assert counters["zone_loads"] == len(recorder.calls) == 4
            assert counters["zone_db_failures"] == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), 60))

    # A second start does not bring back the deleted f1.
    again = Recorder()

    async def restart() -> None:
        sync = ZoneSync(settings, again)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_loaded(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(restart())
    assert again.ids() == ["api-made", "f2"]


def test_zone_sync_polls_over_one_session(
    mariadb: MariaDB, test_settings: Settings, tmp_path: Path
) -> None:
    reset_zones(test_settings)
    settings = test_settings.model_copy(
        update={"zones_file": tmp_path / "missing.geojson", "zone_refresh_s": 0.05}
    )
    recorder = Recorder()

    def sessions() -> int:
        with mariadb.admin_connection() as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
            row = cur.fetchone()
            assert row is not None
            return int(row[1])

    async def scenario() -> None:
        sync = ZoneSync(settings, recorder)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_loaded(), 10)
            before = sessions()
            await until(lambda: int(sync.counters()["zone_polls"] or 0) >= 20, 10, "20 polls")
            # Only the admin session of sessions() itself was opened meanwhile.
            assert sessions() - before <= 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert recorder.calls == [[]]


def test_zone_sync_starts_from_the_file_while_the_database_is_down_and_catches_up(
    mariadb: MariaDB, test_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reset_zones(test_settings)
    with ZoneStore.connect(test_settings) as store:
        store.create_zone(make_zone("db-only"))
    zones_file = write_zones_file(tmp_path / "z.geojson", "from-file")
    down = test_settings.model_copy(update={"zones_file": zones_file, "mysql_port": free_port()})
    recorder = Recorder()

    async def scenario() -> None:
        sync = ZoneSync(down, recorder, file_fallback=True)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_loaded(), 15)
            assert recorder.ids() == ["from-file"]
            assert sync.counters()["zone_source"] == "file"
            await until(lambda: int(sync.counters()["zone_db_failures"] or 0) >= 3, 15, "retries")
            # Still alive and still holding the zones it had.
            assert not task.done()
            assert [zone.id for zone in sync.zones] == ["from-file"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with caplog.at_level(logging.WARNING, logger="roadwatch.services.zone_sync"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    unavailable = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(unavailable) == 1, "the outage is logged once, not at every retry"
    # The revision is not 0 (a zone was made through the API): nothing was seeded.
    with ZoneStore.connect(test_settings) as store:
        assert [zone.id for zone in store.list_zones()] == ["db-only"]


def test_zone_sync_without_fallback_delivers_nothing_until_the_database_answers(
    mariadb: MariaDB, test_settings: Settings, tmp_path: Path
) -> None:
    reset_zones(test_settings)
    zones_file = write_zones_file(tmp_path / "z.geojson", "from-file")
    down = test_settings.model_copy(update={"zones_file": zones_file, "mysql_port": free_port()})
    recorder = Recorder()

    async def scenario() -> None:
        sync = ZoneSync(down, recorder)
        task = asyncio.create_task(sync.run())
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sync.wait_loaded(), 1.5)
            assert int(sync.counters()["zone_db_failures"] or 0) >= 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert recorder.calls == []


def test_zone_sync_keeps_its_zones_through_a_killed_session(
    mariadb: MariaDB, test_settings: Settings, tmp_path: Path
) -> None:
    reset_zones(test_settings)
    settings = test_settings.model_copy(
        update={"zones_file": write_zones_file(tmp_path / "z.geojson", "k1"), "zone_refresh_s": 0.1}
    )
    recorder = Recorder()

    def kill_sessions() -> None:
        with mariadb.admin_connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id FROM information_schema.processlist WHERE user = %s",
                (settings.mysql_user,),
            )
            for (session,) in cur.fetchall():
                cur.execute("KILL CONNECTION %s", (session,))

    async def scenario() -> None:
        sync = ZoneSync(settings, recorder)
        task = asyncio.create_task(sync.run())
        try:
            await asyncio.wait_for(sync.wait_loaded(), 10)
            await asyncio.to_thread(kill_sessions)
            with ZoneStore.connect(settings) as store:
                await asyncio.to_thread(store.create_zone, make_zone("k2"))
            await until(lambda: recorder.ids() == ["k1", "k2"], 5, "change after the kill")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
