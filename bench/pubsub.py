"""PubSub from the collector to the browser: Prosody's publish throughput, and the live page.

Runs on private servers started with the runner's own classes and deploy/ configuration,
never on a running `make up`. Logged in as collector@ with the collector's session settings,
it publishes events as the collector does (XEP-0335 JSON, item id = event id, nodes configured
with the collector's NODE_CONFIG).

1. Prosody alone (with MariaDB): zone crossings published to a node first filled to its item
   limit, as a long-running node is. Each configuration is measured with Prosody's own PubSub
   item store and with the one deploy/prosody ships (mod_pubsub_batched_items): closed loop with
   1, 16 or 256 publishes in flight (the collector allows 256), with items not persisted, with
   anonymous BOSH subscribers polling as Strophe does, and open loop at the rate the collector
   publishes at 15,000 CAM/s. Printed: publishes/s, publish IQ round trip p50/p99, publish →
   subscriber p50/p99, Prosody's, MariaDB's and this process's CPU (% of a core, Prosody's
   also in ms per publish), and MariaDB's statements per publish.
2. The live page in headless Chromium, through Apache and BOSH as a user gets it, while zone
   crossings flood it at 330 and 500 events/s with an accident every half second: publish →
   the accident's row in the feed p50/p99 (a MutationObserver notes the time), the renderer's
   CPU and main-thread time, its frames longer than 50 ms, and whether the page shows the
   right state once the flood stops (counters, the newest crossing on top, cleared accidents).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError

from bench.system import cpu_seconds, load_average
from roadwatch.adapters.xmpp.connection import Connection
from roadwatch.adapters.xmpp.receiver import NODE_CONFIG, NODE_CONFIG_FORM
from roadwatch.adapters.xmpp.stanza import event_element
from roadwatch.domain.events import PUBSUB_NODES, Event, EventStatus, EventType, new_event_id
from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.runner.templates import deploy_dir
from roadwatch.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, CDPSession, Page

ITEMS = 2_000  # publishes measured per Prosody run
FILL = 1_000  # items published before measuring: deploy/prosody's pubsub_max_items
RATE_S = 8.0  # duration of an open-loop Prosody run
OPERATING_RATE = 330.0  # events/s the collector publishes at 15,000 CAM/s (mostly crossings)
PAGE_RATES = (330.0, 500.0)
PAGE_FLOOD_S = 20.0
PROBE_INTERVAL_S = 0.5  # an accident among the crossings this often
PAGE_TIMEOUT_S = 10.0  # a probe not shown by then counts as missing
SETTLE_S = 3.0  # after the flood, before the page's state is checked
IQ_TIMEOUT_S = 60.0
DELIVERY_GRACE_S = 10.0  # after the last publish, for the subscribers to get the rest
BOSH_WAIT_S = 30
STROPHE_IDLE_S = 0.1  # Strophe opens its next empty BOSH request on its 100 ms idle tick
BOSH_NS = "http://jabber.org/protocol/httpbind"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
PUBSUB_EVENT_NS = "http://jabber.org/protocol/pubsub#event"
ITEM_STORE_MODULE = "mod_pubsub_batched_items.lua"
# MariaDB's statement counters (SHOW GLOBAL STATUS), per publish.
SQL_COUNTERS = ("Com_select", "Com_insert", "Com_delete", "Com_delete_multi", "Com_commit")
# Inside the road network's bounds (so on screen), clear of the shipped zones' labels.
AREA_LAT, AREA_LON, AREA_SPAN = 49.23, 3.98, 0.08
CHROMIUM = Path("/usr/bin/chromium")

# Notes, in the page, when each feed row and each map marker of an event first appears
# (ms since the epoch), and the frames that took longer than 50 ms (without drawing frames of
# its own: an animation-frame loop would keep the page busy by itself).
_PAGE_PROBE = """
() => {
  window.__bench = { rows: {}, markers: {}, long: [] };
  const seen = window.__bench;
  const note = (node) => {
    if (node.nodeType !== 1) return;
    const found = node.matches("[data-event-id]") ? [node]
      : node.querySelectorAll("[data-event-id]");
    for (const el of found) {
      const book = el.tagName === "TR" ? seen.rows : el.classList.contains("leaflet-marker-icon")
        ? seen.markers : null;
      if (book && !(el.dataset.eventId in book)) book[el.dataset.eventId] = Date.now();
    }
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      if (m.type === "attributes") note(m.target);
      else m.addedNodes.forEach(note);
    }
  }).observe(document.body, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-event-id"],
  });
  const type = PerformanceObserver.supportedEntryTypes.includes("long-animation-frame")
    ? "long-animation-frame" : "longtask";
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) seen.long.push(entry.duration);
  }).observe({ type });
}
"""
_PAGE_STATE = """
() => {
  const counter = (key) => document.querySelector(`[data-counter="${key}"]`).textContent;
  const rows = [...document.querySelectorAll("#feed-rows tr[data-event-id]")];
  return {
    accidents: counter("accident"), crossings: counter("zone"), rows: rows.length,
    first: rows.find((row) => row.dataset.kind === "zone")?.dataset.eventId ?? null,
    cleared: rows.filter((row) => row.dataset.status === "cleared").map((r) => r.dataset.eventId),
    markers: document.querySelectorAll(".leaflet-marker-icon[data-event-id]").length,
    nodes: document.getElementsByTagName("*").length,
  };
}
"""


@dataclass(frozen=True)
class Run:
    """One measurement: node configuration, subscribers, and closed- or open-loop publishing."""

    label: str
    config: Mapping[str, str] = field(default_factory=dict)  # over NODE_CONFIG
    subscribers: int = 0
    concurrency: int = 256
    rate: float | None = None  # events/s (open loop); None: as fast as `concurrency` allows


RUNS = (
    Run("1 in flight", concurrency=1),
    Run("16 in flight", concurrency=16),
    Run("256 in flight"),
    Run("256 in flight, max_items 100", {"pubsub#max_items": "100"}),
    Run("256 in flight, items not persisted", {"pubsub#persist_items": "0"}),
    Run("256 in flight, 1 BOSH subscriber", subscribers=1),
    Run("256 in flight, 5 BOSH subscribers", subscribers=5),
    Run(f"{OPERATING_RATE:.0f}/s, 2 BOSH subscribers", subscribers=2, rate=OPERATING_RATE),
    Run(f"{OPERATING_RATE:.0f}/s, 10 BOSH subscribers", subscribers=10, rate=OPERATING_RATE),
)


@dataclass
class Result:
    """What one run measured (milliseconds for latencies, percent of a core for CPU)."""

    published: int
    elapsed_s: float
    round_trips: list[float]
    deliveries: list[float]
    missing: int
    prosody_cpu_s: float
    mariadb_cpu_s: float
    own_cpu_s: float
    sql: dict[str, float]


def percentile(samples: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * share + 0.5) - 1))]


def describe(samples: list[float]) -> str:
    if not samples:
        return "—"
    return f"p50 {statistics.median(samples):6.0f} p99 {percentile(samples, 0.99):6.0f}"


def event_at(n: int, run_id: str, kind: EventType) -> Event:
    """Event `n` of a run: a zone crossing (a new id each time), or an accident."""
    now = int(time.time() * 1000)
    station = f"bench-{run_id}-{n}"
    crossing = kind in (EventType.ZONE_ENTER, EventType.ZONE_EXIT)
    return Event(
        id=new_event_id(now, station, kind.value),
        type=kind,
        status=EventStatus.INSTANT if crossing else EventStatus.ACTIVE,
        version=1,
        started_ms=now,
        updated_ms=now,
        ended_ms=now if crossing else None,
        lat=AREA_LAT + (n * 7919 % 1000) / 1000 * AREA_SPAN / 2,
        lon=AREA_LON + (n * 104729 % 1000) / 1000 * AREA_SPAN,
        cause_code=None if crossing else 2,
        station_ids=(station,),
        zone_id="bench-zone" if crossing else None,
        zone_name="Bench zone" if crossing else None,
        details={"station_type": 5} if crossing else {"reporter_count": 2},
    )


# -- servers --------------------------------------------------------------------------------


@dataclass
class Servers:
    """The private servers of a benchmark, sharing one run folder."""

    settings: Settings
    layout: RunLayout
    mariadb: MariaDB
    prosody: Prosody
    started: list[Any] = field(default_factory=list)

    def start(self, part: Any) -> None:
        part.start()
        self.started.append(part)

    def stop(self, part: Any) -> None:
        part.stop()
        self.started.remove(part)


@contextlib.contextmanager
def private_servers() -> Iterator[Servers]:
    """A private MariaDB (started) and Prosody (not yet) on free ports, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="rw-bench-pubsub-"))
    root.chmod(0o755)  # the servers run as their own users
    settings = private_settings(root)
    layout = RunLayout(root)
    layout.ensure()
    servers = Servers(settings, layout, MariaDB(settings, layout), Prosody(settings, layout))
    try:
        servers.start(servers.mariadb)
        yield servers
    finally:
        for part in reversed(servers.started):
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others
                print(f"  could not stop {part.name}: {exc}")
        if not os.environ.get("ROADWATCH_KEEP_BENCH_RUN"):
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def prosody_with(servers: Servers, item_store: str) -> Iterator[Prosody]:
    """Run Prosody with deploy/prosody's item store ("batched") or its own ("prosody")."""
    modules = deploy_dir() / "prosody" / "modules"
    saved = os.environ.get("ROADWATCH_PROSODY_MODULES_DIR")
    if item_store == "prosody":
        # The same modules, but the item store module does nothing: Prosody keeps its own.
        copy = servers.layout.root / "modules-without-batched-items"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(modules, copy)
        (copy / ITEM_STORE_MODULE).write_text("-- Prosody's own item store (bench/pubsub.py).\n")
        for path in (copy, *copy.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.environ["ROADWATCH_PROSODY_MODULES_DIR"] = str(copy)
    try:
        servers.start(servers.prosody)
        yield servers.prosody
    finally:
        if servers.prosody in servers.started:
            servers.stop(servers.prosody)
        if saved is None:
            os.environ.pop("ROADWATCH_PROSODY_MODULES_DIR", None)
        else:
            os.environ["ROADWATCH_PROSODY_MODULES_DIR"] = saved


# -- the collector's side -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def collector_session(settings: Settings) -> AsyncIterator[ClientXMPP]:
    """A session as collector@ with the collector's own connection settings."""
    connection = Connection(
        jid=f"{settings.collector_jid}/bench",
        password=settings.xmpp_collector_password.get_secret_value(),
        host=settings.xmpp_host,
        port=settings.xmpp_port,
        plugins=("xep_0004", "xep_0060"),
        presence=True,
    )

    async def on_online(client: ClientXMPP, resumed: bool) -> None:
        await asyncio.Event().wait()

    session = asyncio.create_task(connection.run(on_online))
    try:
        yield await connection.wait_online(30)
    finally:
        connection.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session, 10)


async def create_node(
    client: ClientXMPP, service: str, node: str, config: Mapping[str, str]
) -> None:
    """Create `node` with the collector's configuration, changed by `config`."""
    forms: Any = client.plugin["xep_0004"]
    form = forms.make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=NODE_CONFIG_FORM)
    for var, value in {**NODE_CONFIG, **config}.items():
        form.add_field(var=var, value=value)
    pubsub: Any = client.plugin["xep_0060"]
    try:
        await pubsub.create_node(service, node, config=form, timeout=30)
    except IqError as exc:
        if exc.iq["error"]["condition"] != "conflict":
            raise


@dataclass
class Publishing:
    """How to publish: `concurrency` IQs in flight at most, at `rate` events/s if given."""

    concurrency: int = 256
    rate: float | None = None
    node: str | None = None  # instead of each event's own node


async def publish_all(
    client: ClientXMPP,
    service: str,
    events: Sequence[Callable[[], Event]],
    how: Publishing,
) -> tuple[dict[str, float], list[float]]:
    """Publish the events, each made as it is sent (its time is then); return when each was
    sent (monotonic) and each IQ's round trip (ms)."""
    pubsub: Any = client.plugin["xep_0060"]
    sent: dict[str, float] = {}
    round_trips: list[float] = []
    window = asyncio.Semaphore(how.concurrency)
    began = time.monotonic()
    rate, node = how.rate, how.node

    async def one(n: int, make: Callable[[], Event]) -> None:
        if rate is not None:
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
        async with window:
            event = make()
            start = time.monotonic()
            sent[event.id] = start
            await pubsub.publish(
                service,
                node or event.type.pubsub_node,
                id=event.id,
                payload=event_element(event),
                timeout=IQ_TIMEOUT_S,
            )
            round_trips.append((time.monotonic() - start) * 1000)

    async with asyncio.TaskGroup() as tasks:
        for n, make in enumerate(events):
            tasks.create_task(one(n, make))
    return sent, round_trips


def made(kind: EventType, n: int, run_id: str) -> Callable[[], Event]:
    return functools.partial(event_at, n, run_id, kind)


# -- a browser-like BOSH subscriber ----------------------------------------------------------


class BoshSubscriber:
    """An anonymous BOSH session subscribed to a node, polling as the live page's Strophe."""

    def __init__(self, http: httpx.AsyncClient, url: str, settings: Settings) -> None:
        self._http = http
        self._url = url
        self._domain = f"anon.{settings.xmpp_domain}"
        self._service = settings.pubsub_service
        self._rid = int.from_bytes(os.urandom(4), "big")
        self._sid = ""
        self.seen: dict[str, float] = {}  # item id -> when it arrived (time.monotonic())
        self._task: asyncio.Task[None] | None = None

    async def _post(self, *children: str, **attributes: str) -> ET.Element:
        self._rid += 1
        attrs = {"rid": str(self._rid), "xmlns": BOSH_NS, **attributes}
        if self._sid:
            attrs["sid"] = self._sid
        head = " ".join(f"{name}='{value}'" for name, value in attrs.items())
        answer = await self._http.post(
            self._url,
            content=f"<body {head}>{''.join(children)}</body>",
            headers={"Content-Type": "text/xml; charset=utf-8"},
        )
        answer.raise_for_status()
        return ET.fromstring(answer.content)

    async def start(self, node: str) -> None:
        """Log in anonymously, bind, subscribe to `node`, and start polling."""
        xbosh = {"xmlns:xmpp": "urn:xmpp:xbosh", "xmpp:version": "1.0"}
        first = await self._post(to=self._domain, wait=str(BOSH_WAIT_S), hold="1", **xbosh)
        self._sid = first.get("sid", "")
        await self._post(f"<auth xmlns='{SASL_NS}' mechanism='ANONYMOUS'/>")
        await self._post(to=self._domain, **{"xmpp:restart": "true", **xbosh})
        bound = await self._post(f"<iq type='set' id='bind'><bind xmlns='{BIND_NS}'/></iq>")
        jid = bound.find(f".//{{{BIND_NS}}}jid")
        if jid is None or not jid.text:
            raise RuntimeError("BOSH bind failed")
        subscribe = (
            f"<iq type='set' id='sub' to='{self._service}'><pubsub xmlns='{PUBSUB_NS}'>"
            f"<subscribe node='{node}' jid='{jid.text}'/></pubsub></iq>"
        )
        await self._post("<presence/>", subscribe)
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            body = await self._post()
            now = time.monotonic()
            for items in body.iter(f"{{{PUBSUB_EVENT_NS}}}items"):
                for item in items:
                    item_id = item.get("id")
                    if item_id and item_id not in self.seen:
                        self.seen[item_id] = now
            # Strophe keeps no request open between its idle ticks: what arrives meanwhile
            # waits in Prosody and comes in the next response.
            await asyncio.sleep(STROPHE_IDLE_S - (time.monotonic() % STROPHE_IDLE_S))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task
        with contextlib.suppress(httpx.HTTPError):
            await self._post("<presence type='unavailable'/>", type="terminate")


# -- 1. Prosody alone -----------------------------------------------------------------------


def sql_counters(mariadb: MariaDB) -> dict[str, int]:
    with mariadb.admin_connection() as conn, conn.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN %s", (SQL_COUNTERS,))
        return {str(name): int(value) for name, value in cursor.fetchall()}


def process_cpu(pid: int | None) -> float:
    return cpu_seconds(pid) if pid else 0.0


async def measure(servers: Servers, run: Run, node: str) -> Result:
    """Fill a fresh node to its limit, then publish ITEMS events (or RATE_S s of them)."""
    settings, service = servers.settings, servers.settings.pubsub_service
    subscribers: list[BoshSubscriber] = []
    http = httpx.AsyncClient(timeout=BOSH_WAIT_S + 10)
    try:
        async with collector_session(settings) as client:
            await create_node(client, service, node, run.config)
            fill = [made(EventType.ZONE_ENTER, n, f"{node}f") for n in range(FILL)]
            await publish_all(client, service, fill, Publishing(node=node))
            bosh = f"http://{settings.xmpp_host}:{settings.bosh_port}/http-bind"
            for _ in range(run.subscribers):
                subscriber = BoshSubscriber(http, bosh, settings)
                await subscriber.start(node)
                subscribers.append(subscriber)
            count = ITEMS if run.rate is None else round(run.rate * RATE_S)
            events = [made(EventType.ZONE_ENTER, n, node) for n in range(count)]
            pids = (servers.prosody.pid(), servers.mariadb.pid())
            cpu_before = [process_cpu(pid) for pid in pids]
            sql_before = sql_counters(servers.mariadb)
            own_before = time.process_time()
            began = time.monotonic()
            how = Publishing(run.concurrency, run.rate, node)
            sent, round_trips = await publish_all(client, service, events, how)
            elapsed = time.monotonic() - began
            own_cpu = time.process_time() - own_before
            cpu = [process_cpu(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
            # Batched writes land a moment after the last publish.
            await asyncio.sleep(0.5)
            sql_after = sql_counters(servers.mariadb)
            deliveries: list[float] = []
            missing = 0
            if subscribers:
                for _ in range(round(DELIVERY_GRACE_S / 0.1)):
                    if all(sent.keys() <= s.seen.keys() for s in subscribers):
                        break
                    await asyncio.sleep(0.1)
                for subscriber in subscribers:
                    for item_id, at in sent.items():
                        seen = subscriber.seen.get(item_id)
                        if seen is None:
                            missing += 1
                        else:
                            deliveries.append((seen - at) * 1000)
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
        await http.aclose()
    sql = {
        name.removeprefix("Com_"): (sql_after.get(name, 0) - sql_before.get(name, 0)) / count
        for name in SQL_COUNTERS
    }
    return Result(count, elapsed, round_trips, deliveries, missing, cpu[0], cpu[1], own_cpu, sql)


def report(run: Run, result: Result) -> None:
    per_s = result.published / result.elapsed_s
    share = 100 / result.elapsed_s
    sql = " ".join(f"{name} {value:.2f}" for name, value in result.sql.items() if value)
    delivery = describe(result.deliveries)
    if result.missing:
        delivery += f" ({result.missing} never arrived)"
    print(
        f"    {run.label:<36} {per_s:5.0f}/s  IQ ms {describe(result.round_trips)}  "
        f"to subscribers ms {delivery}  CPU % prosody {result.prosody_cpu_s * share:3.0f} "
        f"({result.prosody_cpu_s / result.published * 1000:.2f} ms/publish) "
        f"mariadb {result.mariadb_cpu_s * share:3.0f} bench {result.own_cpu_s * share:3.0f}  "
        f"SQL/publish {sql or 'none'}",
        flush=True,
    )


def prosody_alone(servers: Servers) -> None:
    print(
        f"Prosody PubSub publishes ({ITEMS} zone crossings per run, node filled with {FILL} "
        f"items first)"
    )
    for item_store, title in (
        ("prosody", "Prosody 0.12's own item store (an SQL write per item)"),
        ("batched", "deploy/prosody's batched item store"),
    ):
        print(f"  {title}; load average {load_average()}")
        with prosody_with(servers, item_store):
            for number, run in enumerate(RUNS):
                result = asyncio.run(measure(servers, run, f"bench-{item_store}-{number}"))
                report(run, result)


# -- 2. The live page -----------------------------------------------------------------------


@dataclass
class PageResult:
    rate: float
    to_row: list[float]
    to_marker: list[float]
    missing: int
    achieved: float
    renderer_cpu_s: float
    main_thread: dict[str, float]
    prosody_cpu_s: float
    own_cpu_s: float
    elapsed_s: float
    state: dict[str, Any]
    newest: set[str]  # the crossings of the latest time (several share a millisecond)
    crossings: int
    long_frames: list[float]  # ms, of the frames over 50 ms


async def renderer_cpu(browser_session: CDPSession) -> float:
    info = await browser_session.send("SystemInfo.getProcessInfo")
    return float(sum(p["cpuTime"] for p in info["processInfo"] if p["type"] == "renderer"))


async def main_thread(page_session: CDPSession) -> dict[str, float]:
    metrics = await page_session.send("Performance.getMetrics")
    wanted = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
    return {m["name"]: m["value"] for m in metrics["metrics"] if m["name"] in wanted}


class Flood:
    """Zone crossings at `rate` for PAGE_FLOOD_S, an accident every PROBE_INTERVAL_S among
    them; each event is made as it is published, so that its time is its publication's."""

    def __init__(self, rate: float, run_id: str) -> None:
        self.run_id = run_id
        self.published: dict[int, Event] = {}
        probes_every = round(rate * PROBE_INTERVAL_S)
        self.makers = [
            self._maker(n, EventType.ACCIDENT)
            if n % probes_every == probes_every - 1
            else self._maker(n, EventType.ZONE_ENTER if n % 2 else EventType.ZONE_EXIT)
            for n in range(round(rate * PAGE_FLOOD_S))
        ]

    def _maker(self, n: int, kind: EventType) -> Callable[[], Event]:
        def make() -> Event:
            self.published[n] = event_at(n, self.run_id, kind)
            return self.published[n]

        return make

    def of(self, accidents: bool) -> list[Event]:
        return [
            self.published[n]
            for n in sorted(self.published)
            if (self.published[n].type == EventType.ACCIDENT) == accidents
        ]

    def clearances(self) -> list[Callable[[], Event]]:
        """The accidents cleared, all at once: the page must end with none active."""
        now_ms = int(time.time() * 1000)
        return [
            functools.partial(
                probe.next_version, status=EventStatus.CLEARED, updated_ms=now_ms, ended_ms=now_ms
            )
            for probe in self.of(accidents=True)
        ]


async def open_live_page(browser: Browser, settings: Settings) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{settings.http_port}/")
    await page.wait_for_selector("#connection[data-state='live']", timeout=30_000)
    await page.locator(".leaflet-roads-pane path").first.wait_for(state="attached")
    await page.evaluate(_PAGE_PROBE)
    return context, page


async def flood_page(
    servers: Servers, browser: Browser, rate: float, round_number: int
) -> PageResult:
    """Open the live page, flood it with crossings and accident probes, then check its state."""
    settings = servers.settings
    flood = Flood(rate, f"p{round_number}-{time.time_ns() % 10**8}")
    context, page = await open_live_page(browser, settings)
    try:
        page_session = await context.new_cdp_session(page)
        await page_session.send("Performance.enable")
        browser_session = await browser.new_browser_cdp_session()
        async with collector_session(settings) as client:
            renderer_before = await renderer_cpu(browser_session)
            thread_before = await main_thread(page_session)
            prosody_before = process_cpu(servers.prosody.pid())
            own_before = time.process_time()
            began = time.monotonic()
            epoch = time.time() - began  # monotonic -> epoch seconds
            sent, _ = await publish_all(
                client, settings.pubsub_service, flood.makers, Publishing(rate=rate)
            )
            elapsed = time.monotonic() - began
            own_cpu = time.process_time() - own_before
            prosody_cpu = process_cpu(servers.prosody.pid()) - prosody_before
            renderer = await renderer_cpu(browser_session) - renderer_before
            thread_after = await main_thread(page_session)
            await publish_all(client, settings.pubsub_service, flood.clearances(), Publishing())
        await asyncio.sleep(SETTLE_S)
        seen = await page.evaluate("() => window.__bench")
        state = await page.evaluate(_PAGE_STATE)
    finally:
        await context.close()
    crossings = flood.of(accidents=False)
    latest = max(event.updated_ms for event in crossings)
    to_row, to_marker, missing = [], [], 0
    for probe in flood.of(accidents=True):
        sent_ms = (epoch + sent[probe.id]) * 1000
        row, marker = seen["rows"].get(probe.id), seen["markers"].get(probe.id)
        if row is None or row - sent_ms > PAGE_TIMEOUT_S * 1000:
            missing += 1
        else:
            to_row.append(row - sent_ms)
        if marker is not None:
            to_marker.append(marker - sent_ms)
    return PageResult(
        rate=rate,
        to_row=to_row,
        to_marker=to_marker,
        missing=missing,
        achieved=len(flood.makers) / elapsed,
        renderer_cpu_s=renderer,
        main_thread={k: thread_after[k] - thread_before.get(k, 0.0) for k in thread_after},
        prosody_cpu_s=prosody_cpu,
        own_cpu_s=own_cpu,
        elapsed_s=elapsed,
        state=state,
        newest={event.id for event in crossings if event.updated_ms == latest},
        crossings=len(crossings),
        long_frames=[float(duration) for duration in seen["long"]],
    )


def page_report(result: PageResult) -> None:
    share = 100 / result.elapsed_s
    thread = " ".join(
        f"{name.removesuffix('Duration').lower()} {value * share:.0f}"
        for name, value in result.main_thread.items()
    )
    state = result.state
    long = result.long_frames
    print(
        f"    {result.rate:.0f} events/s offered, {result.achieved:.0f}/s published: "
        f"accident → feed row ms {describe(result.to_row)} ({result.missing} of "
        f"{result.missing + len(result.to_row)} missing after {PAGE_TIMEOUT_S:.0f} s), → marker "
        f"ms {describe(result.to_marker)}\n"
        f"      renderer CPU {result.renderer_cpu_s * share:.0f} % (main thread %: {thread}); "
        f"{len(long)} frames over 50 ms (longest {max(long, default=0):.0f} ms, "
        f"{sum(long) / 1000:.1f} s in all); "
        f"prosody {result.prosody_cpu_s * share:.0f} %, bench {result.own_cpu_s * share:.0f} %\n"
        f"      then: accidents counter {state['accidents']} (expected 0), crossings counter "
        f"{state['crossings']} (published {result.crossings} more), newest crossing on top: "
        f"{state['first'] in result.newest}, {state['rows']} feed rows, "
        f"{state['markers']} markers, {state['nodes']} DOM elements",
        flush=True,
    )


async def live_page(servers: Servers) -> None:
    from playwright.async_api import async_playwright  # noqa: PLC0415
    from tests.browser import CHROMIUM_ARGS  # noqa: PLC0415

    settings = servers.settings
    async with collector_session(settings) as client:
        for node in PUBSUB_NODES:
            await create_node(client, settings.pubsub_service, node, {})
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            for number, rate in enumerate(PAGE_RATES):
                page_report(await flood_page(servers, browser, rate, number))
        finally:
            await browser.close()


def page_under_flood(servers: Servers) -> None:
    if not CHROMIUM.exists():
        print(f"Live page: not measured ({CHROMIUM} missing)")
        return
    print(
        f"Live page in headless Chromium, {PAGE_FLOOD_S:.0f} s of zone crossings with an "
        f"accident every {PROBE_INTERVAL_S} s; load average {load_average()}"
    )
    settings, layout = servers.settings, servers.layout
    api = PythonService("api", settings, layout, service_probe(settings, "api"))
    with prosody_with(servers, "batched"):
        servers.start(api)
        servers.start(Apache(settings, layout))
        asyncio.run(live_page(servers))


def main() -> None:
    """`python -m bench pubsub`: PubSub publish throughput, latency and the live page."""
    with private_servers() as servers:
        prosody_alone(servers)
        page_under_flood(servers)
    print(f"  load average {load_average()}")
