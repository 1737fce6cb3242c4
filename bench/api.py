"""REST queries over 1,000,000 events (docs/contract/targets.md §3: p95 < 100 ms), through the
real API over HTTP.

Starts its own MariaDB on a free port under .run/bench-api (never the `make up` one), seeds it
once with `roadwatch seed-events` data (kept there for the next runs), starts `roadwatch api`
as its own process, then times each query one request at a time.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from roadwatch.adapters.mysql.connection import connect
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout, wait_until
from roadwatch.runner.templates import repo_dir
from roadwatch.services import seed
from roadwatch.settings import Settings

COUNT = int(os.environ.get("ROADWATCH_BENCH_EVENTS", "1000000"))
SEED = 1
DAYS = 30
# A fixed end keeps the data set (and so the cached database) the same from run to run.
END_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
DATASET_KEY = "bench.dataset"
ROUNDS = 40
WARMUP = 3
TARGET_P95_MS = 100.0
CITY_BBOX = "3.95,49.20,4.12,49.30"
SMALL_BOX_HALF_DEG = 0.0025  # about 550 m by 370 m
MONTH = "since=2024-05-01T00:00:00Z&until=2024-06-01T00:00:00Z"
LAST_DAY = "since=2024-05-31T00:00:00Z&until=2024-06-01T00:00:00Z"

Query = Callable[[random.Random], str]


def _dataset() -> str:
    return f"count={COUNT} seed={SEED} days={DAYS} end={END_MS} v1"


def _ensure_data(settings: Settings) -> str:
    """Seed the bench database unless it already holds this data set; say which."""
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT value FROM collector_state WHERE state_key = %s", (DATASET_KEY,))
            row = cur.fetchone()
            conn.commit()
            if row is not None and row[0] == _dataset():
                return f"reused the seeded database ({COUNT:,} events)"
            for table in ("event_stations", "events", "event_counts_hourly", "event_cells_daily"):
                cur.execute(f"TRUNCATE TABLE {table}")

        def progress(done: int, total: int) -> None:
            if done % 100_000 < seed.BATCH_SIZE or done == total:
                print(f"  seeding: {done:,} / {total:,}", file=sys.stderr, flush=True)

        report = seed.seed_events(
            conn, COUNT, seed=SEED, days=DAYS, end_ms=END_MS, progress=progress
        )
        with conn.cursor() as cur:
            cur.execute(
                "REPLACE INTO collector_state (state_key, value) VALUES (%s, %s)",
                (DATASET_KEY, _dataset()),
            )
        conn.commit()
        return (
            f"seeded {report.inserted:,} events in {report.seconds:.0f} s "
            f"({report.inserted / report.seconds:,.0f} events/s)"
        )
    finally:
        conn.close()


def _queries(client: httpx.Client) -> dict[str, Query]:
    spots = client.get("/api/stats/hotspots", params={"limit": 60}).json()["cells"]
    centres = [(cell["lon"], cell["lat"]) for cell in spots]

    def small_box(rng: random.Random) -> str:
        lon, lat = rng.choice(centres)
        h = SMALL_BOX_HALF_DEG
        return f"{lon - h:.4f},{lat - h:.4f},{lon + h:.4f},{lat + h:.4f}"

    def small_box_off_grid(rng: random.Random) -> str:
        # Boxes around a cell centre line up with the grid; a map view rarely does.
        lon, lat = rng.choice(centres)
        lon += rng.uniform(-SMALL_BOX_HALF_DEG, SMALL_BOX_HALF_DEG)
        lat += rng.uniform(-SMALL_BOX_HALF_DEG, SMALL_BOX_HALF_DEG)
        h = SMALL_BOX_HALF_DEG
        return f"{lon - h:.6f},{lat - h:.6f},{lon + h:.6f},{lat + h:.6f}"

    def station(rng: random.Random) -> str:
        return f"veh-{rng.randrange(seed.STATION_POOL):05d}"

    def day(rng: random.Random) -> str:
        n = rng.randrange(1, 30)
        return f"since=2024-05-{n:02d}T00:00:00Z&until=2024-05-{n + 1:02d}T00:00:00Z"

    return {
        "latest 100": lambda rng: "/api/events",
        "latest 100, page 2": lambda rng: f"/api/events?cursor={_second_page(client)}",
        "type=accident": lambda rng: "/api/events?type=accident",
        "type=accident&type=hazard": lambda rng: "/api/events?type=accident&type=hazard",
        "status=active": lambda rng: "/api/events?status=active",
        "one day (since/until)": lambda rng: f"/api/events?{day(rng)}",
        "type + one day": lambda rng: f"/api/events?type=traffic_jam&{day(rng)}",
        "bbox city": lambda rng: f"/api/events?bbox={CITY_BBOX}",
        "bbox city + type": lambda rng: f"/api/events?bbox={CITY_BBOX}&type=accident",
        "bbox small": lambda rng: f"/api/events?bbox={small_box(rng)}",
        "bbox small + type": lambda rng: f"/api/events?bbox={small_box(rng)}&type=accident",
        "station": lambda rng: f"/api/events?station={station(rng)}",
        "zone": lambda rng: "/api/events?zone=reims-gare",
        "zone + type": lambda rng: "/api/events?zone=reims-centre&type=zone_exit",
        "stats summary (month)": lambda rng: f"/api/stats/summary?{MONTH}",
        "stats summary (all)": lambda rng: "/api/stats/summary",
        "stats timeseries day (month)": lambda rng: f"/api/stats/timeseries?bucket=day&{MONTH}",
        "stats timeseries hour (month)": lambda rng: (
            f"/api/stats/timeseries?bucket=hour&type=accident&{MONTH}"
        ),
        "stats hotspots accident (month)": lambda rng: f"/api/stats/hotspots?type=accident&{MONTH}",
        "stats hotspots all (last day)": lambda rng: f"/api/stats/hotspots?{LAST_DAY}",
        # Added last, so that the queries above draw the same random boxes and days as before.
        "bbox small off the grid": lambda rng: f"/api/events?bbox={small_box_off_grid(rng)}",
        "bbox small off the grid + type": lambda rng: (
            f"/api/events?bbox={small_box_off_grid(rng)}&type=accident"
        ),
        "stats timeseries hour, all types (month)": lambda rng: (
            f"/api/stats/timeseries?bucket=hour&{MONTH}"
        ),
    }


_cursor_cache: dict[str, str] = {}


def _second_page(client: httpx.Client) -> str:
    if "cursor" not in _cursor_cache:
        _cursor_cache["cursor"] = client.get("/api/events").json()["next_cursor"]
    return _cursor_cache["cursor"]


def _measure(client: httpx.Client, query: Query, rng: random.Random) -> tuple[list[float], int]:
    samples: list[float] = []
    size = 0
    for n in range(WARMUP + ROUNDS):
        url = query(rng)
        started = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        if n >= WARMUP:
            samples.append(elapsed)
            size = max(size, len(response.content))
    return samples, size


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, round(len(ordered) * 0.95) - 1)]


def _api(settings: Settings, root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_environment(), "ROADWATCH_LOG_LEVEL": "WARNING"}
    log = (root / "logs" / "api.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "roadwatch", "--log-level", "WARNING", "api"],
        env=env,
        stdout=log,
        stderr=log,
    )


def main() -> None:
    root = repo_dir() / ".run" / "bench-api"
    root.mkdir(parents=True, exist_ok=True)
    # mariadbd runs as its own user, which must reach its folder.
    root.chmod(0o755)
    settings = private_settings(root)
    layout = RunLayout(root)
    database = MariaDB(settings, layout)
    started = time.perf_counter()
    database.start()
    print(f"api: {COUNT:,} events; MariaDB ready in {time.perf_counter() - started:.1f} s")
    api: subprocess.Popen[bytes] | None = None
    try:
        print(f"  {_ensure_data(settings)}")
        api = _api(settings, root)
        base_url = f"http://{settings.api_host}:{settings.api_port}"
        with httpx.Client(base_url=base_url, timeout=30) as client:
            wait_until(
                lambda: client.get("/api/health").status_code == 200, "bench api", timeout_s=30
            )
            rng = random.Random(SEED)
            rows = []
            for name, query in _queries(client).items():
                samples, size = _measure(client, query, rng)
                rows.append((name, statistics.median(samples), _p95(samples), max(samples), size))
        width = max(len(row[0]) for row in rows)
        print(f"  {'query':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}  {'max ms':>7}  {'bytes':>8}")
        for name, p50, p95, worst, size in rows:
            flag = "" if p95 < TARGET_P95_MS else f"  over the {TARGET_P95_MS:.0f} ms target"
            print(f"  {name:<{width}}  {p50:7.1f}  {p95:7.1f}  {worst:7.1f}  {size:8,}{flag}")
        print(f"  {ROUNDS} sequential requests per query over HTTP, after {WARMUP} warm-up ones")
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=15)
        database.stop()
