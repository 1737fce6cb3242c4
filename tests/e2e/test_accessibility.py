"""Every page audited by axe-core (WCAG 2.1 A and AA) in both languages and on desktop and phone,
with events shown, plus the keyboard paths through the header and the history page."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from roadwatch.adapters.mysql.connection import ConnectionPool
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.domain.events import Event, EventType
from tests.e2e.helpers import (
    accident_denm,
    api_events,
    connected,
    console_errors,
    fleet_endpoint,
    poll_until,
    site_url,
)
from tests.e2e.test_web_pages import make_event

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

# A test tool, installed by `npm install` in web/ and never served.
AXE_SOURCE = (
    Path(__file__).resolve().parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"
)
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING_IMPACTS = {"serious", "critical"}
TARGETS_SHOWN = 4

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 812}
NARROWEST: ViewportSize = {"width": 320, "height": 720}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}
LOCALES = {"en": "en-GB", "fr": "fr-FR"}
# Leaflet's own controls, named in the page's language.
ZOOM_IN = {"en": "Zoom in", "fr": "Zoomer"}
CLOSE_POPUP = {"en": "Close these details", "fr": "Fermer ces détails"}
UI_TIMEOUT_MS = 15_000

# A day of the past of its own: the history tests count every event of theirs.
AUDIT_DAY = datetime(2025, 2, 1, tzinfo=UTC)
# Away from the spots the live-page tests use (their grid and their zone), inside the network.
LIVE_ACCIDENT = (49.2150, 4.0100)
EVENT_STORED_S = 10.0


@dataclass(frozen=True)
class AuditData:
    """What the pages show during the audit."""

    history: list[Event]
    live_event_id: str


@pytest.fixture(scope="module")
def audit_data(running_system: Any) -> AuditData:
    """Past events of every type (history, statistics) and one live accident (live page)."""
    settings: Settings = running_system.settings
    suffix = str(time.time_ns())[-7:]
    kinds = [EventType.ACCIDENT, EventType.TRAFFIC_JAM, EventType.HAZARD, EventType.ZONE_ENTER]
    history = [
        make_event(
            f"a11y-{suffix}-{kind.value}",
            kind,
            AUDIT_DAY + timedelta(hours=n + 1),
            station=f"a11y-{suffix}-{n}",
        )
        for n, kind in enumerate(kinds)
    ]
    now = datetime.now(UTC)
    recent = [
        make_event(
            f"a11y-{suffix}-recent-{kind.value}",
            kind,
            now - timedelta(hours=3, minutes=n),
            station=f"a11y-recent-{suffix}-{n}",
        )
        for n, kind in enumerate(kinds)
    ]
    pool = ConnectionPool(settings, 1)
    try:
        EventStore(pool).upsert([*history, *recent])
    finally:
        pool.close()

    # The live page shows the active events: one accident reported by a road operator.
    station = f"a11y-op-{suffix}"
    with connected(fleet_endpoint(settings)) as fleet:
        denm = accident_denm(station, *LIVE_ACCIDENT, int(time.time() * 1000), station_type=15)
        fleet.publish(f"vehicles/{station}/denm", denm, 1)
        fleet.flush(5)  # acknowledged by the broker
    site = site_url(settings)
    found = poll_until(
        "the live accident's storage",
        lambda: api_events(site, station=station, status="active"),
        time.monotonic() + EVENT_STORED_S,
    )
    return AuditData(history, str(found[0]["id"]))


@pytest.fixture
def audit_context(browser: Browser) -> Iterator[Callable[[str, ViewportSize], BrowserContext]]:
    """Browser contexts that let axe-core in: the site's CSP forbids any script but its own."""
    contexts: list[BrowserContext] = []

    def new_context(lang: str, viewport: ViewportSize) -> BrowserContext:
        context = browser.new_context(
            bypass_csp=True,
            locale=LOCALES[lang],
            timezone_id="Europe/Paris",
            viewport=viewport,
            reduced_motion="reduce",  # no colour caught halfway through an animation
        )
        contexts.append(context)
        return context

    yield new_context
    for context in contexts:
        context.close()


def history_query() -> str:
    since = AUDIT_DAY.strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (AUDIT_DAY + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"since={since}&until={until}"


def wait_for_live(page: Page, data: AuditData) -> None:
    page.wait_for_selector("#connection[data-state='live']", timeout=UI_TIMEOUT_MS)
    page.locator(f"#feed-rows tr[data-event-id='{data.live_event_id}']").wait_for(
        timeout=UI_TIMEOUT_MS
    )
    page.locator(f".leaflet-marker-icon[data-event-id='{data.live_event_id}']").wait_for(
        state="attached", timeout=UI_TIMEOUT_MS
    )
    page.locator(".leaflet-roads-pane path").first.wait_for(state="attached", timeout=UI_TIMEOUT_MS)


def wait_for_history(page: Page, data: AuditData) -> None:
    page.locator(f"tr[data-event-id='{data.history[0].id}']").wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("#results-status:not([data-state='loading'])", timeout=UI_TIMEOUT_MS)


def wait_for_stats(page: Page, data: AuditData) -> None:
    page.wait_for_selector("#stats-status[data-state='ready']", timeout=UI_TIMEOUT_MS)
    page.locator("#hotspot-list li").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => Chart.getChart('summary-chart') && Chart.getChart('timeseries-chart')",
        timeout=UI_TIMEOUT_MS,
    )


def wait_for_zones(page: Page, data: AuditData) -> None:
    page.locator("#zone-rows tr[data-zone-id]").first.wait_for(timeout=UI_TIMEOUT_MS)
    page.wait_for_selector("#zones-status:not([data-state='loading'])", timeout=UI_TIMEOUT_MS)


PAGES: dict[str, tuple[Callable[[], str], Callable[[Page, AuditData], None]]] = {
    "live": (lambda: "/", wait_for_live),
    "history": (lambda: f"/history?{history_query()}", wait_for_history),
    "stats": (lambda: "/stats", wait_for_stats),
    "zones": (lambda: "/zones", wait_for_zones),
}


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Run axe-core in the page with the WCAG 2.1 A and AA rules; return its violations."""
    # Two frames, so that whatever reacts to the last layout change (resize observers) has run.
    page.evaluate(
        "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
    )
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE_SOURCE))
    violations: list[dict[str, Any]] = page.evaluate(
        """tags => axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes:
            ["violations"]}).then(results => results.violations)""",
        WCAG_21_AA,
    )
    return violations


def summary(violations: list[dict[str, Any]]) -> str:
    """One readable line per violation: rule, impact, help, and where."""
    lines = []
    for violation in violations:
        targets = [" ".join(map(str, node["target"])) for node in violation["nodes"]]
        shown = ", ".join(targets[:TARGETS_SHOWN])
        more = f" (+{len(targets) - TARGETS_SHOWN} more)" if len(targets) > TARGETS_SHOWN else ""
        lines.append(
            f"{violation['id']} [{violation['impact']}] {violation['help']}: {shown}{more}"
        )
        # What axe measured on the first of them, such as a contrast ratio and its colours.
        first_failure = str(violation["nodes"][0].get("failureSummary") or "")
        lines.append("    " + " ".join(first_failure.split()))
    return "\n".join(lines)


def assert_no_serious_violations(page: Page, where: str) -> None:
    blocking = [v for v in axe_violations(page) if v["impact"] in BLOCKING_IMPACTS]
    assert not blocking, f"accessibility violations on {where}:\n{summary(blocking)}"


@pytest.mark.parametrize("viewport", VIEWPORTS)
@pytest.mark.parametrize("lang", LOCALES)
@pytest.mark.parametrize("name", PAGES)
def test_page_has_no_serious_accessibility_violation(
    system: Settings,
    audit_data: AuditData,
    audit_context: Callable[[str, ViewportSize], BrowserContext],
    name: str,
    lang: str,
    viewport: str,
) -> None:
    path, wait_until_shown = PAGES[name]
    page = audit_context(lang, VIEWPORTS[viewport]).new_page()
    errors = console_errors(page)
    page.goto(site_url(system) + path())
    wait_until_shown(page, audit_data)
    assert page.evaluate("document.documentElement.lang") == lang
    if name != "history":
        zoom_in = page.locator(".leaflet-control-zoom-in")
        assert zoom_in.get_attribute("aria-label") == ZOOM_IN[lang]
    assert_no_serious_violations(page, f"{name} ({lang}, {viewport})")
    if name == "history":
        # The details dialog, open over the page, is audited too.
        page.locator(f"tr[data-event-id='{audit_data.history[1].id}'] .row-open").click()
        page.locator("#event-dialog").wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert_no_serious_violations(page, f"{name} details ({lang}, {viewport})")
    if name == "live":
        # So is an event's popup on the map.
        feed_row = page.locator(f"#feed-rows tr[data-event-id='{audit_data.live_event_id}']")
        feed_row.locator("button.show-on-map").click()
        page.locator(".leaflet-popup .event-popup").wait_for(timeout=UI_TIMEOUT_MS)
        close = page.locator(".leaflet-popup-close-button")
        assert close.get_attribute("aria-label") == CLOSE_POPUP[lang]
        assert_no_serious_violations(page, f"{name} popup ({lang}, {viewport})")
    assert errors == []


# --- The keyboard -----------------------------------------------------------------------------


def focused(page: Page) -> dict[str, Any]:
    """What has the keyboard focus, and whether it is drawn as focused."""
    state: dict[str, Any] = page.evaluate(
        """() => {
            const el = document.activeElement;
            const style = getComputedStyle(el);
            const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
            return {
                id: el.id, tag: el.tagName.toLowerCase(), cls: String(el.className),
                type: el.getAttribute("type"), value: el.getAttribute("value"),
                labelledby: el.getAttribute("aria-labelledby"),
                href: el.getAttribute("href"), lang: el.dataset.lang || null,
                ring: outline || style.boxShadow !== "none",
            };
        }"""
    )
    return state


def tab_until(page: Page, reached: Callable[[dict[str, Any]], bool], presses: int = 40) -> None:
    """Press Tab until the focus is on what `reached` recognises, drawn as focused."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        state = focused(page)
        if reached(state):
            assert state["ring"], f"no visible focus on {state}"
            return
    pytest.fail(f"Tab never reached the control after {presses} presses")


def test_the_header_is_reachable_and_visibly_focused_from_the_keyboard(
    system: Settings,
    browser: Browser,
    audit_data: AuditData,
    screenshot: Callable[[Page, str], Path],
) -> None:
    context = browser.new_context(locale="en-GB", viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{site_url(system)}/history?{history_query()}")
        wait_for_history(page, audit_data)

        page.keyboard.press("Tab")
        first = focused(page)
        assert "skip-link" in first["cls"]
        assert first["ring"]
        skip_box = page.locator(".skip-link").bounding_box()
        assert skip_box is not None
        assert skip_box["y"] >= 0  # moved into view once focused
        screenshot(page, "a11y-skip-link-focused")
        page.keyboard.press("Enter")
        assert focused(page)["id"] == "main"

        # From the top again: every link of the navigation, then both languages.
        page.goto(f"{site_url(system)}/history?{history_query()}")
        wait_for_history(page, audit_data)
        reached: list[dict[str, Any]] = []
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.append(focused(page))
        nav_links = {item["href"] for item in reached if item["tag"] == "a"}
        assert {"/", "/history", "/stats", "/zones"} <= nav_links
        languages = [item for item in reached if item["lang"]]
        assert [item["lang"] for item in languages] == ["en", "fr"]
        unringed = [item for item in reached if not item["ring"]]
        assert unringed == []
    finally:
        context.close()


def test_history_filters_and_details_work_with_the_keyboard_only(
    system: Settings, browser: Browser, audit_data: AuditData
) -> None:
    context = browser.new_context(locale="en-GB", timezone_id="Europe/Paris", viewport=DESKTOP)
    try:
        page = context.new_page()
        errors = console_errors(page)
        page.goto(f"{site_url(system)}/history?{history_query()}")
        wait_for_history(page, audit_data)
        assert page.locator("#event-rows tr[data-event-id]").count() == len(audit_data.history)

        # Tab to "Hazard" and tick it with the space bar, then Tab to "Apply filters" and press
        # Enter.
        tab_until(page, lambda state: state["value"] == "hazard")
        page.keyboard.press("Space")
        assert page.is_checked("input[name='type'][value='hazard']")
        tab_until(page, lambda state: state["type"] == "submit")
        page.keyboard.press("Enter")
        page.wait_for_function("() => location.search.includes('type=hazard')")
        page.wait_for_function(
            "() => document.querySelectorAll('#event-rows tr[data-event-id]').length == 1"
        )
        hazard_event = next(e for e in audit_data.history if e.type is EventType.HAZARD)
        row = page.locator(f"tr[data-event-id='{hazard_event.id}']")
        assert row.count() == 1

        # On to the row's button: open its details, close them.
        tab_until(page, lambda state: "row-open" in state["cls"])
        page.keyboard.press("Enter")
        dialog = page.locator("#event-dialog")
        dialog.wait_for(state="visible", timeout=UI_TIMEOUT_MS)
        assert hazard_event.id in dialog.inner_text()
        assert focused(page)["id"] == "event-dialog-close"
        page.keyboard.press("Enter")
        dialog.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
        assert page.evaluate("document.activeElement.closest('tr').dataset.eventId") == (
            hazard_event.id
        )
        assert errors == []
    finally:
        context.close()


def test_a_table_wider_than_a_phone_scrolls_with_the_keyboard(
    system: Settings,
    browser: Browser,
    audit_data: AuditData,
    screenshot: Callable[[Page, str], Path],
) -> None:
    # The narrowest screen WCAG asks content to reflow to, in the longer language.
    context = browser.new_context(locale="fr-FR", viewport=NARROWEST)
    try:
        page = context.new_page()
        page.goto(f"{site_url(system)}/stats")
        wait_for_stats(page, audit_data)
        box = page.locator("#summary-table").locator("xpath=..")
        page.wait_for_function(
            "() => document.getElementById('summary-table').parentElement.tabIndex === 0"
        )
        assert box.evaluate("el => el.scrollWidth > el.clientWidth")
        assert box.get_attribute("role") == "region"
        assert (
            box.evaluate(
                "el => document.getElementById(el.getAttribute('aria-labelledby')).textContent"
            )
            == "Événements par type et par état, en chiffres"
        )

        tab_until(page, lambda state: state["labelledby"] == "summary-table-caption")
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => document.getElementById('summary-table').parentElement.scrollLeft > 0"
        )
        screenshot(page, "a11y-stats-narrow-fr")
    finally:
        context.close()

    # Where the table fits, its box is no extra stop for the Tab key.
    context = browser.new_context(locale="fr-FR", viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{site_url(system)}/stats")
        wait_for_stats(page, audit_data)
        box = page.locator("#summary-table").locator("xpath=..")
        assert box.evaluate("el => el.scrollWidth <= el.clientWidth")
        assert box.get_attribute("tabindex") is None
    finally:
        context.close()
