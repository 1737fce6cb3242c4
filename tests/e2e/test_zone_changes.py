"""Zones changed through the REST API take effect in the running gateway within 5 s."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import orjson
import pytest

from roadwatch.adapters.mqtt import MqttEndpoint, MqttPublisher
from roadwatch.settings import Settings
from tests.e2e.ground_truth import stored_events

pytestmark = pytest.mark.e2e

PICKUP_S = 5.0  # the promise of the zones feature
LAT, LON = 49.3500, 4.2000  # open fields north-east of Reims, outside every shipped zone


def zone_feature(zone_id: str) -> dict[str, Any]:
    d_lat, d_lon = 0.002, 0.003
    ring = [
        [LON - d_lon, LAT - d_lat],
        [LON + d_lon, LAT - d_lat],
        [LON + d_lon, LAT + d_lat],
        [LON - d_lon, LAT + d_lat],
        [LON - d_lon, LAT - d_lat],
    ]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"id": zone_id, "name": "Pop-up event site"},
    }


def call(settings: Settings, method: str, path: str, body: Any = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.http_port}/api/zones{path}",
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={
            "Authorization": f"Bearer {settings.api_token.get_secret_value()}",
            "Content-Type": "application/geo+json",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


def test_zone_created_and_deleted_through_the_api_reaches_the_running_gateway(
    system: Settings,
) -> None:
    settings = system
    zone_id = f"popup-{time.time_ns() % 10**8}"
    station = f"zc-{time.time_ns() % 10**8}"
    car = MqttPublisher(
        MqttEndpoint(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_fleet_user,
            settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    car.start()

    def drive_until(kind: str, since: float) -> float:
        """Keep the car reporting inside the square until `kind` is stored; return the delay."""
        while time.monotonic() - since < PICKUP_S + 5:
            payload = {
                "stationId": station,
                "stationType": 5,
                "timestamp": int(time.time() * 1000),
                "lat": LAT,
                "lon": LON,
                "speed": 5.0,
                "heading": 0.0,
            }
            car.publish(f"vehicles/{station}/cam", orjson.dumps(payload))
            rows = stored_events(settings, {station})
            if any(row["type"] == kind and row["zone_id"] == zone_id for row in rows):
                return time.monotonic() - since
            time.sleep(0.25)
        pytest.fail(f"no {kind} for the zone changed through the API")

    try:
        assert call(settings, "POST", "", zone_feature(zone_id)) == 201
        entered_after = drive_until("zone_enter", time.monotonic())
        assert entered_after < PICKUP_S

        assert call(settings, "DELETE", f"/{zone_id}") == 204
        exited_after = drive_until("zone_exit", time.monotonic())
        assert exited_after < PICKUP_S
    finally:
        car.stop()
    kinds = sorted(row["type"] for row in stored_events(settings, {station}))
    assert kinds == ["zone_enter", "zone_exit"]
