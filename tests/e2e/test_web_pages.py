"""The history, statistics and zones pages in a real browser, over the running system."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from roadwatch.adapters.mysql.connection import ConnectionPool
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.domain.events import Event, EventStatus, EventType
from tests.e2e.helpers import (
    api_get,
    connected,
    console_errors,
    fleet_endpoint,
    report_until_stored,
    site_url,
    square_zone,
    zones_request,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

# The history events lie in one day of the past, apart from what other tests store around now.
HISTORY_DAY = datetime(2025, 3, 1, tzinfo=UTC)
HISTORY_COUNTS = {
    EventType.ACCIDENT: 14,
    EventType.TRAFFIC_JAM: 6,
    EventType.HAZARD: 4,
    EventType.ZONE_ENTER: 3,
    EventType.ZONE_EXIT: 3,
}
ACTIVE_ACCIDENTS = 5
# Events of the last day for the statistics: per type, how many, around one hotspot.
RECENT_COUNTS = {EventType.ACCIDENT: 7, EventType.TRAFFIC_JAM: 4, EventType.HAZARD: 3}
HOTSPOT = (49.2402, 4.0455)  # a junction on the southern ring road
SHIPPED_ZONE_NAMES = (
    "Reims centre: Notre-Dame cathedral and place Drouet-d'Erlon",
    "Gare de Reims station district",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
UI_TIMEOUT_MS = 10_000
# The zones page refreshes every 10 s; a change shows within one period plus the request.
ZONES_REFRESH_S = 10
# Open fields north-east of Reims, outside every shipped zone (as in test_zone_changes).
POPUP_LAT, POPUP_LON = 49.3400, 4.1900


@dataclass
class WebPage:
    """A browser page of one test, with the console errors it logged."""

    page: Page
    errors: list[str]
    base_url: str

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def make_event(
    ident: str,
    kind: EventType,
    started: datetime,
    *,
    station: str,
    status: EventStatus | None = None,
    position: tuple[float, float] = (49.2536, 4.0340),
) -> Event:
    if status is None:
        instant = kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
        status = EventStatus.INSTANT if instant else EventStatus.CLEARED
    ended = None if status is EventStatus.ACTIVE else started + timedelta(minutes=5)
    details: dict[str, Any] = {}
    zone_id = zone_name = None
    if kind is EventType.TRAFFIC_JAM:
        lat, lon = position
        ring = [[lon, lat], [lon + 0.002, lat], [lon + 0.002, lat + 0.001], [lon, lat]]
        details = {
            "vehicle_count": 7,
            "mean_speed_kmh": 12.5,
            "extent": {"type": "Polygon", "coordinates": [ring]},
        }
    if kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT):
        zone_id, zone_name = "reims-centre", SHIPPED_ZONE_NAMES[0]
    return Event(
        id=ident,
        type=kind,
        status=status,
        version=1,
        started_ms=ms(started),
        updated_ms=ms(ended or started),
        ended_ms=None if ended is None else ms(ended),
        lat=position[0],
        lon=position[1],
        cause_code=2 if kind is EventType.ACCIDENT else None,
        station_ids=(station,),
        zone_id=zone_id,
        zone_name=zone_name,
        details=details,
    )


@dataclass(frozen=True)
class StoredEvents:
    """What the module stored: the history day's events and the recent ones."""

    history: list[Event]
    recent: list[Event]


@pytest.fixture(scope="module")
def stored(running_system: Any) -> Iterator[StoredEvents]:
    """Store the events the pages show, straight into MySQL (the pipeline has its own tests)."""
    settings: Settings = running_system.settings
    suffix = str(time.time_ns())[-7:]
    history: list[Event] = []
    moment = HISTORY_DAY + timedelta(hours=1)
    for kind, count in HISTORY_COUNTS.items():
        for n in range(count):
            active = kind is EventType.ACCIDENT and n < ACTIVE_ACCIDENTS
            history.append(
                make_event(
                    f"web-{suffix}-{kind.value}-{n:02d}",
                    kind,
                    moment,
                    station=f"hist-{suffix}-{n}",
                    status=EventStatus.ACTIVE if active else None,
                )
            )
            moment += timedelta(minutes=17)
    now = datetime.now(UTC)
    recent: list[Event] = []
    for kind, count in RECENT_COUNTS.items():
        for n in range(count):
            recent.append(
                make_event(
                    f"web-{suffix}-recent-{kind.value}-{n:02d}",
                    kind,
                    now - timedelta(hours=2 + 2 * n, minutes=5),
                    station=f"recent-{suffix}-{n}",
                    position=(HOTSPOT[0] + 0.0001 * n, HOTSPOT[1]),
                )
            )
    pool = ConnectionPool(settings, 1)
    try:
        EventStore(pool).upsert([*history, *recent])
    finally:
        pool.close()
    yield StoredEvents(history, recent)


@pytest.fixture
def web(system: Settings, browser: Browser) -> Iterator[Callable[..., WebPage]]:
    """Open browser pages (English, Paris time) that record every console error."""
    contexts: list[BrowserContext] = []

    def new_page(viewport: dict[str, int] = DESKTOP) -> WebPage:
        context = browser.new_context(
            viewport=viewport,  # type: ignore[arg-type]
            locale="en-GB",
            timezone_id="Europe/Paris",
            accept_downloads=True,
        )
        contexts.append(context)
        page = context.new_page()
        errors = console_errors(page)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Which request failed, since the console names only the status.
        page.on(
            "response",
            lambda answer: (
                errors.append(f"HTTP {answer.status} {answer.url}")
                if answer.status >= 400
                else None
            ),
        )
        return WebPage(page, errors, site_url(system))

    yield new_page
    for context in contexts:
        context.close()


def row_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("#event-rows tr[data-event-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.eventId)"
    )
    return ids


def wait_until_loaded(page: Page) -> None:
    page.wait_for_selector("#results-status:not([data-state='loading'])", timeout=UI_TIMEOUT_MS)


def history_day_query() -> str:
    since = HISTORY_DAY.strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (HISTORY_DAY + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"since={since}&until={until}"


def ids_of(events: list[Event], kind: EventType, status: EventStatus | None = None) -> set[str]:
    return {e.id for e in events if e.type is kind and (status is None or e.status is status)}


# --- History ----------------------------------------------------------------------------------


def submit_filters(page: Page, rows: int) -> None:
    page.click("#filters button[type='submit']")
    page.wait_for_function(
        f"() => document.querySelectorAll('#event-rows tr[data-event-id]').length == {rows}"
    )
    wait_until_loaded(page)


def turn_page(page: Page, button: str, number: int) -> None:
    page.click(button)
    page.wait_for_function(
        f"() => document.getElementById('page-number').textContent == 'Page {number}'"
    )
    wait_until_loaded(page)


def test_history_filters_paginate_and_survive_a_reload(
    stored: StoredEvents, web: Callable[..., WebPage], screenshot: Callable[[Page, str], Path]
) -> None:
    view = web()
    page = view.page
    view.open(f"/history?{history_day_query()}")
    wait_until_loaded(page)
    # The bookmarked UTC range shows in local (Paris) time in the form.
    assert page.input_value("#filter-since") == "2025-03-01T01:00"
    assert page.input_value("#filter-until") == "2025-03-02T01:00"
    assert set(row_ids(page)) == {event.id for event in stored.history}

    page.check("input[name='type'][value='accident']")
    page.select_option("#filter-limit", "10")
    submit_filters(page, rows=10)
    query = parse_qs(urlsplit(page.url).query)
    assert query["type"] == ["accident"]
    assert query["limit"] == ["10"]
    first_page = row_ids(page)
    assert set(page.locator("#event-rows tr").evaluate_all("r => r.map(x => x.dataset.type)")) == {
        "accident"
    }
    assert page.inner_text("#page-number") == "Page 1"
    assert page.is_disabled("#page-prev")

    turn_page(page, "#page-next", 2)
    second_page = row_ids(page)
    accidents = ids_of(stored.history, EventType.ACCIDENT)
    assert len(second_page) == len(accidents) - 10
    assert set(first_page) | set(second_page) == accidents
    assert page.is_disabled("#page-next")

    turn_page(page, "#page-prev", 1)
    assert row_ids(page) == first_page

    page.select_option("#filter-status", "active")
    submit_filters(page, rows=ACTIVE_ACCIDENTS)
    active = ids_of(stored.history, EventType.ACCIDENT, EventStatus.ACTIVE)
    assert set(row_ids(page)) == active

    # Back returns to the previous filters, Forward to these again.
    page.go_back()
    page.wait_for_function("() => !location.search.includes('status=')")
    wait_until_loaded(page)
    assert page.input_value("#filter-status") == ""
    assert row_ids(page) == first_page
    page.go_forward()
    page.wait_for_function("() => location.search.includes('status=active')")
    wait_until_loaded(page)
    assert set(row_ids(page)) == active

    # A bookmark of this view gives the same filters and rows.
    page.reload()
    wait_until_loaded(page)
    assert page.is_checked("input[name='type'][value='accident']")
    assert not page.is_checked("input[name='type'][value='hazard']")
    assert page.input_value("#filter-status") == "active"
    assert set(row_ids(page)) == active
    screenshot(page, "history-desktop")
    assert view.errors == []


def test_history_exports_download_the_filtered_events(
    stored: StoredEvents, web: Callable[..., WebPage]
) -> None:
    view = web()
    page = view.page
    view.open(f"/history?{history_day_query()}&type=traffic_jam&type=hazard")
    wait_until_loaded(page)
    expected = ids_of(stored.history, EventType.TRAFFIC_JAM) | ids_of(
        stored.history, EventType.HAZARD
    )
    assert set(row_ids(page)) == expected

    with page.expect_download() as csv_download:
        page.click("#export-csv")
    csv_path = csv_download.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(csv_path).read_text(encoding="utf-8"))))
    assert {row["id"] for row in rows} == expected
    assert {row["type"] for row in rows} == {"traffic_jam", "hazard"}

    with page.expect_download() as geojson_download:
        page.click("#export-geojson")
    collection = orjson.loads(Path(geojson_download.value.path()).read_bytes())
    assert collection["type"] == "FeatureCollection"
    assert {feature["properties"]["id"] for feature in collection["features"]} == expected
    assert view.errors == []


def test_history_row_opens_its_details_and_errors_are_shown(
    stored: StoredEvents, web: Callable[..., WebPage]
) -> None:
    view = web()
    page = view.page
    jam = next(e for e in stored.history if e.type is EventType.TRAFFIC_JAM)
    view.open(f"/history?{history_day_query()}&type=traffic_jam")
    wait_until_loaded(page)
    page.focus(f"tr[data-event-id='{jam.id}'] .row-open")
    page.keyboard.press("Enter")
    dialog = page.locator("#event-dialog")
    dialog.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    text = dialog.inner_text()
    assert jam.id in text
    assert "12.5 km/h" in text
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
    # Focus goes back to the row the details came from.
    assert page.evaluate("document.activeElement.closest('tr').dataset.eventId") == jam.id

    page.click(f"tr[data-event-id='{jam.id}'] td:nth-child(4)")
    dialog.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
    page.click("#event-dialog-close")

    view.open("/history?since=2001-01-01T00:00:00Z&until=2001-01-02T00:00:00Z")
    wait_until_loaded(page)
    assert page.inner_text("#results-status") == "No event matches these filters."
    assert row_ids(page) == []

    view.open("/history?bbox=4,49,not-a-number")
    page.wait_for_selector("#results-status[data-state='error']", timeout=UI_TIMEOUT_MS)
    assert "bbox" in page.inner_text("#results-status")
    assert page.is_visible("#results-retry")
    # The API's 400 answer is logged by the browser itself; nothing else may be.
    assert all("400" in error for error in view.errors)


def test_history_speaks_french_after_the_switch(
    stored: StoredEvents, web: Callable[..., WebPage], screenshot: Callable[[Page, str], Path]
) -> None:
    view = web(PHONE)
    page = view.page
    view.open(f"/history?{history_day_query()}&type=traffic_jam&limit=10")
    wait_until_loaded(page)
    assert page.inner_text("h1") == "Event history"
    screenshot(page, "history-phone")

    page.click(".lang-button[data-lang='fr']")
    page.wait_for_function("() => document.documentElement.lang == 'fr'")
    assert page.inner_text("h1") == "Historique des événements"
    assert page.get_attribute(".lang-button[data-lang='fr']", "aria-pressed") == "true"
    types = page.locator("#event-rows td.type").all_inner_texts()
    assert types and set(types) == {"Embouteillage"}
    assert page.inner_text("#page-number") == "Page 1"
    assert "événements" in page.inner_text("#results-status")
    # The choice is remembered by the next page.
    view.open("/zones")
    page.wait_for_function("() => document.documentElement.lang == 'fr'")
    assert page.inner_text("h1") == "Zones"
    assert page.inner_text("#occupancy-title") == "Qui est dedans"
    view.open("/stats")
    page.wait_for_selector("#stats-status[data-state='ready']", timeout=UI_TIMEOUT_MS)
    assert page.inner_text("#summary-rows tr[data-type='traffic_jam'] th") == "Embouteillage"
    labels = page.evaluate("() => Chart.getChart('summary-chart').data.labels")
    assert "Embouteillage" in labels
    screenshot(page, "stats-phone-fr")
    assert view.errors == []


# --- Zones ------------------------------------------------------------------------------------


def test_zones_page_lists_zones_and_counts_a_vehicle_entering(
    system: Settings, web: Callable[..., WebPage], screenshot: Callable[[Page, str], Path]
) -> None:
    settings = system
    suffix = str(time.time_ns() % 10**8)
    zone_id, station = f"web-popup-{suffix}", f"web-car-{suffix}"
    # Markup in a name must show as text, never run.
    name = f"<b>Pop-up</b> site {suffix}"
    popup = square_zone(zone_id, name, POPUP_LAT, POPUP_LON, half_lat=0.002, half_lon=0.003)
    assert zones_request(settings, "POST", "", popup).status == 201
    try:
        view = web()
        page = view.page
        view.open("/zones")
        row = page.locator(f"tr[data-zone-id='{zone_id}']")
        row.wait_for(timeout=UI_TIMEOUT_MS)
        assert row.locator("th").inner_text() == name
        assert row.locator(".zone-count").inner_text() == "0"
        for shipped in SHIPPED_ZONE_NAMES:
            assert page.locator("#zone-rows th", has_text=shipped).count() == 1
        # Every zone's count is the API's.
        for zone in api_get(site_url(settings), "/api/zones")["features"]:
            ident = zone["properties"]["id"]
            count = api_get(site_url(settings), f"/api/zones/{ident}/occupancy")["count"]
            assert page.inner_text(f"tr[data-zone-id='{ident}'] .zone-count") == str(count)

        # The vehicle drives in while the page is open: the next refresh shows it.
        with connected(fleet_endpoint(settings)) as car:
            report_until_stored(
                settings,
                car,
                station,
                (POPUP_LAT, POPUP_LON),
                lambda events: any(event["type"] == "zone_enter" for event in events),
                "the vehicle's zone entry",
                10,
            )
        page.wait_for_function(
            f"() => document.querySelector(\"tr[data-zone-id='{zone_id}'] .zone-count\")"
            ".textContent == '1'",
            timeout=(ZONES_REFRESH_S + 5) * 1000,
        )
        assert row.locator(f"li[data-station-id='{station}']").count() == 1

        # A hidden tab stops polling and says so; visible again, it refreshes at once.
        set_hidden = """hidden => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
        page.evaluate(set_hidden, True)
        assert page.inner_text("#zones-updated") == "Updates paused while the page is hidden."
        page.evaluate(set_hidden, False)
        page.wait_for_function(
            "() => document.getElementById('zones-updated').textContent.startsWith('Updated')"
        )

        screenshot(page, "zones-desktop")

        # Choosing the zone in the table highlights it on the map.
        row.locator("button").click()
        assert row.locator("button").get_attribute("aria-pressed") == "true"
        page.wait_for_selector(".leaflet-zones-pane path[stroke-width='4']")

        phone = web(PHONE)
        phone.open("/zones")
        phone.page.locator(f"tr[data-zone-id='{zone_id}'] .zone-count").wait_for()
        screenshot(phone.page, "zones-phone")
        assert view.errors == []
        assert phone.errors == []
    finally:
        zones_request(settings, "DELETE", f"/{zone_id}")


# --- Statistics -------------------------------------------------------------------------------


def chart_total(page: Page, canvas_id: str) -> int:
    """The sum of every value the Chart.js chart on this canvas draws."""
    total: int = page.evaluate(
        """id => Chart.getChart(document.getElementById(id)).data.datasets
            .flatMap(set => set.data).reduce((sum, n) => sum + n, 0)""",
        canvas_id,
    )
    return total


def painted_pixels(page: Page, canvas_id: str) -> int:
    painted: int = page.evaluate(
        """id => {
            const canvas = document.getElementById(id);
            const pixels = canvas.getContext("2d")
                .getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) count++;
            return count;
        }""",
        canvas_id,
    )
    return painted


def shown_period(page: Page) -> str:
    status = page.locator("#stats-status[data-state='ready']")
    status.wait_for(timeout=UI_TIMEOUT_MS)
    since, until = status.get_attribute("data-since"), status.get_attribute("data-until")
    assert since and until
    return f"since={since}&until={until}"


def summary_table(page: Page) -> dict[str, dict[str, int]]:
    cells: list[dict[str, str]] = page.locator("#summary-rows td").evaluate_all(
        "cells => cells.map(td => ({type: td.parentElement.dataset.type,"
        " status: td.dataset.status, count: td.dataset.count}))"
    )
    table: dict[str, dict[str, int]] = {}
    for cell in cells:
        table.setdefault(cell["type"], {})[cell["status"]] = int(cell["count"])
    return table


def wait_until_no_event_arrives(settings: Settings, quiet_s: float = 2.0) -> None:
    """Wait until the stored events stop changing, so the page and the API count the same."""
    deadline = time.monotonic() + 60.0
    last = api_get(site_url(settings), "/api/stats/summary")
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        assert time.monotonic() < deadline, "events kept arriving for a minute"
        time.sleep(0.25)
        now = api_get(site_url(settings), "/api/stats/summary")
        if now != last:
            last, quiet_since = now, time.monotonic()


def test_stats_page_draws_the_api_figures(
    system: Settings,
    stored: StoredEvents,
    web: Callable[..., WebPage],
    screenshot: Callable[[Page, str], Path],
) -> None:
    # Traces replayed by earlier tests may still be landing; their events would move the counts.
    wait_until_no_event_arrives(system)
    view = web()
    page = view.page
    view.open("/stats")
    period = shown_period(page)

    summary = api_get(site_url(system), f"/api/stats/summary?{period}")
    shown = summary_table(page)
    for kind, statuses in summary["by_type_and_status"].items():
        assert {s: shown[kind][s] for s in statuses} == statuses
        assert shown[kind]["total"] == summary["by_type"][kind]
    assert summary["by_type"]["accident"] >= RECENT_COUNTS[EventType.ACCIDENT]
    total_cell = page.locator("#summary-total td[data-status='total']")
    assert total_cell.get_attribute("data-count") == str(summary["total"])
    # Shown with the English thousands separator.
    assert total_cell.inner_text() == f"{summary['total']:,}"
    page.wait_for_function("() => Chart.getChart('summary-chart') !== undefined")
    assert chart_total(page, "summary-chart") == summary["total"]
    assert painted_pixels(page, "summary-chart") > 0
    assert f"{summary['total']:,}" in page.inner_text("#summary-text")

    series = api_get(site_url(system), f"/api/stats/timeseries?bucket=hour&{period}")
    assert chart_total(page, "timeseries-chart") == sum(b["total"] for b in series["buckets"])
    assert painted_pixels(page, "timeseries-chart") > 0
    assert page.locator("#timeseries-table tbody tr").count() == len(series["buckets"])

    hotspots = api_get(site_url(system), f"/api/stats/hotspots?limit=200&{period}")["cells"]
    listed = page.locator("#hotspot-list li[data-count]")
    listed.first.wait_for(timeout=UI_TIMEOUT_MS)
    counts = [int(n) for n in listed.evaluate_all("items => items.map(li => li.dataset.count)")]
    assert counts == [cell["count"] for cell in hotspots][: len(counts)]
    page.wait_for_selector(".leaflet-overlay-pane path.leaflet-interactive")
    screenshot(page, "stats-desktop")

    # Accidents only: the busiest square is the hotspot of the accidents stored above.
    page.select_option("#hotspot-type", "accident")
    page.wait_for_function(
        "() => new URLSearchParams(location.search).get('hotspot') === 'accident'"
    )
    accidents = api_get(site_url(system), f"/api/stats/hotspots?type=accident&limit=200&{period}")[
        "cells"
    ]
    page.wait_for_function(
        f"() => document.querySelector('#hotspot-list li')?.dataset.count === "
        f"'{accidents[0]['count']}'",
        timeout=UI_TIMEOUT_MS,
    )
    assert accidents[0]["count"] >= RECENT_COUNTS[EventType.ACCIDENT]

    # A longer period counts per day; the figures are the API's for that period.
    page.select_option("#stats-range", "7d")
    assert page.input_value("#stats-bucket") == "day"
    page.wait_for_function(
        "() => document.getElementById('stats-status').dataset.state === 'ready'"
        " && new URLSearchParams(location.search).get('range') === '7d'"
    )
    period = shown_period(page)
    week = api_get(site_url(system), f"/api/stats/timeseries?bucket=day&{period}")
    assert len(week["buckets"]) in (7, 8)
    page.wait_for_function(
        f"() => document.querySelectorAll('#timeseries-table tbody tr').length == "
        f"{len(week['buckets'])}"
    )
    assert chart_total(page, "timeseries-chart") == sum(b["total"] for b in week["buckets"])

    phone = web(PHONE)
    phone.open("/stats")
    shown_period(phone.page)
    phone.page.locator("#hotspot-list li").first.wait_for(timeout=UI_TIMEOUT_MS)
    screenshot(phone.page, "stats-phone")
    assert view.errors == []
    assert phone.errors == []
