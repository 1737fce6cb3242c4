"""What the end-to-end tests do as a vehicle, an operator, a reader of the API or a browser.

The compose tests use these too: they take a site's base URL or an MQTT endpoint rather than
the native test system's settings wherever the containers are reached the same way.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pytest

from roadwatch.adapters.mqtt import BlockingPublisher, MqttEndpoint
from tests.e2e.ground_truth import stored_events

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

    from roadwatch.settings import Settings

T = TypeVar("T")

HTTP_TIMEOUT_S = 5.0
REPORT_INTERVAL_S = 0.25  # between a staying vehicle's CAMs while waiting for its event


def site_url(settings: Settings) -> str:
    """The base URL of the test system's site, as a browser reaches it (through Apache)."""
    return f"http://127.0.0.1:{settings.http_port}"


def api_get(site: str, path: str) -> Any:
    """GET `path` of the site and decode its JSON answer."""
    with urllib.request.urlopen(site + path, timeout=HTTP_TIMEOUT_S) as answer:
        return json.load(answer)


def api_events(site: str, **params: str) -> list[dict[str, Any]]:
    """The first page of `GET /api/events` with these query parameters."""
    items: list[dict[str, Any]] = api_get(site, f"/api/events?{urllib.parse.urlencode(params)}")[
        "items"
    ]
    return items


def poll_until(what: str, check: Callable[[], T], deadline: float, interval_s: float = 0.05) -> T:
    """Call `check` until it returns something true, which is returned; fail at `deadline`."""
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in time")
        time.sleep(interval_s)


# --- Zones, as an operator ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An API answer: its status and its decoded JSON body (None when empty)."""

    status: int
    body: Any


def zones_request(settings: Settings, method: str, path: str = "", body: Any = None) -> Answer:
    """Call `/api/zones{path}` with the operator's token."""
    request = urllib.request.Request(
        f"{site_url(settings)}/api/zones{path}",
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={
            "Authorization": f"Bearer {settings.api_token.get_secret_value()}",
            "Content-Type": "application/geo+json",
        },
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        raw = response.read()
        return Answer(response.status, orjson.loads(raw) if raw else None)


def square_zone(
    zone_id: str, name: str, lat: float, lon: float, half_lat: float, half_lon: float
) -> dict[str, Any]:
    """A GeoJSON zone: the rectangle of these half sizes (degrees) around a point."""
    ring = [
        [lon - half_lon, lat - half_lat],
        [lon + half_lon, lat - half_lat],
        [lon + half_lon, lat + half_lat],
        [lon - half_lon, lat + half_lat],
        [lon - half_lon, lat - half_lat],
    ]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"id": zone_id, "name": name},
    }


# --- Vehicles, over MQTT -----------------------------------------------------------------------


def fleet_endpoint(settings: Settings) -> MqttEndpoint:
    """The simulator's fleet account, allowed to publish for any vehicle."""
    return MqttEndpoint.fleet(settings)


@contextlib.contextmanager
def connected(endpoint: MqttEndpoint) -> Iterator[BlockingPublisher]:
    """A publisher connected to the broker for the duration."""
    publisher = BlockingPublisher(endpoint, name="test-vehicles")
    publisher.start()
    try:
        yield publisher
    finally:
        publisher.stop()


def publish_cam(
    fleet: BlockingPublisher, station: str, lat: float, lon: float, speed: float, heading: float
) -> None:
    """One CAM of a passenger car (station type 5), timestamped now, at QoS 0."""
    payload = {
        "stationId": station,
        "stationType": 5,
        "timestamp": int(time.time() * 1000),
        "lat": lat,
        "lon": lon,
        "speed": speed,
        "heading": heading,
    }
    fleet.publish(f"vehicles/{station}/cam", orjson.dumps(payload))


def accident_denm(station: str, lat: float, lon: float, ts_ms: int, station_type: int = 5) -> bytes:
    """An accident DENM (cause code 2); from a road operator (type 15) it is one at once."""
    return orjson.dumps(
        {
            "stationId": station,
            "stationType": station_type,
            "timestamp": ts_ms,
            "lat": lat,
            "lon": lon,
            "causeCode": 2,
            "subCauseCode": 0,
        }
    )


def publish_accident_pair(
    fleet: BlockingPublisher, first: str, second: str, lat: float, lon: float
) -> None:
    """Two cars report an accident, 70 m and half a second apart: one event
    (docs/contract/detection.md §4).

    Returns once the broker has acknowledged both reports.
    """
    now_ms = int(time.time() * 1000)
    fleet.publish(f"vehicles/{first}/denm", accident_denm(first, lat, lon, now_ms), 1)
    fleet.publish(
        f"vehicles/{second}/denm",
        accident_denm(second, lat + 0.0004, lon + 0.0005, now_ms + 500),
        1,
    )
    fleet.flush(5)


def report_until_stored(
    settings: Settings,
    fleet: BlockingPublisher,
    station: str,
    position: tuple[float, float],
    done: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout_s: float,
) -> float:
    """Keep a slow car reporting at `position` until `done` holds for its stored events.

    Returns how long that took; fails after `timeout_s`.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        publish_cam(fleet, station, *position, speed=5.0, heading=0.0)
        if done(stored_events(settings, {station})):
            return time.monotonic() - started
        time.sleep(REPORT_INTERVAL_S)
    pytest.fail(f"{what} was not stored within {timeout_s} s")


# --- The browser -------------------------------------------------------------------------------


def console_errors(page: Page) -> list[str]:
    """Collect the text of every error the page logs to the console from now on."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


def open_live_page(browser: Browser, site: str, timeout_ms: float) -> tuple[Page, list[str]]:
    """Open the live page in a new tab; return it and its console errors once it is live.

    Live means logged in anonymously over BOSH and subscribed, so no later event is missed.
    """
    page = browser.new_page()
    errors = console_errors(page)
    page.goto(f"{site}/")
    page.wait_for_selector("#connection[data-state='live']", timeout=timeout_ms)
    return page, errors


def accident_row(page: Page, event_id: str, deadline: float, grace_ms: float) -> Locator:
    """Wait until the live feed shows the accident, by `deadline` (plus `grace_ms`); return it."""
    row = page.locator(f"tr[data-event-id='{event_id}']")
    remaining_ms = max(0.0, (deadline - time.monotonic()) * 1000)
    row.wait_for(state="visible", timeout=remaining_ms + grace_ms)
    assert row.get_attribute("data-type") == "accident"
    assert "Accident" in row.inner_text()
    return row
