"""Two accident DENMs over MQTT become one event: in MySQL, in the REST API, in the browser."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.ground_truth import stored_events
from tests.e2e.helpers import (
    accident_row,
    api_events,
    connected,
    fleet_endpoint,
    open_live_page,
    poll_until,
    publish_accident_pair,
    site_url,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

# What this slice promises end to end: visible everywhere within 5 s of the second DENM.
DEADLINE_S = 5.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_two_accident_reports_reach_mysql_api_and_browser(
    system: Settings, browser: Browser
) -> None:
    settings = system
    # Live before the accident happens.
    page, errors = open_live_page(browser, site_url(settings), timeout_ms=15_000)

    suffix = str(time.time_ns())[-6:]
    first, second = f"e2e-a-{suffix}", f"e2e-b-{suffix}"
    try:
        with connected(fleet_endpoint(settings)) as fleet:
            publish_accident_pair(fleet, first, second, 49.2536, 4.0340)
        deadline = time.monotonic() + DEADLINE_S

        rows = poll_until(
            "the accident row in MySQL", lambda: stored_events(settings, {second}), deadline
        )
        assert len({row["id"] for row in rows}) == 1
        assert rows[0]["type"] == "accident"
        assert rows[0]["status"] == "active"
        event_id = rows[0]["id"]

        items = poll_until(
            "the event in GET /api/events via Apache",
            lambda: api_events(site_url(settings), station=first),
            deadline,
        )
        assert [item["id"] for item in items] == [event_id]
        assert sorted(items[0]["station_ids"]) == sorted([first, second])

        # A timeout of 0 would mean none: at least a millisecond.
        row = accident_row(page, event_id, deadline, grace_ms=1)
        assert row.get_attribute("data-status") == "active"
        marker = page.locator(f".leaflet-marker-icon[data-event-id='{event_id}']")
        assert marker.count() == 1
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live-accident.png"), full_page=True)
    finally:
        page.close()
