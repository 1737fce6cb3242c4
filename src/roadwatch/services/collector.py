"""The collector: events from XMPP, stored in MySQL in batches, then published to PubSub."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricsSource

from roadwatch.adapters.metrics import MetricsServer, stage_histogram
from roadwatch.adapters.mysql.connection import StoreError
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.xmpp import Backoff, EventReceiver, XmppClosed, XmppError
from roadwatch.adapters.xmpp.receiver import RECEIVED_AT, ArchiveHealth, ThrottledLog
from roadwatch.domain.events import Event
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

ARCHIVE_POSITION_KEY = "xmpp.archive"
# Bounded: a receiver faster than MySQL waits here instead of growing memory.
QUEUE_SIZE = 10_000
# Publishes running at once.
PUBLISH_CONCURRENCY = 64
# A failed publish is tried again after these delays, until it succeeds; a new XMPP session
# retries everything at once.
PUBLISH_RETRY_BACKOFF = Backoff(initial_s=0.5, factor=2.0, maximum_s=30.0)
# Events stored but not yet published, one entry per event id. Past this the store loop waits
# (the receiver then holds, then leaves messages to the archive), so memory stays bounded.
PUBLISH_BACKLOG_MAX = 50_000
# On each new XMPP session, the events published this recently are published again: a kill -9
# of Prosody can lose the item writes of its last round of input (docs/DESIGN.md, "PubSub
# items"), and a node's items must hold the current state of its events (docs/contract/xmpp.md §5).
REPUBLISH_WINDOW_S = 10.0
REPUBLISH_MAX = 20_000
# How often the figures of Prosody's archive guard (deploy/prosody/modules) are read.
ARCHIVE_POLL_INTERVAL_S = 5.0
# /health stays "degraded" this long after Prosody's last failed archive write.
ARCHIVE_FAILURE_RECENT_S = 600.0
# Without a batch committed for this long, /health pings MySQL itself.
DB_PING_INTERVAL_S = STATUS_INTERVAL_S
# On SIGTERM, how long the backlog may take to go out before the session closes.
STOP_PUBLISH_DRAIN_S = 5.0
# One log line per kind of problem (failed batches, failed publishes) at most this often.
PROBLEM_LOG_INTERVAL_S = 60.0

T = TypeVar("T")


@dataclass
class _Pending:
    event: Event
    stored: asyncio.Future[None]
    received: float


@dataclass
class CollectorStats:
    received: int = 0
    stored: int = 0
    unchanged: int = 0
    published: int = 0
    publish_stale: int = 0
    publish_failures: int = 0
    publish_retries: int = 0
    republished: int = 0
    batches: int = 0
    store_errors: int = 0
    last_batch_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Unpublished:
    event: Event
    # When the batch holding this version committed (time.monotonic()); None for a version
    # published again on a new session, which the "published" stage does not time.
    committed: float | None
    due: float
    delays: Iterator[float]
    failures: int = 0
    in_flight: bool = False
    # Which of the schedule's entries for this event is the live one.
    ticket: int = 0


@dataclass(frozen=True, slots=True)
class PublishAttempt:
    """One publish to make now; `retry` when this event's publishing failed before."""

    event: Event
    retry: bool


class PublishBacklog:
    """What is stored but not yet published: the newest version of each event id.

    Pure bookkeeping, driven by the caller's clock. At most one entry per event id and at most
    one attempt in flight per id, so an older version can never be published after a newer one;
    a newer version replaces the one waiting. Due entries come out in the order they were
    scheduled (a heap; superseded schedule entries are skipped when they surface).
    """

    def __init__(self, backoff: Backoff = PUBLISH_RETRY_BACKOFF) -> None:
        self._backoff = backoff
        self._entries: dict[str, _Unpublished] = {}
        self._schedule: list[tuple[float, int, str]] = []
        self._tickets = itertools.count(1)
        self._failing = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def failing(self) -> int:
        """Count the events whose last publish failed."""
        return self._failing

    def add(self, event: Event, committed: float | None, now: float) -> None:
        """Queue `event` for publishing, unless a newer version of it is queued already."""
        entry = self._entries.get(event.id)
        if entry is None:
            entry = _Unpublished(event, committed, now, iter(self._backoff.delays()))
            self._entries[event.id] = entry
            self._plan(entry, now)
            return
        if event.version <= entry.event.version:
            return
        entry.event = event
        entry.committed = committed
        # A failing one keeps its back-off: the service is likely still refusing.
        if not entry.failures and not entry.in_flight:
            self._plan(entry, now)

    def take_due(self, now: float, most: int) -> list[PublishAttempt]:
        """Return up to `most` publishes to start now, marking them in flight."""
        attempts: list[PublishAttempt] = []
        while len(attempts) < most:
            entry = self._first()
            if entry is None or entry.due > now:
                break
            heapq.heappop(self._schedule)
            entry.in_flight = True
            attempts.append(PublishAttempt(entry.event, retry=entry.failures > 0))
        return attempts

    def next_due(self) -> float | None:
        """Return when the next entry not in flight is due, or None if there is none."""
        entry = self._first()
        return None if entry is None else entry.due

    def succeeded(self, event: Event, now: float) -> float | None:
        """Record that `event` was published (or refused as stale); return its commit time.

        None when a newer version arrived meanwhile (it stays, due now), or when this was a
        version published again.
        """
        entry = self._entries.get(event.id)
        if entry is None or not entry.in_flight:
            return None
        entry.in_flight = False
        if entry.failures:
            # Publishing works again: what waits is no longer a retry.
            self._failing -= 1
            entry.failures = 0
            entry.delays = iter(self._backoff.delays())
        if entry.event.version > event.version:
            self._plan(entry, now)
            return None
        del self._entries[event.id]
        return entry.committed

    def failed(self, event: Event, now: float) -> float:
        """Record a failed publish of `event`; return the delay before its next attempt."""
        entry = self._entries.get(event.id)
        if entry is None or not entry.in_flight:
            return 0.0
        entry.in_flight = False
        if not entry.failures:
            self._failing += 1
        entry.failures += 1
        delay = next(entry.delays)
        self._plan(entry, now + delay)
        return delay

    def retry_now(self, now: float) -> None:
        """Make every waiting entry due at once (a new XMPP session: the cause may be gone)."""
        for entry in self._entries.values():
            if not entry.in_flight and entry.due > now:
                self._plan(entry, now)

    def _plan(self, entry: _Unpublished, due: float) -> None:
        entry.due = due
        entry.ticket = next(self._tickets)
        heapq.heappush(self._schedule, (due, entry.ticket, entry.event.id))

    def _first(self) -> _Unpublished | None:
        """Return the entry at the head of the schedule, dropping superseded heads."""
        while self._schedule:
            _, ticket, event_id = self._schedule[0]
            entry = self._entries.get(event_id)
            if entry is not None and entry.ticket == ticket and not entry.in_flight:
                return entry
            heapq.heappop(self._schedule)
        return None


class Collector:
    """Batches incoming events into one transaction each, then publishes the stored ones."""

    def __init__(self, settings: Settings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.stats = CollectorStats()
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(QUEUE_SIZE)
        self.backlog = PublishBacklog()
        self.registry = CollectorRegistry(auto_describe=True)
        self._stages = stage_histogram(self.registry, "collector")
        self._stored_stage = self._stages.labels(stage="stored")
        self._published_stage = self._stages.labels(stage="published")
        # One thread owns the database session: calls never overlap on it.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-db")
        # Set whenever the backlog changes or a publish ends (waited on by the publisher).
        self._publish_wake = asyncio.Event()
        # Set while the backlog has room (waited on by the store loop).
        self._backlog_room = asyncio.Event()
        self._backlog_room.set()
        self._backlog_empty = asyncio.Event()
        self._backlog_empty.set()
        self._publishing = 0
        # (when, event) of the latest successful publishes, for a new session (see
        # REPUBLISH_WINDOW_S).
        self._recent: deque[tuple[float, Event]] = deque(maxlen=REPUBLISH_MAX)
        self._problems = ThrottledLog(log, PROBLEM_LOG_INTERVAL_S)
        self.db_reachable = True
        self._db_checked = time.monotonic()
        self.archive: ArchiveHealth | None = None
        self._archive_read_at = 0.0

    async def _in_db(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, lambda: work(*args, **kwargs))

    async def on_event(self, event: Event) -> None:
        """Return once `event` is stored (the receiver then advances its archive position)."""
        self.stats.received += 1
        received = RECEIVED_AT.get(time.monotonic())
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(event, stored, received))
        await stored

    async def load_position(self) -> str | None:
        position: str | None = await self._in_db(self.store.get_state, ARCHIVE_POSITION_KEY)
        return position

    async def save_position(self, position: str) -> None:
        await self._in_db(self.store.set_state, ARCHIVE_POSITION_KEY, position)

    # -- storing ----------------------------------------------------------------------------

    async def write_batches(self) -> None:
        """Store what is queued in batches, forever; queue each batch's winners to publish."""
        batch_size = self.settings.collector_batch_size
        flush_s = self.settings.collector_flush_interval_s
        while True:
            await self._backlog_room.wait()
            batch = [await self.queue.get()]
            deadline = time.monotonic() + flush_s
            while len(batch) < batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            await self._store(batch)

    async def _store(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            winners: list[Event] = await self._in_db(
                self.store.upsert, [item.event for item in batch]
            )
        except StoreError as exc:
            self.stats.store_errors += 1
            self.db_reachable = False
            self._problems.warning(
                "store", "storing %d events failed (%s); the receiver will retry", len(batch), exc
            )
            for item in batch:
                if not item.stored.done():
                    item.stored.set_exception(exc)
            return
        committed = time.monotonic()
        self.db_reachable = True
        self._db_checked = committed
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000
        self.stats.stored += len(winners)
        self.stats.unchanged += len(batch) - len(winners)
        for item in batch:
            self._stored_stage.observe(max(0.0, committed - item.received))
            if not item.stored.done():
                item.stored.set_result(None)
        # Only what changed a row is published: a replayed older version must never replace
        # the current PubSub item (a node's items are the current state, docs/DESIGN.md).
        for event in winners:
            self.backlog.add(event, committed, committed)
        if winners:
            self._backlog_empty.clear()
            self._publish_wake.set()
        if len(self.backlog) >= PUBLISH_BACKLOG_MAX:
            self._backlog_room.clear()

    async def check_database(self) -> None:
        """Ping MySQL now and then while no batch tells whether it answers."""
        while True:
            await asyncio.sleep(DB_PING_INTERVAL_S)
            if time.monotonic() - self._db_checked < DB_PING_INTERVAL_S:
                continue
            try:
                await self._in_db(self.store.ping)
            except StoreError:
                self.db_reachable = False
            else:
                self.db_reachable = True
            self._db_checked = time.monotonic()

    # -- publishing -------------------------------------------------------------------------

    async def publish_forever(self, receiver: EventReceiver) -> None:
        """Publish the backlog to PubSub, retrying each failure until it succeeds."""
        sessions = receiver.sessions
        async with asyncio.TaskGroup() as tasks:
            while True:
                self._publish_wake.clear()
                if not receiver.online:
                    await receiver.wait_connected()
                if receiver.sessions != sessions:
                    sessions = receiver.sessions
                    self.backlog.retry_now(time.monotonic())
                    self._republish_recent(time.monotonic())
                now = time.monotonic()
                for attempt in self.backlog.take_due(now, PUBLISH_CONCURRENCY - self._publishing):
                    self._publishing += 1
                    tasks.create_task(self._publish(receiver, attempt))
                due = self.backlog.next_due()
                # Wake up at the next due retry, and now and then to notice a new session.
                wait_s = STATUS_INTERVAL_S if due is None else min(max(0.0, due - now), 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._publish_wake.wait(), wait_s)

    def _republish_recent(self, now: float) -> None:
        """Queue again what was published within REPUBLISH_WINDOW_S (a new session began)."""
        recent = self._recent
        while recent and now - recent[0][0] > REPUBLISH_WINDOW_S:
            recent.popleft()
        for _, event in recent:
            self.backlog.add(event, None, now)
        if recent:
            self.stats.republished += len(recent)
            self._publish_wake.set()
            self._backlog_empty.clear()
            log.info("new XMPP session: publishing the last %d events again", len(recent))
        recent.clear()

    async def _publish(self, receiver: EventReceiver, attempt: PublishAttempt) -> None:
        event = attempt.event
        if attempt.retry:
            self.stats.publish_retries += 1
        try:
            published = await receiver.publish(event)
        except XmppClosed:
            self.backlog.failed(event, time.monotonic())
        except (XmppError, OSError) as exc:
            self.stats.publish_failures += 1
            delay = self.backlog.failed(event, time.monotonic())
            self._problems.warning(
                "publish",
                "publishing %s v%d failed (%s); retrying in %.1f s, %d events waiting",
                event.id,
                event.version,
                exc,
                delay,
                len(self.backlog),
            )
        except Exception as exc:  # a bug here must not end the publisher: log, retry later
            self.stats.publish_failures += 1
            self.backlog.failed(event, time.monotonic())
            log.error("publishing %s v%d failed", event.id, event.version, exc_info=exc)
        else:
            now = time.monotonic()
            committed = self.backlog.succeeded(event, now)
            if published:
                self.stats.published += 1
                self._recent.append((now, event))
                if committed is not None:
                    self._published_stage.observe(max(0.0, now - committed))
            else:
                self.stats.publish_stale += 1
            if attempt.retry and not self.backlog.failing:
                log.info("PubSub publishing works again; %d events to publish", len(self.backlog))
        finally:
            self._publishing -= 1
            self._publish_wake.set()
            if len(self.backlog) < PUBLISH_BACKLOG_MAX:
                self._backlog_room.set()
            if not self.backlog:
                self._backlog_empty.set()

    async def drain(self, timeout_s: float) -> None:
        """Return once the backlog is published, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._backlog_empty.wait(), timeout_s)

    # -- Prosody's archive ------------------------------------------------------------------

    async def watch_archive(self, receiver: EventReceiver) -> None:
        """Read the figures of Prosody's archive guard now and then."""
        complained = False
        while True:
            if receiver.online:
                try:
                    health = await receiver.archive_health()
                except XmppError as exc:
                    if not complained:
                        log.warning(
                            "cannot read Prosody's archive figures (%s): archive write failures "
                            "stay unseen here; is mod_archive_guard loaded (deploy/prosody)?",
                            exc,
                        )
                        complained = True
                else:
                    complained = False
                    self.note_archive(health)
            await asyncio.sleep(ARCHIVE_POLL_INTERVAL_S)

    def note_archive(self, health: ArchiveHealth) -> None:
        """Keep the guard's latest figures; log what is new."""
        previous = self.archive
        if health.failures and (previous is None or health.failures > previous.failures):
            log.warning(
                "Prosody could not archive %d messages so far (%d wait in its spool, %d "
                "dropped): %s",
                health.failures,
                health.pending,
                health.dropped,
                health.error or "no reason given",
            )
        elif previous is not None and previous.pending and not health.pending:
            log.info("Prosody archived the %d spooled messages", previous.pending)
        self.archive = health
        self._archive_read_at = time.monotonic()

    def archive_failure_age(self) -> float | None:
        """Return the seconds since Prosody's last failed archive write, if it reported one."""
        if self.archive is None or self.archive.seconds_since_failure is None:
            return None
        return self.archive.seconds_since_failure + time.monotonic() - self._archive_read_at

    # -- figures ----------------------------------------------------------------------------

    def health(self, receiver: EventReceiver) -> dict[str, Any]:
        """Return the /health answer: "ok", or "degraded" with the reasons."""
        reasons: list[str] = []
        if not receiver.online:
            reasons.append("XMPP session down")
        if not self.db_reachable:
            reasons.append("MySQL unreachable")
        failing = self.backlog.failing
        if failing:
            reasons.append(f"{failing} events wait for a PubSub publish to succeed")
        archive: dict[str, Any] | None = None
        if self.archive is not None:
            age = self.archive_failure_age()
            archive = {
                "write_failures": self.archive.failures,
                "spooled": self.archive.pending,
                "recovered": self.archive.recovered,
                "dropped": self.archive.dropped,
                "seconds_since_failure": None if age is None else round(age),
                "last_error": self.archive.error,
            }
            if age is not None and age < ARCHIVE_FAILURE_RECENT_S:
                reasons.append(
                    f"{self.archive.failures} archive writes failed in Prosody, the last "
                    f"{age:.0f} s ago"
                )
            if self.archive.pending:
                reasons.append(f"{self.archive.pending} messages wait in Prosody's spool")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "xmpp_connected": receiver.online,
            "database_reachable": self.db_reachable,
            "queue": self.queue.qsize(),
            "publish_backlog": len(self.backlog),
            "archive": archive,
        }

    def counters(self) -> dict[str, Any]:
        return {
            "received": self.stats.received,
            "stored": self.stats.stored,
            "unchanged": self.stats.unchanged,
            "published": self.stats.published,
            "publish_stale": self.stats.publish_stale,
            "publish_failures": self.stats.publish_failures,
            "publish_retries": self.stats.publish_retries,
            "republished": self.stats.republished,
            "publish_backlog": len(self.backlog),
            "batches": self.stats.batches,
            "store_errors": self.stats.store_errors,
            "archive_write_failures": self.archive.failures if self.archive else 0,
        }

    def close(self) -> None:
        self._db.shutdown(wait=True)
        self.store.close()


# name, help; each becomes roadwatch_collector_<name>_total.
_COUNTERS = (
    ("received", "events handed to the collector by the XMPP receiver"),
    ("stored", "events that inserted or replaced a row (a higher version)"),
    ("unchanged", "events already stored at that version or a higher one"),
    ("published", "events published to their PubSub node"),
    ("publish_stale", "publishes skipped because a newer version was published"),
    ("publish_failures", "PubSub publishes that failed (each is retried)"),
    ("publish_retries", "PubSub publishes tried again after a failure"),
    ("republished", "events published again because a new XMPP session began"),
    ("store_errors", "batches that MySQL refused or could not take"),
    ("batches", "batches committed to MySQL"),
)
_RECEIVER_COUNTERS = (
    ("from_archive", "messages replayed from the XEP-0313 archive"),
    ("foreign", "messages from anyone but the gateway, ignored"),
    ("bad_payload", "messages with an invalid event payload, ignored"),
    ("handler_retries", "events handed again to the store after it failed"),
    ("overflows", "live messages left to the archive because the inbox was full"),
    ("catch_ups", "archive catch-ups"),
    ("reconnects", "XMPP reconnections"),
)


class CollectorFigures(MetricsSource):
    """The collector's counters and gauges, read from its state at each scrape."""

    def __init__(self, collector: Collector, receiver: EventReceiver) -> None:
        self._collector = collector
        self._receiver = receiver

    def collect(self) -> Iterable[Metric]:
        collector, stats = self._collector, self._collector.stats
        for name, text in _COUNTERS:
            yield CounterMetricFamily(
                f"roadwatch_collector_{name}", text, value=getattr(stats, name)
            )
        receiver_stats = self._receiver.stats
        for name, text in _RECEIVER_COUNTERS:
            yield CounterMetricFamily(
                f"roadwatch_collector_xmpp_{name}", text, value=getattr(receiver_stats, name)
            )
        yield GaugeMetricFamily(
            "roadwatch_collector_queue",
            "events waiting for a batch",
            value=collector.queue.qsize(),
        )
        yield GaugeMetricFamily(
            "roadwatch_collector_publish_backlog",
            "events stored but not yet published to PubSub",
            value=len(collector.backlog),
        )
        yield GaugeMetricFamily(
            "roadwatch_collector_publish_failing",
            "events of the backlog whose last publish failed",
            value=collector.backlog.failing,
        )
        yield GaugeMetricFamily(
            "roadwatch_collector_xmpp_connected",
            "1 while the XMPP session is up",
            value=int(self._receiver.online),
        )
        yield GaugeMetricFamily(
            "roadwatch_collector_database_reachable",
            "1 while MySQL answers",
            value=int(collector.db_reachable),
        )
        archive = collector.archive
        if archive is None:
            return
        # Prosody's own counts since it started (deploy/prosody/modules/mod_archive_guard.lua):
        # they fall back to zero when Prosody restarts, as counters of a restarted process do.
        yield CounterMetricFamily(
            "roadwatch_collector_archive_write_failures",
            "messages Prosody could not archive (MySQL failing), since Prosody started",
            value=archive.failures,
        )
        yield CounterMetricFamily(
            "roadwatch_collector_archive_recovered",
            "messages Prosody archived later from its spool, since Prosody started",
            value=archive.recovered,
        )
        yield CounterMetricFamily(
            "roadwatch_collector_archive_dropped",
            "failed archive writes Prosody could not spool, since Prosody started",
            value=archive.dropped,
        )
        yield GaugeMetricFamily(
            "roadwatch_collector_archive_spooled",
            "messages waiting in Prosody's spool for the archive",
            value=archive.pending,
        )
        age = collector.archive_failure_age()
        if age is not None:
            yield GaugeMetricFamily(
                "roadwatch_collector_archive_failure_age_seconds",
                "seconds since Prosody's last failed archive write",
                value=age,
            )


async def run(settings: Settings) -> None:
    """Run the collector until SIGTERM or SIGINT."""
    status = StatusFile(settings.run_dir, "collector")
    status.write("starting")
    collector = Collector(settings, EventStore.connect(settings))
    receiver = EventReceiver(
        settings,
        on_event=collector.on_event,
        load_position=collector.load_position,
        save_position=collector.save_position,
    )
    collector.registry.register(CollectorFigures(collector, receiver))
    metrics = MetricsServer(
        "127.0.0.1",
        settings.collector_metrics_port,
        collector.registry,
        lambda: collector.health(receiver),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            receiver_task = tasks.create_task(receiver.run())
            helpers = [
                tasks.create_task(collector.write_batches()),
                tasks.create_task(collector.publish_forever(receiver)),
                tasks.create_task(collector.watch_archive(receiver)),
                tasks.create_task(collector.check_database()),
            ]
            if settings.collector_metrics_port:
                helpers.append(tasks.create_task(metrics.run()))
            await receiver.wait_caught_up()
            log.info(
                "collector ready: %s → MySQL and %s",
                settings.collector_jid,
                settings.pubsub_service,
            )
            while not stop.is_set():
                status.write("ready", {**collector.counters(), **receiver.counters()})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)
            if receiver.online:
                await collector.drain(STOP_PUBLISH_DRAIN_S)
            if collector.backlog:
                log.warning("stopping with %d events not yet published", len(collector.backlog))
            await receiver.close()
            receiver_task.cancel()
            for task in helpers:
                task.cancel()
    finally:
        collector.close()
        status.remove()
    log.info("collector stopped: %s", collector.counters())


def main(settings: Settings) -> None:
    """Entry point of `roadwatch collector`."""
    asyncio.run(run(settings))
