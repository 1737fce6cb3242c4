"""The compose deployment works end to end, and exposes only what it should.

Accident DENMs published with the fleet account to the published MQTT port become one event,
served by the API through Apache and shown live in Chromium (BOSH through Apache).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from roadwatch.adapters.mqtt import MqttAuthError, MqttEndpoint, MqttPublisher
from tests.e2e.helpers import (
    accident_row,
    api_events,
    connected,
    open_live_page,
    poll_until,
    publish_accident_pair,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from tests.compose.conftest import Deployment

pytestmark = pytest.mark.compose

# Containers share two cores with the browser here: a little more room than the native e2e.
DEADLINE_S = 10.0
# Reims, where the web map is centred.
LAT, LON = 49.2536, 4.0340


def test_accident_reports_reach_the_api_and_the_browser(
    deployment: Deployment, browser: Browser
) -> None:
    # Logged in anonymously to the containerised Prosody over BOSH through Apache.
    page, errors = open_live_page(browser, deployment.http_url, timeout_ms=20_000)

    suffix = str(time.time_ns())[-6:]
    first, second = f"compose-a-{suffix}", f"compose-b-{suffix}"
    fleet_account = MqttEndpoint(
        "127.0.0.1",
        deployment.mqtt_port,
        deployment.value("ROADWATCH_MQTT_FLEET_USER", "roadwatch-fleet"),
        deployment.value("ROADWATCH_MQTT_FLEET_PASSWORD"),
    )
    try:
        with connected(fleet_account) as fleet:
            publish_accident_pair(fleet, first, second, LAT, LON)
        deadline = time.monotonic() + DEADLINE_S

        items = poll_until(
            f"an event for {first} in GET /api/events",
            lambda: api_events(deployment.http_url, station=first),
            deadline,
            interval_s=0.1,
        )
        assert len(items) == 1
        event = items[0]
        assert event["type"] == "accident"
        assert event["status"] == "active"
        assert sorted(event["station_ids"]) == sorted([first, second])

        accident_row(page, event["id"], deadline, grace_ms=1000)
        assert errors == []
    finally:
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
