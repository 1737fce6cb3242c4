"""Keep the gateway's zones in step with the zones table (docs/contract/detection.md §6: changes
without a restart).

At start the zones file seeds the table, but only while the zones were never seeded nor edited
(revision 0), so a zone deleted through the API is not brought back. Then one long-lived MySQL
session polls the zones' revision counter; any change (deletions included) reloads every zone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import orjson

from roadwatch.adapters.mysql.connection import StoreError
from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.domain.zones import InvalidZone, Zone, zones_from_geojson
from roadwatch.paths import RepositoryNotFound, repo_dir
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Retry delays while the database is unreachable: quick at first (a restart takes about a
# second, docs/STACK-NOTES.md §1), capped so that changes still arrive soon after it comes back.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


def resolve_repo_path(path: Path) -> Path:
    """Return `path`, made absolute from the repository root when it is relative."""
    if path.is_absolute():
        return path
    try:
        return repo_dir() / path
    except RepositoryNotFound:
        # An installed package without the repository: the working directory is all we have.
        return Path.cwd() / path


def read_zones_file(path: Path) -> list[Zone]:
    """Read and validate the GeoJSON zones file."""
    return zones_from_geojson(orjson.loads(path.read_bytes()))


class ZoneSync:
    """Load the zones, seed them from the file when appropriate, and report every change.

    `on_zones` receives the complete list of zones each time; it runs in the event loop of
    `run()`, so it must be quick and must not block. The database is the source of truth: with
    `file_fallback`, the file's zones are delivered meanwhile if it cannot be reached at start,
    which suits a process without zones of its own; one that restored its zones from saved
    state should keep those instead (a file differing from them would invent exits).
    """

    def __init__(
        self,
        settings: Settings,
        on_zones: Callable[[list[Zone]], None],
        *,
        store: ZoneStore | None = None,
        file_fallback: bool = False,
    ) -> None:
        self._settings = settings
        self._on_zones = on_zones
        self._file_fallback = file_fallback
        # Built lazily in run(): nothing connects before the service starts.
        self._store = store
        self._loaded = asyncio.Event()
        self._zones: list[Zone] = []
        self._revision: int | None = None
        self._source = "none"
        self._loads = 0
        self._polls = 0
        self._failures = 0
        self._callback_errors = 0
        self._seeded = 0

    @property
    def zones(self) -> list[Zone]:
        """Return the zones last passed to `on_zones`."""
        return list(self._zones)

    @property
    def revision(self) -> int | None:
        """Return the revision of the zones last loaded from the database, if any."""
        return self._revision

    async def wait_loaded(self) -> None:
        """Wait until `on_zones` has been called once (from the database, or the fallback)."""
        await self._loaded.wait()

    def counters(self) -> dict[str, int | str | None]:
        """Return figures for the status page: zones held, revision, loads, polls, failures."""
        return {
            "zones": len(self._zones),
            "zone_source": self._source,
            "zone_revision": self._revision,
            "zone_loads": self._loads,
            "zone_polls": self._polls,
            "zone_db_failures": self._failures,
            "zone_callback_errors": self._callback_errors,
            "zones_seeded": self._seeded,
        }

    async def run(self) -> None:
        """Seed, load, then poll the revision every `zone_refresh_s` until cancelled."""
        store = self._store or ZoneStore.connect(self._settings)
        # One worker thread holds the one session, so no query ever blocks the event loop.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zone-sync")
        try:
            file_zones = await self._in_thread(executor, self._file_zones)
            await self._poll(store, executor, file_zones)
        finally:
            # Queued behind a query that may still run in the worker, never on the event loop.
            if self._store is None:
                executor.submit(store.close)
            executor.shutdown(wait=False)

    @staticmethod
    async def _in_thread(executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _poll(
        self, store: ZoneStore, executor: ThreadPoolExecutor, file_zones: list[Zone] | None
    ) -> None:
        backoff = BACKOFF_INITIAL_S
        down_since: float | None = None
        while True:
            try:
                await self._refresh(store, executor, file_zones)
            except Exception as exc:
                self._failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "zones: database unavailable, keeping %d zones and retrying: %s",
                        len(self._zones),
                        exc,
                        # A store error is expected here; anything else is a bug to show.
                        exc_info=not isinstance(exc, StoreError),
                    )
                if self._file_fallback and not self._loaded.is_set() and file_zones is not None:
                    # Detection should not wait for the database: start from the file.
                    log.warning("zones: starting with the %d zones of the file", len(file_zones))
                    self._deliver(file_zones, "file")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if down_since is not None:
                log.info("zones: database back after %.1f s", time.monotonic() - down_since)
                down_since = None
                backoff = BACKOFF_INITIAL_S
            await asyncio.sleep(self._settings.zone_refresh_s)

    async def _refresh(
        self, store: ZoneStore, executor: ThreadPoolExecutor, file_zones: list[Zone] | None
    ) -> None:
        """Poll the revision once; seed when it is 0, reload and deliver when it changed."""
        revision = await self._in_thread(executor, store.revision)
        self._polls += 1
        reload = revision != self._revision
        if revision == 0 and file_zones:
            # Checked again under a row lock inside seed_from, so concurrent starts seed once.
            if await self._in_thread(executor, partial(store.seed_from, file_zones)):
                self._seeded = len(file_zones)
                log.info("zones table seeded with the %d zones of the file", len(file_zones))
            reload = True
        if reload:
            self._revision, zones = await self._in_thread(executor, store.snapshot)
            self._deliver(zones, "database")

    def _file_zones(self) -> list[Zone] | None:
        """Read the zones file; None (logged) if it is missing or invalid."""
        path = resolve_repo_path(self._settings.zones_file)
        try:
            zones = read_zones_file(path)
        except FileNotFoundError:
            log.warning("zones file %s not found; zones come from the database only", path)
            return None
        except (OSError, orjson.JSONDecodeError, InvalidZone) as exc:
            log.error("zones file %s is not usable, not seeding from it: %s", path, exc)
            return None
        log.info("zones file %s holds %d zones", path, len(zones))
        return zones

    def _deliver(self, zones: list[Zone], source: str) -> None:
        self._zones = list(zones)
        self._source = source
        self._loads += 1
        log.info("zones loaded from the %s: %d zones", source, len(zones))
        try:
            self._on_zones(list(zones))
        except Exception:
            self._callback_errors += 1
            log.exception("zones: the zone callback failed")
        self._loaded.set()
