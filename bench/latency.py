"""Publish → MySQL row → REST answer → browser latency of accidents, at half the target load.

docs/contract/targets.md §2: at 15,000 CAM/s, publish → event row in MySQL p99 < 100 ms, publish →
browser p99 < 500 ms. When the gateway does not keep up with that load, the latency is measured at
5,000 CAM/s instead. Runs on a private system (bench/system.py), never on a running `make up`:
background CAMs come from the publisher processes of bench/fleet.py, and accident DENM pairs
(QoS 1, fleet account, as vehicles send them) are published one pair at a time. Each pair's
event is timed from the second DENM's publication to:

- its row in MySQL: the row's `stored_at` (server clock, same machine);
- `GET /api/events?station=…` through Apache answering it (polled);
- its row appearing in the live page's feed in headless Chromium (a MutationObserver notes
  the time), when Playwright and Chromium are installed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from bench.fleet import Broker, Publishers
from bench.stages import StageHistograms
from bench.stages import report as stage_report
from bench.system import PrivateSystem, cpu_seconds, load_average, private_system
from roadwatch.adapters.mqtt import BlockingPublisher, MqttEndpoint
from roadwatch.adapters.mysql.connection import connect

if TYPE_CHECKING:
    from playwright.sync_api import Page

T = TypeVar("T")

HALF_LOAD = 15_000  # CAM/s in the background: half the 30,000 of docs/contract/targets.md §1
# When the gateway cannot keep up with half load, the latency is measured at this load too.
FALLBACK_LOAD = 5_000
FALLBACK_ROUNDS = 20
STATIONS = 15_000
KEEP_UP_CHECK_S = 2.0
GIVE_UP_AFTER = 3  # rounds whose event never reached MySQL
KEEP_UP_SHARE = 0.95
PUBLISHERS = 2
ROUNDS = 30
TIMEOUT_S = 5.0
POLL_S = 0.005
BROWSER_POLL_S = 0.01
BETWEEN_ROUNDS_S = 0.25
WARM_UP_S = 3.0  # background load before the first pair: first positions, zone entries
# The first positions of thousands of new stations raise a burst of zone entries; the pairs
# are timed once that burst has gone through: the gateway's events to Prosody and the
# collector's publishes to PubSub down to the steady flow again.
SETTLED_PENDING = 20
SETTLE_LIMIT_S = 60.0
TARGET_ROW_P99_MS = 100.0
TARGET_BROWSER_P99_MS = 500.0
# East of the road network, outside every zone, 330 m apart: each round is its own accident.
ACCIDENT_LAT, ACCIDENT_LON, ACCIDENT_STEP_DEG = 49.21, 4.16, 0.003
CHROMIUM = Path("/usr/bin/chromium")

# Notes, in the page, when each feed row first appears (ms since the epoch, like time.time()).
_FEED_OBSERVER = """
() => {
  window.__benchSeen = {};
  const note = (node) => {
    if (node.nodeType !== 1) return;
    const rows = node.matches("tr[data-event-id]") ? [node]
      : node.querySelectorAll("tr[data-event-id]");
    for (const row of rows) {
      const id = row.dataset.eventId;
      if (!(id in window.__benchSeen)) window.__benchSeen[id] = Date.now();
    }
  };
  new MutationObserver((mutations) => {
    for (const mutation of mutations) mutation.addedNodes.forEach(note);
  }).observe(document.body, {childList: true, subtree: true});
}
"""

# Resolves once the page has run no long task (over 50 ms) for 2 s, or after 20 s: a page that
# just connected draws the nodes' items (up to 1,000 a node) over its first seconds, and an
# accident timed meanwhile would measure that start, not the live path.
_PAGE_IDLE = """
() => new Promise((resolve) => {
  const started = performance.now();
  let last = started;
  new PerformanceObserver(() => { last = performance.now(); })
    .observe({type: "longtask", buffered: true});
  const check = () => {
    const now = performance.now();
    if (now - last >= 2000 || now - started >= 20000) resolve((now - started) / 1000);
    else setTimeout(check, 200);
  };
  check();
})
"""


@dataclass
class Samples:
    """Latencies in milliseconds, and how many rounds timed out at each stage."""

    to_row: list[float] = field(default_factory=list)
    to_api: list[float] = field(default_factory=list)
    to_browser: list[float] = field(default_factory=list)
    timeouts: dict[str, int] = field(default_factory=dict)


def percentile(samples: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 30 samples is the worst one)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(len(ordered) * share + 0.5) - 1))]


def describe(samples: list[float]) -> str:
    if not samples:
        return "no sample"
    return (
        f"p50 {statistics.median(samples):6.1f}  p95 {percentile(samples, 0.95):6.1f}  "
        f"p99 {percentile(samples, 0.99):6.1f}  max {max(samples):6.1f} ms"
    )


def _poll(check: Callable[[], T | None], interval_s: float) -> T | None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(interval_s)
    return None


def _denm(station: str, station_type: int, ts_ms: int, lat: float, **extra: Any) -> bytes:
    payload = {
        "stationId": station,
        "stationType": station_type,
        "timestamp": ts_ms,
        "lat": lat,
        "lon": ACCIDENT_LON,
        "causeCode": 2,
        **extra,
    }
    return orjson.dumps(payload)


def measure(system: PrivateSystem, rounds: int, page: Page | None) -> Samples:
    """Publish `rounds` accident pairs one after the other and time each one's way."""
    settings = system.settings
    fleet = BlockingPublisher(
        MqttEndpoint.fleet(settings),
        name="bench-latency",
    )
    fleet.start()
    db = connect(settings, autocommit=True)
    samples = Samples()
    run = time.time_ns() % 1_000_000
    try:
        with httpx.Client(base_url=system.site, timeout=TIMEOUT_S) as http:
            for n in range(rounds):
                first, second = f"lat-{run}-{n}-a", f"lat-{run}-{n}-b"
                lat = round(ACCIDENT_LAT + n * ACCIDENT_STEP_DEG, 6)
                now_ms = int(time.time() * 1000)
                fleet.publish(f"vehicles/{first}/denm", _denm(first, 5, now_ms, lat), 1)
                published = time.time()
                fleet.publish(f"vehicles/{second}/denm", _denm(second, 5, now_ms + 1, lat), 1)

                def stored(station: str = second) -> tuple[str, float] | None:
                    with db.cursor() as cursor:
                        cursor.execute(
                            "SELECT e.id, UNIX_TIMESTAMP(e.stored_at) FROM event_stations s"
                            " JOIN events e ON e.id = s.event_id WHERE s.station_id = %s",
                            (station,),
                        )
                        row = cursor.fetchone()
                    return None if row is None else (str(row[0]), float(row[1]))

                def served(station: str = second) -> float | None:
                    answer = http.get("/api/events", params={"station": station})
                    return time.time() if answer.json()["items"] else None

                row = _poll(stored, POLL_S)
                if row is None:
                    samples.timeouts["row"] = samples.timeouts.get("row", 0) + 1
                    if samples.timeouts["row"] >= GIVE_UP_AFTER:
                        break  # the gateway fell behind: later rounds would only wait longer
                    continue
                event_id, stored_at = row
                samples.to_row.append((stored_at - published) * 1000)
                answered = _poll(served, POLL_S)
                if answered is None:
                    samples.timeouts["api"] = samples.timeouts.get("api", 0) + 1
                else:
                    samples.to_api.append((answered - published) * 1000)
                if page is not None:

                    def shown(event: str = event_id, live: Page = page) -> float | None:
                        seen = live.evaluate("id => window.__benchSeen[id] ?? null", event)
                        return None if seen is None else float(seen)

                    seen = _poll(shown, BROWSER_POLL_S)
                    if seen is None:
                        samples.timeouts["browser"] = samples.timeouts.get("browser", 0) + 1
                    else:
                        samples.to_browser.append(seen - published * 1000)
                # A road operator clears it: no active accidents pile up on the live page.
                operator = f"lat-{run}-operator"
                clear = _denm(operator, 15, now_ms + 2, lat, termination="negation")
                fleet.publish(f"vehicles/{operator}/denm", clear, 1)
                time.sleep(BETWEEN_ROUNDS_S)
    finally:
        fleet.stop()
        db.close()
    return samples


def _with_browser(system: PrivateSystem, rounds: int) -> tuple[Samples, str]:
    """Measure with a live page open when a browser is available; say which way it ran."""
    try:
        from tests.browser import headless_chromium  # noqa: PLC0415
    except ImportError as exc:
        return measure(system, rounds, None), f"no browser ({exc})"
    if not CHROMIUM.exists():
        return measure(system, rounds, None), f"no browser ({CHROMIUM} missing)"
    with headless_chromium() as browser:
        page = browser.new_page()
        page.goto(f"{system.site}/")
        page.wait_for_selector("#connection[data-state='live']", timeout=30_000)
        page.evaluate(_FEED_OBSERVER)
        idle_after = float(page.evaluate(_PAGE_IDLE))
        try:
            how = f"live page in headless Chromium (idle {idle_after:.1f} s after it connected)"
            return measure(system, rounds, page), how
        finally:
            page.close()


def _keeps_up(system: PrivateSystem, load: float) -> float:
    """Return the rate at which the gateway takes the background traffic, over a short while."""
    before = system.received()
    began = time.perf_counter()
    time.sleep(KEEP_UP_CHECK_S)
    after = system.received()
    return (after - before) / (time.perf_counter() - began)


def _settle(system: PrivateSystem) -> float:
    """Wait until the first positions' burst of events has gone through; return the seconds."""
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_LIMIT_S:
        gateway = system.gateway_metrics()
        waiting = gateway.get("xmpp_pending", 0.0) + gateway.get("outbox_unsent", 0.0)
        collector = system.collector_metrics()
        waiting += collector.get("queue", 0.0) + collector.get("publish_backlog", 0.0)
        if waiting <= SETTLED_PENDING:
            break
        time.sleep(0.2)
    return time.monotonic() - began


def under_load(
    system: PrivateSystem, publishers: Publishers, load: float, rounds: int = ROUNDS
) -> bool:
    """Print the latencies of `rounds` accidents under `load` CAM/s of background traffic.

    Returns False, measuring nothing, when the gateway does not keep up with that traffic:
    the DENMs would wait behind an ever longer backlog, and the figures would only tell how
    long the benchmark had been running.
    """
    stations = round(load)  # each reports at 1 Hz
    gateways = system.gateway_pids()
    gateway_cpu = sum(map(cpu_seconds, gateways))
    received = system.received()
    began = time.perf_counter()
    publishers.start(load, stations, None)
    samples: Samples | None = None
    ports = {
        "gateway": system.settings.gateway_metrics_port,
        "collector": system.settings.collector_metrics_port,
    }
    try:
        time.sleep(WARM_UP_S)
        settled_after = _settle(system)
        taken = _keeps_up(system, load)
        if taken >= KEEP_UP_SHARE * load:
            stages_before = StageHistograms.read(ports)
            samples, how = _with_browser(system, rounds)
            stages_after = StageHistograms.read(ports)
    finally:
        publishers.stop()
        results = publishers.results(TIMEOUT_S)
    elapsed = time.perf_counter() - began
    sent = sum(result.sent for result in results)
    busy = (sum(map(cpu_seconds, gateways)) - gateway_cpu) / elapsed * 100
    if samples is None:
        print(
            f"latency at {load:,.0f} CAM/s: not measured, the gateway took only {taken:,.0f} "
            f"msg/s of the {sent / elapsed:,.0f} published (gateway CPU {busy:.0f} %; "
            f"load average {load_average()})"
        )
        system.drain(received + sent)
        return False
    system.drain(received + sent)
    print(
        f"latency at {load:,.0f} CAM/s: {rounds} accidents (2 DENMs each, QoS 1) while "
        f"{sent / elapsed:,.0f} CAM/s ran in the background ({stations:,} stations; "
        f"gateway CPU {busy:.0f} %; load average {load_average()}); {how}; the first"
        f" positions' burst of events took {settled_after:.1f} s to go through"
    )
    print(f"  second DENM published -> row in MySQL        {describe(samples.to_row)}")
    print(f"  second DENM published -> GET /api/events     {describe(samples.to_api)}")
    if samples.to_browser:
        print(f"  second DENM published -> row in the browser  {describe(samples.to_browser)}")
    if samples.timeouts:
        print(f"  timed out after {TIMEOUT_S:.0f} s: {samples.timeouts}")
    print("  each stage meanwhile, from the services' own histograms (CAMs sampled 1 in 64):")
    for line in stage_report(stages_before, stages_after):
        print(line)
    verdicts = []
    if samples.to_row:
        ok = percentile(samples.to_row, 0.99) < TARGET_ROW_P99_MS
        verdicts.append(f"row p99 {'<' if ok else '>='} {TARGET_ROW_P99_MS:.0f} ms")
    if samples.to_browser:
        ok = percentile(samples.to_browser, 0.99) < TARGET_BROWSER_P99_MS
        verdicts.append(f"browser p99 {'<' if ok else '>='} {TARGET_BROWSER_P99_MS:.0f} ms")
    if verdicts and load >= HALF_LOAD:
        print(f"  docs/contract/targets.md §2: {', '.join(verdicts)}")
    return True


def at_half_load(system: PrivateSystem, publishers: Publishers) -> None:
    """The latency at half the target load; at a load it sustains, when it does not."""
    if not under_load(system, publishers, HALF_LOAD):
        under_load(system, publishers, FALLBACK_LOAD, FALLBACK_ROUNDS)


def broker_of(system: PrivateSystem) -> Broker:
    settings = system.settings
    return Broker(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_fleet_user,
        settings.mqtt_fleet_password.get_secret_value(),
    )


def main() -> None:
    """`python -m bench latency`: the latency part of the pipeline benchmark alone."""
    with (
        private_system() as system,
        Publishers(broker_of(system), STATIONS, PUBLISHERS) as publishers,
    ):
        at_half_load(system, publishers)
