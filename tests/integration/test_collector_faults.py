"""The collector process through PubSub and archive failures, on a private MariaDB and Prosody.

Each test starts its own MariaDB and Prosody (the session's servers are left alone, since
these tests stop, break and restart them) and runs `roadwatch collector` as a process, with
the test as the gateway (EventSender). What a user would notice is checked: the PubSub item a
browser reads, the rows in MySQL, and the collector's /health and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from slixmpp import JID
from slixmpp.exceptions import IqError

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.adapters.xmpp import EventSender
from roadwatch.adapters.xmpp.connection import make_client
from roadwatch.adapters.xmpp.stanza import PubSubItem, pubsub_items
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout, is_alive, read_pid
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 30.0
# A crashed collector's XEP-0198 session hibernates this long (10 s in deploy/prosody).
HIBERNATION_S = 2


@dataclass
class PrivateStack:
    settings: Settings
    layout: RunLayout
    mariadb: MariaDB
    prosody: Prosody
    collector: PythonService

    def metrics(self) -> dict[str, float]:
        """Return the collector's /metrics as {name{labels}: value}, parsed as Prometheus does."""
        url = f"http://127.0.0.1:{self.settings.collector_metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return samples(text)

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.settings.collector_metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                record: dict[str, Any] = orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            assert error.code == 503
            record = orjson.loads(error.read())
        return record

    def stored(self, event: Event) -> bool:
        """Tell whether MySQL holds `event` at its version or a later one."""
        return not self.missing([event])

    def missing(self, events: list[Event]) -> list[Event]:
        """Return the events MySQL does not hold at their version or a later one."""
        with EventStore.connect(self.settings) as store:
            rows = [store.get_event(event.id) for event in events]
        return [
            event
            for event, row in zip(events, rows, strict=True)
            if row is None or row.version < event.version
        ]


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateStack]:
    """MariaDB, Prosody and a collector of our own, in a folder of our own."""
    monkeypatch.setenv("ROADWATCH_PROSODY_SMACKS_HIBERNATION_S", str(HIBERNATION_S))
    root = Path(tempfile.mkdtemp(prefix="rw-collector-faults-"))
    root.chmod(0o755)  # the servers run as their own users
    settings = private_settings(root)
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    mariadb, prosody = MariaDB(settings, layout), Prosody(settings, layout)
    collector = PythonService("collector", settings, layout, service_probe(settings, "collector"))
    try:
        mariadb.start()
        prosody.start()
        collector.start()
        yield PrivateStack(settings, layout, mariadb, prosody, collector)
    finally:
        collector.stop()
        prosody.stop()
        mariadb.stop()
        if not os.environ.get("ROADWATCH_KEEP_TEST_RUN"):
            shutil.rmtree(root, ignore_errors=True)


def make_event(kind: EventType = EventType.ACCIDENT) -> Event:
    started = 1_780_000_000_000 + secrets.randbelow(10**9)
    return Event(
        id=new_event_id(started, secrets.token_hex(8)),
        type=kind,
        status=EventStatus.INSTANT if kind.pubsub_node == "zone" else EventStatus.ACTIVE,
        version=1,
        started_ms=started,
        updated_ms=started + 1_000,
        ended_ms=None,
        lat=49.25,
        lon=4.03,
        cause_code=2 if kind == EventType.ACCIDENT else None,
        station_ids=("car-1", "car-2"),
        details={},
    )


async def until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `check` (run in a thread: it may block on HTTP or MySQL) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await asyncio.to_thread(check)
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[EventSender]:
    """Send events as the gateway does: one XEP-0198 session, resent until acknowledged."""
    sender = EventSender(settings)
    task = asyncio.create_task(sender.run())
    try:
        await sender.wait_connected(WAIT_S)
        yield sender
    finally:
        await sender.close()
        await asyncio.wait_for(task, WAIT_S)


async def node_item(settings: Settings, event: Event) -> Event | None:
    """Read `event`'s item from its PubSub node as an anonymous browser session would."""
    client = make_client(
        settings.anonymous_domain, "", ("xep_0030", "xep_0060"), sm_window=5, allow_resume=False
    )
    started = asyncio.ensure_future(client.wait_until("session_start", WAIT_S))
    client.connect(settings.xmpp_host, settings.xmpp_port)
    await started
    try:
        pubsub: Any = client.plugin["xep_0060"]
        try:
            result = await pubsub.get_item(
                JID(settings.pubsub_service), event.type.pubsub_node, event.id, timeout=WAIT_S
            )
        except IqError as exc:
            if exc.condition == "item-not-found":
                return None
            raise
        items = list(pubsub_items(result["pubsub"]["items"].xml))
        return items[0].event if items and isinstance(items[0], PubSubItem) else None
    finally:
        gone = client.disconnected
        client.disconnect()
        await asyncio.wait_for(gone, WAIT_S)


async def wait_for_item(settings: Settings, event: Event, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while (item := await node_item(settings, event)) != event:
        if time.monotonic() > deadline:
            raise AssertionError(f"the node holds {item!r}, not {event!r}")
        await asyncio.sleep(0.3)


def run(scenario: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 240))


@contextlib.contextmanager
def events_table_locked(stack: PrivateStack) -> Iterator[None]:
    """Hold the collector's next batch: it waits on the lock, its events in hand."""
    with (
        stack.mariadb.admin_connection(stack.settings.mysql_database) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("LOCK TABLES events WRITE")
        try:
            yield
        finally:
            cur.execute("UNLOCK TABLES")


def test_an_update_stored_while_pubsub_fails_becomes_the_node_item_once_prosody_is_back(
    stack: PrivateStack,
) -> None:
    first = make_event()
    second = first.next_version(station_ids=("car-1", "car-2", "car-3"))
    third = second.next_version(status=EventStatus.CLEARED, ended_ms=first.updated_ms + 5)
    settings = stack.settings

    def publish_failing() -> dict[str, Any] | None:
        health = stack.health()
        return health if any("PubSub" in r for r in health["reasons"]) else None

    async def scenario() -> None:
        async with gateway(settings) as sender:
            await sender.send(first)
            await wait_for_item(settings, first)
            pid = stack.prosody.pid()
            assert pid is not None
            with events_table_locked(stack):
                await sender.send(second)
                await sender.send(third)
                await until(
                    lambda: stack.metrics()["roadwatch_collector_received_total"] >= 3,
                    "the collector to hold both updates",
                )
                os.kill(pid, signal.SIGSTOP)
            try:
                # MySQL takes the updates; their publishes go to a frozen Prosody and time out.
                health = await until(
                    publish_failing, "/health to report the failing publish", timeout_s=60
                )
                assert health["status"] == "degraded"
                assert health["publish_backlog"] == 1  # one entry per event: its newest version
                assert health["database_reachable"]
                assert stack.stored(third)
            finally:
                os.kill(pid, signal.SIGKILL)
            await until(lambda: not is_alive(pid), "Prosody to die")
            await asyncio.to_thread(stack.prosody.start)
            await wait_for_item(settings, third, timeout_s=60)
            figures = await until(
                lambda: (m := stack.metrics())["roadwatch_collector_publish_backlog"] == 0 and m,
                "an empty backlog",
            )
            assert figures["roadwatch_collector_publish_failures_total"] >= 1
            assert figures["roadwatch_collector_publish_retries_total"] >= 1
            assert figures["roadwatch_collector_xmpp_reconnects_total"] >= 1
            assert figures['roadwatch_collector_stage_seconds_count{stage="published"}'] >= 2
            assert figures['roadwatch_collector_stage_seconds_count{stage="stored"}'] >= 3
            await until(lambda: stack.health()["status"] == "ok", "/health back to ok")

    run(scenario())


def test_events_prosody_could_not_archive_reach_mysql_after_the_outage_and_health_tells(
    stack: PrivateStack,
) -> None:
    settings = stack.settings
    warm_up = make_event()
    # Delivered live to the collector, which is killed before MySQL comes back.
    while_online = [make_event(EventType.ZONE_ENTER) for _ in range(3)]
    # Sent while the collector is down: its offline storage is MySQL too.
    while_down = [make_event(EventType.TRAFFIC_JAM) for _ in range(3)]

    async def scenario() -> None:
        async with gateway(settings) as sender:
            await sender.send(warm_up)
            await until(lambda: stack.stored(warm_up), "the first event in MySQL")
            await asyncio.to_thread(stack.mariadb.stop)
            for event in while_online:
                await sender.send(event)
            health = await until(
                lambda: (
                    (h := stack.health()).get("archive")
                    and h["archive"]["write_failures"] >= len(while_online)
                    and h
                ),
                "/health to count the failed archive writes",
            )
            assert health["status"] == "degraded"
            assert not health["database_reachable"]
            assert any("archive writes failed" in reason for reason in health["reasons"])
            assert health["archive"]["spooled"] >= len(while_online)
            figures = stack.metrics()
            assert figures["roadwatch_collector_archive_write_failures_total"] >= 3
            assert figures["roadwatch_collector_archive_spooled"] >= 3
            assert figures["roadwatch_collector_database_reachable"] == 0

            pid = read_pid(stack.layout.pidfile("collector"))
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # what it held in memory is gone
            await until(lambda: not is_alive(pid), "the collector to die")
            for event in while_down:
                await sender.send(event)
            await until(lambda: sender.pending == 0, "Prosody to take every event")
            # Past the crashed session's hibernation: Prosody would bounce what it still held.
            await asyncio.sleep(HIBERNATION_S + 2)

            # Prosody too restarts before MySQL is back: the spool is on its own disk.
            await asyncio.to_thread(stack.prosody.stop)
            await asyncio.to_thread(stack.mariadb.start)
            await asyncio.to_thread(stack.prosody.start)
            await asyncio.to_thread(stack.collector.start)
            await until(
                lambda: not stack.missing(while_online + while_down), "every event in MySQL"
            )
            figures = await until(
                lambda: (
                    (m := stack.metrics()).get("roadwatch_collector_archive_spooled") == 0 and m
                ),
                "the spool to empty",
            )
            assert figures["roadwatch_collector_archive_recovered_total"] >= 6
            assert figures["roadwatch_collector_archive_dropped_total"] == 0

    run(scenario())


def test_items_a_prosody_crash_lost_are_published_again_once_it_is_back(
    stack: PrivateStack,
) -> None:
    settings = stack.settings
    events = [make_event(kind) for kind in (EventType.ACCIDENT, EventType.ZONE_ENTER)]

    def forget_items() -> None:
        """Leave MySQL as a kill -9 amid a round of item writes does: those rows unwritten."""
        with (
            stack.mariadb.admin_connection(settings.prosody_db_name) as conn,
            conn.cursor() as cur,
        ):
            marks = ", ".join(["%s"] * len(events))
            cur.execute(
                f"DELETE FROM prosodyarchive WHERE host = %s AND `key` IN ({marks})",
                (settings.pubsub_service, *(event.id for event in events)),
            )
            assert cur.rowcount == len(events)
            conn.commit()

    async def scenario() -> None:
        async with gateway(settings) as sender:
            for event in events:
                await sender.send(event)
            for event in events:
                await wait_for_item(settings, event)
        pid = stack.prosody.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not is_alive(pid), "Prosody to die")
        await asyncio.to_thread(forget_items)
        await asyncio.to_thread(stack.prosody.start)
        for event in events:
            await wait_for_item(settings, event, timeout_s=60)
        figures = stack.metrics()
        assert figures["roadwatch_collector_republished_total"] >= len(events)
        # Published again, not stored again: the stage histograms time first publishes only.
        assert figures['roadwatch_collector_stage_seconds_count{stage="published"}'] == len(events)

    run(scenario())
