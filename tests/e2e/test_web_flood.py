"""The live page under a flood of events: hundreds of zone crossings a second reach it over
BOSH, as PubSub notifications from the collector's account, while accidents are reported and
updated among them. The page must keep up, show the newest version of each event, count every
crossing, and keep its feed and map bounded (web/js/live.js)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from roadwatch.adapters.xmpp.connection import make_client, set_tcp_nodelay
from roadwatch.adapters.xmpp.stanza import event_element
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from tests.e2e.helpers import console_errors, site_url

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from roadwatch.settings import Settings

pytestmark = pytest.mark.e2e

RATE = 400.0  # zone crossings a second: beyond what the whole pipeline detects at full load
FLOOD_S = 5.0
ACCIDENTS = 3
VERSIONS = 4  # each accident is updated this many times among the crossings
SHOWN_DURING_FLOOD_S = 3.0  # an accident reported mid-flood -> its row in the feed
SETTLED_S = 5.0  # last publication -> the page shows the final state
FEED_ROWS_PER_KIND = 200  # web/js/live.js MAX_ROWS
IN_FLIGHT = 256  # publish requests in flight, as the collector allows
WAIT_S = 15.0
# South-west of the road network, inside its bounds but away from the other tests' spots.
LAT, LON, SPAN = 49.205, 3.965, 0.02

# Notes, in the page, when each feed row first appears (ms since the epoch).
ROW_OBSERVER = """
() => {
  window.__rowsSeen = {};
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      for (const node of mutation.addedNodes) {
        if (node.nodeType === 1 && node.matches("tr[data-event-id]")
            && !(node.dataset.eventId in window.__rowsSeen)) {
          window.__rowsSeen[node.dataset.eventId] = Date.now();
        }
      }
    }
  }).observe(document.getElementById("feed-rows"), { childList: true });
}
"""


def event(kind: EventType, n: int, run: str) -> Event:
    now = int(time.time() * 1000)
    crossing = kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
    station = f"flood-{run}-{n}"
    return Event(
        id=new_event_id(now, station, kind.value),
        type=kind,
        status=EventStatus.INSTANT if crossing else EventStatus.ACTIVE,
        version=1,
        started_ms=now,
        updated_ms=now,
        ended_ms=now if crossing else None,
        lat=LAT + (n * 37 % 100) / 100 * SPAN,
        lon=LON + (n * 61 % 100) / 100 * SPAN,
        cause_code=None if crossing else 2,
        station_ids=(station,),
        zone_id=f"flood-zone-{run}" if crossing else None,
        zone_name="Flood zone" if crossing else None,
        details={} if crossing else {"reporter_count": 1},
    )


class Flood:
    """What the collector's account publishes, and when (ms since the epoch)."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(3)
        self.crossings: list[Event] = []
        self.accidents: dict[str, Event] = {}  # id -> newest version
        self.first_reported: dict[str, float] = {}
        self.error: BaseException | None = None

    async def publish(self, settings: Settings) -> None:
        client = make_client(
            f"{settings.collector_jid}/flood-{self.run}",
            settings.xmpp_collector_password.get_secret_value(),
            ("xep_0060",),
            sm_window=5,
            allow_resume=False,
        )
        started = asyncio.ensure_future(client.wait_until("session_start", WAIT_S))
        client.connect(settings.xmpp_host, settings.xmpp_port)
        await started
        set_tcp_nodelay(client)
        pubsub: Any = client.plugin["xep_0060"]
        window = asyncio.Semaphore(IN_FLIGHT)
        service = settings.pubsub_service

        async def send(item: Event) -> None:
            async with window:
                await pubsub.publish(
                    service, item.type.pubsub_node, id=item.id, payload=event_element(item)
                )

        count = round(RATE * FLOOD_S)
        # Accidents are reported in the middle of the flood, then updated now and then.
        reports = {count // 2 + k: k for k in range(ACCIDENTS)}
        updates = {count // 2 + 40 * v + k: k for v in range(1, VERSIONS) for k in range(ACCIDENTS)}
        accident_ids: list[str] = []
        began = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tasks:
                for n in range(count):
                    await asyncio.sleep(max(0.0, began + n / RATE - time.monotonic()))
                    kind = EventType.ZONE_ENTER if n % 2 else EventType.ZONE_EXIT
                    crossing = event(kind, n, self.run)
                    self.crossings.append(crossing)
                    tasks.create_task(send(crossing))
                    if n in reports:
                        accident = event(EventType.ACCIDENT, n, self.run)
                        accident_ids.append(accident.id)
                        self.accidents[accident.id] = accident
                        self.first_reported[accident.id] = time.time() * 1000
                        tasks.create_task(send(accident))
                    if n in updates:
                        known = self.accidents[accident_ids[updates[n]]]
                        newer = known.next_version(
                            updated_ms=int(time.time() * 1000),
                            details={"reporter_count": known.version + 1},
                        )
                        self.accidents[newer.id] = newer
                        tasks.create_task(send(newer))
                # The first accident is cleared by the last publication.
                cleared = self.accidents[accident_ids[0]].next_version(
                    status=EventStatus.CLEARED, updated_ms=int(time.time() * 1000)
                )
                self.accidents[cleared.id] = cleared
                await send(cleared)
        finally:
            gone = client.disconnected
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone, WAIT_S)


@contextlib.contextmanager
def flooding(settings: Settings) -> Iterator[Flood]:
    """Publish the flood from a thread of its own, while the test drives the browser."""
    flood = Flood()

    def run() -> None:
        try:
            asyncio.run(flood.publish(settings))
        except BaseException as exc:  # reported by the test
            flood.error = exc

    thread = threading.Thread(target=run, name="flood", daemon=True)
    thread.start()
    try:
        yield flood
    finally:
        thread.join(FLOOD_S + 2 * WAIT_S)
    if flood.error is not None:
        raise AssertionError(f"publishing the flood failed: {flood.error!r}") from flood.error


def counter(page: Page, key: str) -> int:
    return int(re.sub(r"\D", "", page.locator(f"[data-counter='{key}']").inner_text()))


def settled_counters(page: Page) -> tuple[int, int]:
    """The accident and crossing counters once the node items read at load are all counted."""
    last = (-1, -1)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        now = (counter(page, "accident"), counter(page, "zone"))
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    pytest.fail("the counters kept changing before the flood")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 800})
    yield context
    context.close()


def test_a_flood_of_events_shows_the_newest_state_and_keeps_the_page_bounded(
    system: Settings, context: BrowserContext
) -> None:
    page = context.new_page()
    errors = console_errors(page)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{site_url(system)}/")
    page.wait_for_selector("#connection[data-state='live']", timeout=15_000)
    page.locator(".leaflet-roads-pane path").first.wait_for(state="attached", timeout=10_000)
    page.evaluate(ROW_OBSERVER)
    accidents_before, crossings_before = settled_counters(page)

    with flooding(system) as flood:
        pass
    published_at = time.monotonic()

    # Once the flood is over, within a bound: each accident's newest version, right counters.
    page.wait_for_function(
        """([ids, versions]) => ids.every((id, i) =>
            document.querySelector(`#feed-rows tr[data-event-id="${id}"]`)?.dataset.version
              === String(versions[i]))""",
        arg=[list(flood.accidents), [a.version for a in flood.accidents.values()]],
        timeout=SETTLED_S * 1000,
    )
    expected_crossings = crossings_before + len(flood.crossings)
    page.wait_for_function(
        "n => document.querySelector(\"[data-counter='zone']\").textContent.replace(/\\D/g, '')"
        " === String(n)",
        arg=expected_crossings,
        timeout=max(1.0, SETTLED_S - (time.monotonic() - published_at)) * 1000,
    )
    for accident in flood.accidents.values():
        row = page.locator(f"#feed-rows tr[data-event-id='{accident.id}']")
        assert row.get_attribute("data-status") == accident.status.value
    assert counter(page, "accident") == accidents_before + ACCIDENTS - 1  # one was cleared

    # The newest crossing comes on top of the crossings; the feed and the map stay bounded.
    latest = max(crossing.updated_ms for crossing in flood.crossings)
    newest = [crossing.id for crossing in flood.crossings if crossing.updated_ms == latest]
    page.wait_for_function(
        "ids => ids.includes(document.querySelector(\"#feed-rows tr[data-kind='zone']\")"
        "?.dataset.eventId)",
        arg=newest,
        timeout=max(1.0, SETTLED_S - (time.monotonic() - published_at)) * 1000,
    )
    assert page.locator("#feed-rows tr[data-kind='zone']").count() == FEED_ROWS_PER_KIND
    crossing_markers = page.locator(
        ".leaflet-marker-icon[data-type='zone_enter'], .leaflet-marker-icon[data-type='zone_exit']"
    )
    assert crossing_markers.count() <= FEED_ROWS_PER_KIND

    # Accidents reported in the middle of the flood were shown while it went on.
    seen: dict[str, float] = page.evaluate("() => window.__rowsSeen")
    delays = {
        accident_id: (seen[accident_id] - reported) / 1000 if accident_id in seen else None
        for accident_id, reported in flood.first_reported.items()
    }
    assert all(delay is not None and delay < SHOWN_DURING_FLOOD_S for delay in delays.values()), (
        delays
    )
    assert errors == []
