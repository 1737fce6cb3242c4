"""The compose deployment works end to end, and exposes only what it should.

Accident DENMs published with the fleet account to the published MQTT port become one event,
served by the API through Apache and shown live in Chromium (BOSH through Apache).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from roadwatch.adapters.mqtt import MqttAuthError, MqttEndpoint, MqttPublisher

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from tests.compose.conftest import Deployment

pytestmark = pytest.mark.compose

# Containers share two cores with the browser here: a little more room than the native e2e.
DEADLINE_S = 10.0
# Reims, where the web map is centred.
LAT, LON = 49.2536, 4.0340


def accident_denm(station: str, lat: float, lon: float, ts_ms: int) -> bytes:
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


def api_events(deployment: Deployment, station: str) -> list[dict[str, Any]]:
    url = f"{deployment.http_url}/api/events?station={station}"
    with urllib.request.urlopen(url, timeout=2) as response:
        items: list[dict[str, Any]] = json.load(response)["items"]
    return items


def test_accident_reports_reach_the_api_and_the_browser(
    deployment: Deployment, browser: Browser
) -> None:
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{deployment.http_url}/")
    # Logged in anonymously to the containerised Prosody over BOSH through Apache.
    page.wait_for_selector("#connection[data-state='live']", timeout=20_000)

    suffix = str(time.time_ns())[-6:]
    first, second = f"compose-a-{suffix}", f"compose-b-{suffix}"
    fleet = MqttPublisher(
        MqttEndpoint(
            "127.0.0.1",
            deployment.mqtt_port,
            deployment.value("ROADWATCH_MQTT_FLEET_USER", "roadwatch-fleet"),
            deployment.value("ROADWATCH_MQTT_FLEET_PASSWORD"),
        )
    )
    fleet.start()
    try:
        now_ms = int(time.time() * 1000)
        fleet.publish(f"vehicles/{first}/denm", accident_denm(first, LAT, LON, now_ms), 1)
        fleet.publish(
            f"vehicles/{second}/denm",
            accident_denm(second, LAT + 0.0004, LON + 0.0005, now_ms + 500),
            1,
        ).wait_for_publish(5)
        deadline = time.monotonic() + DEADLINE_S

        items: list[dict[str, Any]] = []
        while not items and time.monotonic() < deadline:
            items = api_events(deployment, first)
            time.sleep(0.1)
        assert items, f"no event for {first} in GET /api/events within {DEADLINE_S} s"
        assert len(items) == 1
        event = items[0]
        assert event["type"] == "accident"
        assert event["status"] == "active"
        assert sorted(event["station_ids"]) == sorted([first, second])

        row = page.locator(f"tr[data-event-id='{event['id']}']")
        remaining_ms = max(0.0, (deadline - time.monotonic()) * 1000)
        row.wait_for(state="visible", timeout=remaining_ms + 1000)
        assert row.get_attribute("data-type") == "accident"
        assert "Accident" in row.inner_text()
        assert console_errors == []
    finally:
        fleet.stop()
        page.close()


def test_only_apache_and_mosquitto_are_published(deployment: Deployment) -> None:
    published = {
        service: ports for service, ports in deployment.containers().items() if "->" in ports
    }
    assert sorted(published) == ["apache", "mosquitto"]
    http = (
        deployment.value("ROADWATCH_HTTP_BIND", "127.0.0.1"),
        deployment.value("ROADWATCH_HTTP_PORT", "8080"),
    )
    mqtt = (deployment.value("ROADWATCH_MQTT_BIND", "127.0.0.1"), deployment.mqtt_port)
    assert published["apache"] == f"{http[0]}:{http[1]}->8080/tcp"
    assert published["mosquitto"] == f"{mqtt[0]}:{mqtt[1]}->1883/tcp"


def test_the_simulator_reaches_mosquitto_but_not_mysql(deployment: Deployment) -> None:
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    assert deployment.exec("simulator", "python", "-c", probe, "mosquitto", "1883").returncode == 0
    assert deployment.exec("simulator", "python", "-c", probe, "mysql", "3306").returncode == 1
    assert deployment.exec("apache", "bash", "-c", "getent hosts mysql").returncode != 0


def test_a_vehicle_account_made_in_the_broker_container_can_log_in(
    deployment: Deployment,
) -> None:
    station = f"compose-car-{str(time.time_ns())[-6:]}"
    made = deployment.exec("mosquitto", "roadwatch-mqtt-account", "vehicle", station)
    assert made.returncode == 0, made.stderr
    assert f"may publish to vehicles/{station}/#" in made.stdout
    password = made.stdout.split("password: ", 1)[1].strip()

    vehicle = MqttPublisher(MqttEndpoint("127.0.0.1", deployment.mqtt_port, station, password))
    vehicle.start()
    vehicle.stop()
    impostor = MqttPublisher(
        MqttEndpoint("127.0.0.1", deployment.mqtt_port, station, password + "x")
    )
    with pytest.raises(MqttAuthError):
        impostor.start()
