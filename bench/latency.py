"""Publish → MySQL row → REST answer latency of accident events, on the running system."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

import orjson
import pymysql

from roadwatch.adapters.mqtt import MqttEndpoint, MqttPublisher
from roadwatch.settings import Settings, load_settings

ROUNDS = 50
TIMEOUT_S = 5.0


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, round(len(ordered) * 0.95) - 1)]
    return f"p50 {statistics.median(ordered):6.1f}  p95 {p95:6.1f}  max {ordered[-1]:6.1f} ms"


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {TIMEOUT_S} s")
        time.sleep(0.001)


def measure(settings: Settings) -> tuple[list[float], list[float]]:
    fleet = MqttPublisher(
        MqttEndpoint(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_fleet_user,
            settings.mqtt_fleet_password.get_secret_value(),
        )
    )
    fleet.start()
    db = pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=settings.mysql_database,
        autocommit=True,
    )
    to_row: list[float] = []
    to_api: list[float] = []
    run = time.time_ns() % 1_000_000
    try:
        for n in range(ROUNDS):
            first, second = f"bench-{run}-{n}-a", f"bench-{run}-{n}-b"
            now_ms = int(time.time() * 1000)
            lat = 48.0 + n * 0.01  # 1 km apart: each round is its own accident
            for station, offset in ((first, 0), (second, 1)):
                payload = {
                    "stationId": station,
                    "stationType": 5,
                    "timestamp": now_ms + offset,
                    "lat": lat,
                    "lon": 3.0,
                    "causeCode": 2,
                }
                fleet.publish(f"vehicles/{station}/denm", orjson.dumps(payload), 1)
            started = time.perf_counter()

            def stored(station: str = second) -> bool:
                with db.cursor() as cursor:
                    cursor.execute("SELECT 1 FROM event_stations WHERE station_id = %s", (station,))
                    return cursor.fetchone() is not None

            def served(station: str = second) -> bool:
                url = f"http://127.0.0.1:{settings.http_port}/api/events?station={station}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(json.load(response)["items"])

            _wait(stored, "the row in MySQL")
            to_row.append((time.perf_counter() - started) * 1000)
            _wait(served, "the event in the REST API")
            to_api.append((time.perf_counter() - started) * 1000)
            # A road operator clears it, so the benchmark leaves no active accident behind.
            operator = f"bench-{run}-operator"
            clear = {
                "stationId": operator,
                "stationType": 15,
                "timestamp": now_ms + n + 2,
                "lat": lat,
                "lon": 3.0,
                "causeCode": 2,
                "termination": "negation",
            }
            fleet.publish(f"vehicles/{operator}/denm", orjson.dumps(clear), 1)
            time.sleep(0.02)
    finally:
        fleet.stop()
        db.close()
    return to_row, to_api


def main() -> None:
    settings = load_settings()
    try:
        to_row, to_api = measure(settings)
    except (OSError, pymysql.err.MySQLError, TimeoutError) as exc:
        print(f"latency: skipped, the system is not running (`make up` first): {exc}")
        return
    print(f"latency: {ROUNDS} accidents (2 DENMs each) through the running system")
    print(f"  second DENM published -> row in MySQL        {_percentiles(to_row)}")
    print(f"  second DENM published -> GET /api/events     {_percentiles(to_api)}")
