"""The live page in a real browser: events on the map and in the feed, details, languages,
reconnection after Prosody restarts, zone names that never turn into markup, the choice of kinds
shown, and the short feed of a phone."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h3
import pytest

from roadwatch.adapters.mqtt import BlockingPublisher
from roadwatch.domain.geo import haversine_m
from roadwatch.domain.zones import zone_from_feature
from tests.e2e.helpers import (
    accident_denm,
    api_events,
    api_get,
    connected,
    console_errors,
    fleet_endpoint,
    publish_cam,
    site_url,
    square_zone,
    zones_request,
)

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Dialog,
        Page,
        Position,
        ViewportSize,
    )

    from roadwatch.runner.prosody import Prosody
    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

LIVE_DEADLINE_S = 2.0  # DENM published -> visible in the feed and on the map
JAM_DEADLINE_S = 10.0
JAM_CLEARANCE_M = 1500.0
FEED_MAX_ROWS = 200  # web/js/live.js MAX_ROWS: the feed shows the newest rows only
RECONNECT_DEADLINE_S = 45.0  # Prosody back -> page live again -> a new event shown
ZONE_PICKUP_S = 15.0  # the gateway picks up a new zone within 5 s, then the car must cross it
XSS_NAME = "<img src=x onerror=alert(1)>"
CORNER: Position = {"x": 4, "y": 4}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 812}
PHONE_ROWS = 30  # feed rows a phone shows at first, and adds with each "Show more"
PHONE_PAGE_MAX_PX = 4_000

# Each test works in its own spot of a grid over the road network's area (so on screen), about
# 700 m apart: active events of one test never merge into another's (accidents merge within 200 m).
GRID_ROWS, GRID_COLUMNS = 12, 14
_places = itertools.count(time.time_ns() // 1_000_000 % (GRID_ROWS * GRID_COLUMNS))


def next_place() -> tuple[float, float]:
    n = next(_places) % (GRID_ROWS * GRID_COLUMNS)
    return 49.222 + (n % GRID_ROWS) * 0.0065, 3.962 + (n // GRID_ROWS) * 0.0105


@dataclass
class LivePage:
    """A live page in its own browser context, recording console errors and dialogs."""

    page: Page
    console_errors: list[str]
    dialogs: list[str] = field(default_factory=list)


def open_live(context: BrowserContext, settings: Settings) -> LivePage:
    page = context.new_page()
    live = LivePage(page, console_errors(page))

    def on_dialog(dialog: Dialog) -> None:
        live.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("pageerror", lambda error: live.console_errors.append(str(error)))
    page.on("dialog", on_dialog)
    page.goto(f"{site_url(settings)}/")
    page.wait_for_selector("#connection[data-state='live']", timeout=15_000)
    roads = page.locator(".leaflet-roads-pane path")
    roads.first.wait_for(state="attached", timeout=10_000)  # the road network is drawn
    return live


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (own storage), English, desktop-sized."""
    context = browser.new_context(locale="en-GB", viewport=DESKTOP)
    yield context
    context.close()


@pytest.fixture
def fleet(system: Settings) -> Iterator[BlockingPublisher]:
    """The simulator's fleet account, allowed to publish for any vehicle."""
    with connected(fleet_endpoint(system)) as publisher:
        yield publisher


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**9}"


def publish_operator_accident(fleet: BlockingPublisher, lat: float, lon: float) -> str:
    """One accident DENM from a road operator (station type 15): an accident at once
    (docs/contract/detection.md §4)."""
    station = unique("web-op")
    denm = accident_denm(station, lat, lon, int(time.time() * 1000), station_type=15)
    fleet.publish(f"vehicles/{station}/denm", denm, 1)
    fleet.flush(5)  # acknowledged by the broker
    return station


def feed_row_for_station(page: Page, station: str) -> Any:
    return page.locator("#feed-rows tr[data-event-id]", has_text=station)


def test_a_detected_accident_appears_in_the_feed_and_on_the_map_within_2_s(
    system: Settings, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    live = open_live(context, system)
    lat, lon = next_place()

    started = time.monotonic()
    station = publish_operator_accident(fleet, lat, lon)
    row = feed_row_for_station(live.page, station)
    row.wait_for(state="visible", timeout=LIVE_DEADLINE_S * 1000)
    event_id = row.get_attribute("data-event-id")
    marker = live.page.locator(f".leaflet-marker-icon[data-event-id='{event_id}']")
    marker.wait_for(state="attached", timeout=LIVE_DEADLINE_S * 1000)
    elapsed = time.monotonic() - started

    assert elapsed < LIVE_DEADLINE_S, f"shown {elapsed:.2f} s after the DENM"
    assert row.get_attribute("data-type") == "accident"
    assert row.get_attribute("data-status") == "active"
    assert "Accident" in row.inner_text()
    assert marker.get_attribute("data-type") == "accident"
    assert "Accident" in (marker.get_attribute("aria-label") or "")
    assert int(live.page.locator("[data-counter='accident']").inner_text()) >= 1
    assert live.console_errors == []


def place_clear_of_jams(site: str) -> tuple[float, float]:
    """A spot of the grid far from every active jam: cars joining one would only update it."""
    active = api_events(site, type="traffic_jam", status="active", limit="1000")
    for _ in range(GRID_ROWS * GRID_COLUMNS):
        lat, lon = next_place()
        if all(haversine_m(lat, lon, jam["lat"], jam["lon"]) > JAM_CLEARANCE_M for jam in active):
            return lat, lon
    pytest.fail("every spot of the test grid is near an active jam")


def test_a_traffic_jam_shows_its_extent_on_the_map(
    system: Settings, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    live = open_live(context, system)
    # Scenarios replayed earlier leave jams of their own (updated at most every 30 s).
    lat, lon = place_clear_of_jams(site_url(system))
    # At the centre of the jam cell holding that spot: 11 m apart, cars at a cell's edge would
    # sometimes fall in two cells and never make a jam.
    lat, lon = h3.cell_to_latlng(h3.latlng_to_cell(lat, lon, system.jam_cell_resolution))
    cars = [unique(f"web-jam{n}") for n in range(3)]

    # Three slow cars in one cell and direction: a jam (docs/contract/detection.md §5).
    deadline = time.monotonic() + JAM_DEADLINE_S
    jam_ids: list[str] = []
    while not jam_ids:
        if time.monotonic() > deadline:
            pytest.fail(f"no jam detected within {JAM_DEADLINE_S} s")
        for n, car in enumerate(cars):
            publish_cam(fleet, car, lat + (n - 1) * 0.00005, lon, speed=8.0, heading=90.0)
        time.sleep(0.5)
        jam_ids = [
            event["id"]
            for event in api_events(site_url(system), station=cars[0], type="traffic_jam")
            if event["status"] == "active"
        ]
    jam_id = jam_ids[0]

    jam_extent = live.page.locator(f"path.jam-extent[data-event-id='{jam_id}']")
    jam_extent.first.wait_for(state="attached", timeout=LIVE_DEADLINE_S * 1000)
    box = jam_extent.first.bounding_box()
    assert box is not None
    assert box["width"] > 2
    assert box["height"] > 2
    assert live.page.locator(f".leaflet-marker-icon[data-event-id='{jam_id}']").count() == 1
    jam_row = live.page.locator(f"#feed-rows tr[data-event-id='{jam_id}']")
    assert jam_row.get_attribute("data-type") == "traffic_jam"
    assert "vehicles" in jam_row.inner_text()
    assert live.console_errors == []


def test_clicking_an_event_shows_its_details(
    system: Settings, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    live = open_live(context, system)
    lat, lon = next_place()
    station = publish_operator_accident(fleet, lat, lon)
    row = feed_row_for_station(live.page, station)
    row.wait_for(state="visible", timeout=5_000)
    event_id = row.get_attribute("data-event-id")
    page = live.page

    # From the map: a click on the marker.
    marker = page.locator(f".leaflet-marker-icon[data-event-id='{event_id}']")
    page.locator("#map").scroll_into_view_if_needed()
    row.locator("button.show-on-map").click()  # pans the map to it (and opens the popup)
    page.locator(".leaflet-popup-close-button").click()
    marker.click()
    popup = page.locator(f".leaflet-popup .event-popup[data-event-id='{event_id}']")
    popup.wait_for(state="visible", timeout=2_000)
    text = popup.inner_text()
    assert "Accident" in text
    assert "Active" in text
    assert station in text
    assert "Started" in text

    # From the keyboard: the marker takes the focus and Enter opens the same details.
    page.locator(".leaflet-popup-close-button").click()
    popup.wait_for(state="detached", timeout=2_000)
    marker.focus()
    page.keyboard.press("Enter")
    popup.wait_for(state="visible", timeout=2_000)
    assert live.console_errors == []


def test_language_switch_to_french_translates_the_page_and_persists(
    system: Settings, context: BrowserContext
) -> None:
    live = open_live(context, system)
    page = live.page
    assert page.locator("h1").inner_text() == "Live road events"
    assert page.locator("html").get_attribute("lang") == "en"

    page.locator("button[data-lang='fr']").click()
    assert page.locator("h1").inner_text() == "Événements routiers en direct"
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("#connection").inner_text() == "En direct"
    assert page.locator("nav a[aria-current='page']").inner_text() == "En direct"
    assert page.locator("button[data-lang='fr']").get_attribute("aria-pressed") == "true"
    assert page.title() == "RoadWatch — événements routiers en direct"

    page.reload()
    page.wait_for_selector("#connection[data-state='live']", timeout=15_000)
    assert page.locator("h1").inner_text() == "Événements routiers en direct"
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("[data-i18n='live.counter.accident']").inner_text() == "Accidents en cours"
    assert live.console_errors == []


def test_the_page_reconnects_by_itself_after_prosody_restarts(
    system: Settings, prosody: Prosody, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: PLC0415

    live = open_live(context, system)
    page = live.page
    try:
        prosody.stop()
        page.wait_for_selector("#connection[data-state='offline']", timeout=15_000)
        assert "reconnecting" in page.locator("#connection").inner_text()
    finally:
        prosody.start()
    page.wait_for_selector("#connection[data-state='live']", timeout=RECONNECT_DEADLINE_S * 1000)

    # The gateway and collector reconnect on their own schedule: keep reporting new accidents
    # until one travels the whole way to this same page.
    deadline = time.monotonic() + RECONNECT_DEADLINE_S
    while True:
        lat, lon = next_place()
        station = publish_operator_accident(fleet, lat, lon)
        try:
            feed_row_for_station(page, station).wait_for(state="visible", timeout=5_000)
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                pytest.fail("no new event reached the page after Prosody restarted")
    assert page.locator("#connection").get_attribute("data-state") == "live"
    # Failed BOSH requests during the outage are logged by the browser; nothing else may be.
    unexpected = [
        text
        for text in live.console_errors
        if "502" not in text and "503" not in text and "request id" not in text
    ]
    assert unexpected == []


def test_a_zone_name_with_markup_stays_text_on_the_map_and_in_the_feed(
    system: Settings,
    context: BrowserContext,
    fleet: BlockingPublisher,
    screenshot: Callable[[Page, str], Path],
) -> None:
    # Inside the network's bounds (so on screen), south of the grid of next_place() and away
    # from the shipped zones.
    lat, lon = 49.2105, 4.095 + (time.time_ns() // 1000) % 10 * 0.001
    zone_id = unique("xss")
    feature = square_zone(zone_id, XSS_NAME, lat, lon, half_lat=0.005, half_lon=0.005)
    assert zones_request(system, "POST", "", feature).status == 201
    try:
        live = open_live(context, system)
        page = live.page
        zone = page.locator(f"path[data-zone-id='{zone_id}']")
        zone.wait_for(state="attached", timeout=5_000)
        # Near a corner: the crossing's marker will sit in the middle. Forced, because the
        # map pane, not the path, is what Playwright sees under the pointer.
        zone.hover(force=True, position=CORNER)
        tooltip = page.locator(".leaflet-tooltip", has_text=XSS_NAME)
        tooltip.wait_for(state="visible", timeout=2_000)
        assert tooltip.locator(".zone-label").inner_text() == f"Zone: {XSS_NAME}"
        assert "0 vehicles inside" in tooltip.inner_text()

        car = unique("web-xss")
        deadline = time.monotonic() + ZONE_PICKUP_S
        row = page.locator("#feed-rows tr[data-type='zone_enter']", has_text=car)
        while row.count() == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"no zone entry shown within {ZONE_PICKUP_S} s")
            publish_cam(fleet, car, lat, lon, speed=20.0, heading=90.0)
            time.sleep(0.5)
        assert XSS_NAME in row.inner_text()
        page.mouse.move(0, 0)
        tooltip.wait_for(state="detached", timeout=2_000)
        zone.hover(force=True, position=CORNER)
        assert "1 vehicle inside" in tooltip.inner_text()  # the zone's live counter
        row.locator("button.show-on-map").click()
        popup = page.locator(".leaflet-popup .event-popup")
        popup.wait_for(state="visible", timeout=2_000)
        assert XSS_NAME in popup.inner_text()

        assert page.locator("img[src='x']").count() == 0
        assert live.dialogs == []
        assert live.console_errors == []
    finally:
        zones_request(system, "DELETE", f"/{zone_id}")


def test_screenshots_of_the_live_page_on_desktop_and_phone(
    system: Settings,
    browser: Browser,
    fleet: BlockingPublisher,
    screenshot: Callable[[Page, str], Path],
) -> None:
    lat, lon = next_place()
    station = publish_operator_accident(fleet, lat, lon)
    for name, viewport in (("live-desktop", DESKTOP), ("live-phone", PHONE)):
        context = browser.new_context(locale="en-GB", viewport=viewport)
        try:
            live = open_live(context, system)
            feed_row_for_station(live.page, station).wait_for(state="visible", timeout=5_000)
            page = live.page
            # Readable on a phone: nothing wider than the screen, the map above the feed.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"]
            map_box = page.locator("#map").bounding_box()
            feed_box = page.locator(".feed-panel").bounding_box()
            assert map_box is not None
            assert feed_box is not None
            if viewport is PHONE:
                assert map_box["y"] + map_box["height"] <= feed_box["y"]
            else:
                assert map_box["x"] + map_box["width"] <= feed_box["x"]
            assert screenshot(page, name).stat().st_size > 0
            assert live.console_errors == []
        finally:
            context.close()


def point_in_a_zone(site: str) -> tuple[float, float]:
    """A point inside one of the site's zones: a car reporting there crosses into it at once."""
    for feature in api_get(site, "/api/zones")["features"]:
        zone = zone_from_feature(feature)
        min_lon, min_lat, max_lon, max_lat = zone.bbox
        lat, lon = (min_lat + max_lat) / 2, (min_lon + max_lon) / 2
        if zone.contains(lat, lon):
            return lat, lon
    pytest.fail("no zone of the site contains the middle of its own bounding box")


def kind_checkbox(page: Page, kind: str) -> Any:
    return page.locator(f"#kind-filter input[data-kind='{kind}']")


def test_hiding_zone_crossings_hides_their_rows_and_markers_and_survives_a_reload(
    system: Settings, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    site = site_url(system)
    live = open_live(context, system)
    page = live.page
    inside_zone = point_in_a_zone(site)
    accident_station = publish_operator_accident(fleet, *next_place())
    car = unique("web-filter")
    publish_cam(fleet, car, *inside_zone, speed=20.0, heading=90.0)

    accident_row = feed_row_for_station(page, accident_station)
    accident_row.wait_for(state="visible", timeout=5_000)
    crossing_row = page.locator("#feed-rows tr[data-kind='zone']", has_text=car)
    crossing_row.wait_for(state="visible", timeout=5_000)
    accident_id = accident_row.get_attribute("data-event-id")
    crossing_id = crossing_row.get_attribute("data-event-id")
    accident_marker = page.locator(f".leaflet-marker-icon[data-event-id='{accident_id}']")
    crossing_marker = page.locator(f".leaflet-marker-icon[data-event-id='{crossing_id}']")
    crossing_marker.wait_for(state="visible", timeout=2_000)
    zone_count = page.locator("[data-counter='zone']").inner_text()

    # From the keyboard: the zone crossings' checkbox takes the focus and Space unticks it.
    zone_box = kind_checkbox(page, "zone")
    assert zone_box.is_checked()
    assert page.get_by_role("group", name="Show on the map and in the feed").is_visible()
    zone_box.focus()
    page.keyboard.press("Space")
    assert not zone_box.is_checked()
    crossing_row.wait_for(state="hidden", timeout=2_000)
    crossing_marker.wait_for(state="hidden", timeout=2_000)
    assert accident_row.is_visible()
    assert accident_marker.is_visible()
    assert page.locator("#feed-rows tr[data-kind='zone']:visible").count() == 0
    assert page.locator("[data-counter='zone']").inner_text() == zone_count  # still the total

    # After a reload the choice holds, for the crossings loaded and for a new one arriving live.
    page.reload()
    page.wait_for_selector("#connection[data-state='live']", timeout=15_000)
    accident_row.wait_for(state="visible", timeout=5_000)
    assert not zone_box.is_checked()
    assert kind_checkbox(page, "accident").is_checked()
    second_car = unique("web-filter")
    publish_cam(fleet, second_car, *inside_zone, speed=20.0, heading=90.0)
    second_row = page.locator("#feed-rows tr[data-kind='zone']", has_text=second_car)
    second_row.wait_for(state="attached", timeout=5_000)
    second_id = second_row.get_attribute("data-event-id")
    second_marker = page.locator(f".leaflet-marker-icon[data-event-id='{second_id}']")
    second_marker.wait_for(state="attached", timeout=2_000)
    assert not second_row.is_visible()
    assert not second_marker.is_visible()
    assert page.locator("[data-counter='zone']").inner_text() != "0"

    # Ticked again, the crossings come back.
    zone_box.check()
    second_row.wait_for(state="visible", timeout=2_000)
    second_marker.wait_for(state="visible", timeout=2_000)
    assert live.console_errors == []


def test_hidden_accidents_are_not_announced_to_screen_readers(
    system: Settings, context: BrowserContext, fleet: BlockingPublisher
) -> None:
    live = open_live(context, system)
    page = live.page
    announcer = page.locator("#announcer")
    shown = publish_operator_accident(fleet, *next_place())
    page.wait_for_function(
        "station => document.getElementById('announcer').textContent.includes(station)",
        arg=shown,
        timeout=5_000,
    )

    kind_checkbox(page, "accident").uncheck()
    hidden = publish_operator_accident(fleet, *next_place())
    row = feed_row_for_station(page, hidden)
    row.wait_for(state="attached", timeout=5_000)  # announcements go with the row, at once
    assert not row.is_visible()
    assert hidden not in announcer.inner_text()
    assert live.console_errors == []


def settled_row_count(page: Page, quiet_s: float = 1.0, timeout_s: float = 15.0) -> int:
    """The number of feed rows once none has arrived for `quiet_s`.

    Events left by earlier tests may still be arriving (items of the alert nodes, the first
    page of history); counts compared before they settle would race them.
    """
    deadline = time.monotonic() + timeout_s
    count = page.locator("#feed-rows tr[data-event-id]").count()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = page.locator("#feed-rows tr[data-event-id]").count()
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return count
    raise AssertionError(f"the feed never settled: {count} rows and still changing")


def test_a_phone_shows_30_feed_rows_until_show_more_is_pressed(
    system: Settings,
    browser: Browser,
    fleet: BlockingPublisher,
    screenshot: Callable[[Page, str], Path],
) -> None:
    context = browser.new_context(locale="en-GB", viewport=PHONE)
    try:
        live = open_live(context, system)
        page = live.page
        stations = [publish_operator_accident(fleet, *next_place()) for _ in range(PHONE_ROWS + 5)]
        for station in stations:
            feed_row_for_station(page, station).wait_for(state="attached", timeout=5_000)
        visible_rows = page.locator("#feed-rows tr[data-event-id]:visible")
        total = settled_row_count(page)
        assert total > PHONE_ROWS

        assert visible_rows.count() == PHONE_ROWS
        # The newest first: the last accident reported is among the rows shown.
        assert feed_row_for_station(page, stations[-1]).is_visible()
        show_more = page.locator("#show-more")
        assert show_more.inner_text() == f"Show {min(PHONE_ROWS, total - PHONE_ROWS)} more"
        assert page.locator("#feed-count").inner_text() == f"{PHONE_ROWS} of {total} events shown"
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < PHONE_PAGE_MAX_PX, f"the page is {height} px tall"
        screenshot(page, "live-phone-show-more")

        show_more.click()
        assert visible_rows.count() == min(2 * PHONE_ROWS, total)
        assert feed_row_for_station(page, stations[0]).is_visible()
        if total <= 2 * PHONE_ROWS:
            assert not show_more.is_visible()

        # A desktop-sized window shows the newest rows up to the feed's length, without the
        # button (earlier tests may have left more events than that).
        page.set_viewport_size(DESKTOP)
        page.wait_for_function(
            "max => document.querySelectorAll('#feed-rows tr:not([hidden])').length"
            " === Math.min(max, document.querySelectorAll('#feed-rows tr').length)",
            arg=FEED_MAX_ROWS,
        )
        assert not show_more.is_visible()
        # The feed scrolls in its own box there, and nothing in it stretches the page.
        assert page.evaluate("document.documentElement.scrollHeight") <= DESKTOP["height"]
        assert live.console_errors == []
    finally:
        context.close()
