"""The collector: events from XMPP, stored in MySQL in batches, then published to PubSub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from roadwatch.adapters.mysql.connection import StoreError
from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.xmpp import EventReceiver
from roadwatch.domain.events import Event
from roadwatch.services.status import STATUS_INTERVAL_S, StatusFile
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

ARCHIVE_POSITION_KEY = "xmpp.archive"
# Bounded: a receiver faster than MySQL waits here instead of growing memory.
QUEUE_SIZE = 10_000
# Publishes of one batch run concurrently, at most this many at once.
PUBLISH_CONCURRENCY = 64

T = TypeVar("T")


@dataclass
class _Pending:
    event: Event
    stored: asyncio.Future[None]


@dataclass
class CollectorStats:
    received: int = 0
    stored: int = 0
    unchanged: int = 0
    published: int = 0
    publish_failures: int = 0
    batches: int = 0
    store_errors: int = 0
    last_batch_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Collector:
    """Batches incoming events into one transaction each, then publishes the stored ones."""

    def __init__(self, settings: Settings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.stats = CollectorStats()
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(QUEUE_SIZE)
        # One thread owns the database session: calls never overlap on it.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-db")
        self._publish_slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def _in_db(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, lambda: work(*args, **kwargs))

    async def on_event(self, event: Event) -> None:
        """Return once `event` is stored (the receiver then advances its archive position)."""
        self.stats.received += 1
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(event, stored))
        await stored

    async def load_position(self) -> str | None:
        position: str | None = await self._in_db(self.store.get_state, ARCHIVE_POSITION_KEY)
        return position

    async def save_position(self, position: str) -> None:
        await self._in_db(self.store.set_state, ARCHIVE_POSITION_KEY, position)

    async def write_batches(self, receiver: EventReceiver) -> None:
        """Store what is queued in batches, forever; publish each batch's winners."""
        batch_size = self.settings.collector_batch_size
        flush_s = self.settings.collector_flush_interval_s
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + flush_s
            while len(batch) < batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            await self._store(batch, receiver)

    async def _store(self, batch: list[_Pending], receiver: EventReceiver) -> None:
        started = time.perf_counter()
        try:
            winners: list[Event] = await self._in_db(
                self.store.upsert, [item.event for item in batch]
            )
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("storing %d events failed (%s); the receiver will retry", len(batch), exc)
            for item in batch:
                if not item.stored.done():
                    item.stored.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000
        self.stats.stored += len(winners)
        self.stats.unchanged += len(batch) - len(winners)
        for item in batch:
            if not item.stored.done():
                item.stored.set_result(None)
        # Only what changed a row is published: a replayed older version must never replace
        # the current PubSub item (SPEC §5: a node's items are the current state).
        await asyncio.gather(*(self._publish(receiver, event) for event in winners))

    async def _publish(self, receiver: EventReceiver, event: Event) -> None:
        async with self._publish_slots:
            try:
                if await receiver.publish(event):
                    self.stats.published += 1
            except Exception as exc:  # one failed publish must not stop the store loop
                self.stats.publish_failures += 1
                log.warning("publishing %s v%d failed: %s", event.id, event.version, exc)

    def counters(self) -> dict[str, Any]:
        return {
            "received": self.stats.received,
            "stored": self.stats.stored,
            "unchanged": self.stats.unchanged,
            "published": self.stats.published,
            "publish_failures": self.stats.publish_failures,
            "batches": self.stats.batches,
            "store_errors": self.stats.store_errors,
        }

    def close(self) -> None:
        self._db.shutdown(wait=True)
        self.store.close()


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            receiver_task = tasks.create_task(receiver.run())
            writer_task = tasks.create_task(collector.write_batches(receiver))
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
            await receiver.close()
            receiver_task.cancel()
            writer_task.cancel()
    finally:
        collector.close()
        status.remove()
    log.info("collector stopped: %s", collector.counters())


def main(settings: Settings) -> None:
    """Entry point of `roadwatch collector`."""
    asyncio.run(run(settings))
