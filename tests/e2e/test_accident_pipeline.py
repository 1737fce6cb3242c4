"""Two accident DENMs over MQTT become one event: in MySQL, in the REST API, in the browser."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pymysql
import pytest

from roadwatch.adapters.mqtt import MqttEndpoint, MqttPublisher

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

# SPEC-level promise of this slice: visible everywhere within 5 s of the second DENM.
DEADLINE_S = 5.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def denm(station: str, lat: float, lon: float, ts_ms: int) -> bytes:
    return orjson.dumps(
        {
            "stationId": station,
            "stationType": 5,
            "timestamp": ts_ms,
            "lat": lat,
            "lon": lon,
            "causeCode": 2,
            "subCauseCode": 0,
        }
    )


def wait_for(what: str, check: Any, deadline: float) -> Any:
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE_S} s of the second DENM")
        time.sleep(0.05)


def rows_for(settings: Settings, station: str) -> list[dict[str, Any]]:
    connection = pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=settings.mysql_database,
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT e.id, e.type, e.status, e.version FROM events e"
                " JOIN event_stations s ON s.event_id = e.id WHERE s.station_id = %s",
                (station,),
            )
            return list(cursor.fetchall())
    finally:
        connection.close()


def api_events(settings: Settings, station: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{settings.http_port}/api/events?station={station}"
    with urllib.request.urlopen(url, timeout=2) as response:
        items: list[dict[str, Any]] = json.load(response)["items"]
    return items


def test_two_accident_reports_reach_mysql_api_and_browser(
    system: Settings, browser: Browser
) -> None:
    settings = system
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"http://127.0.0.1:{settings.http_port}/")
    # The page logs in anonymously over BOSH and subscribes before the accident happens.
    page.wait_for_selector("#connection[data-state='live']", timeout=15_000)

    suffix = str(time.time_ns())[-6:]
    first, second = f"e2e-a-{suffix}", f"e2e-b-{suffix}"
    fleet = MqttPublisher(
        MqttEndpoint(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_fleet_user,
            settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    fleet.start()
    try:
        now_ms = int(time.time() * 1000)
        fleet.publish(f"vehicles/{first}/denm", denm(first, 49.2536, 4.0340, now_ms), 1)
        fleet.publish(
            f"vehicles/{second}/denm", denm(second, 49.2540, 4.0345, now_ms + 500), 1
        ).wait_for_publish(5)
        deadline = time.monotonic() + DEADLINE_S

        rows = wait_for("the accident row in MySQL", lambda: rows_for(settings, second), deadline)
        assert len({row["id"] for row in rows}) == 1
        assert rows[0]["type"] == "accident"
        assert rows[0]["status"] == "active"
        event_id = rows[0]["id"]

        items = wait_for(
            "the event in GET /api/events via Apache",
            lambda: api_events(settings, first),
            deadline,
        )
        assert [item["id"] for item in items] == [event_id]
        assert sorted(items[0]["station_ids"]) == sorted([first, second])

        row = page.locator(f"tr[data-event-id='{event_id}']")
        remaining_ms = max(0.0, (deadline - time.monotonic()) * 1000)
        row.wait_for(state="visible", timeout=remaining_ms + 1)
        assert row.get_attribute("data-status") == "active"
        assert row.get_attribute("data-type") == "accident"
        assert "Accident" in row.inner_text()
        marker = page.locator(f".leaflet-marker-icon[data-event-id='{event_id}']")
        assert marker.count() == 1
        assert console_errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-accident.png"), full_page=True)
    finally:
        fleet.stop()
        page.close()
