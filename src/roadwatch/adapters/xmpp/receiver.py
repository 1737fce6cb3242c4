"""The collector's side of docs/contract/xmpp.md §4, §5: receive events, catch up from the archive,
publish to PubSub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from roadwatch.adapters.xmpp.connection import Backoff, Connection
from roadwatch.adapters.xmpp.errors import (
    ArchiveError,
    PubSubError,
    XmppClosed,
    XmppError,
    XmppUnavailable,
)
from roadwatch.adapters.xmpp.stanza import (
    archived_message,
    event_element,
    event_from_message,
    is_archive_result,
    stanza_id,
)
from roadwatch.domain.events import PUBSUB_NODES, Event, InvalidEvent
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], Awaitable[None]]
PositionLoader = Callable[[], Awaitable[str | None]]
PositionSaver = Callable[[str], Awaitable[None]]

RESOURCE = "collector"
# Live messages waiting for the handler. Past this the newest are left to the archive: the
# receiver notes the overflow and catches up again (every message to us is archived, XEP-0313).
INBOX_SIZE = 5_000
# Calls of the handler running at once, so that a handler that waits for a batched database
# write does not serialise the stream; positions are saved only past completed calls.
MAX_IN_FLIGHT = 256
ARCHIVE_PAGE_SIZE = 250  # deploy/prosody allows up to 500 per query
ARCHIVE_TIMEOUT_S = 30
PUBSUB_TIMEOUT_S = 10.0
MAX_PUBLISHES_IN_FLIGHT = 256
# Save the archive position at most this often (and at the end of each catch-up and at close).
SAVE_INTERVAL_S = 1.0
CLOSE_DRAIN_S = 10.0
# A failing handler (database down) is retried with this back-off until it succeeds.
HANDLER_RETRY_BACKOFF = Backoff(initial_s=0.1, factor=2.0, maximum_s=10.0)
# One log line per kind of rejected message at most this often; the counters keep counting.
REJECTION_LOG_INTERVAL_S = 60.0
# How many event ids the publisher remembers to refuse publishing an older version over a newer.
PUBLISHED_VERSIONS_KEPT = 50_000
# deploy/prosody/modules/mod_archive_guard.lua answers this query with its figures.
ARCHIVE_GUARD_NS = "urn:roadwatch:archive-guard:0"
ARCHIVE_GUARD_TIMEOUT_S = 10.0

# When the message carrying the event being handled reached the receiver (time.monotonic()):
# set around each call of the handler, for latency figures.
RECEIVED_AT: ContextVar[float] = ContextVar("roadwatch_xmpp_received_at")

NODE_CONFIG_FORM = "http://jabber.org/protocol/pubsub#node_config"
NODE_CONFIG: dict[str, str] = {
    "pubsub#access_model": "open",  # any user of the server, anonymous included, may read
    "pubsub#publish_model": "publishers",  # only the owner (the collector) publishes
    "pubsub#persist_items": "1",
    # Items are the current state of the events (docs/contract/xmpp.md §5).
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never",
    "pubsub#deliver_payloads": "1",
    "pubsub#notification_type": "headline",  # never stored offline for a browser
    "pubsub#type": "urn:xmpp:json:0",
}


@dataclass(slots=True)
class ReceiverStats:
    """Counters of one EventReceiver (they only grow)."""

    received: int = 0
    from_archive: int = 0
    events: int = 0
    foreign: int = 0
    bad_payload: int = 0
    handler_retries: int = 0
    overflows: int = 0
    catch_ups: int = 0
    published: int = 0
    publish_stale: int = 0
    publish_errors: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class ArchiveHealth:
    """What Prosody's archive guard reports: failed archive writes and their spool."""

    failures: int  # archive writes that failed since Prosody started
    recovered: int  # spooled messages appended to the archive later
    dropped: int  # failed writes the full spool could not keep
    pending: int  # messages in the spool, waiting for the archive
    seconds_since_failure: int | None  # None: no failure since Prosody started
    error: str | None  # the storage's reason for the last failure


def archive_health_from(query: ET.Element) -> ArchiveHealth:
    """Read the guard's answer; raise ValueError when it is not one."""
    figures = query.find(f"{{{ARCHIVE_GUARD_NS}}}archive")
    if figures is None:
        raise ValueError("no <archive/> in the archive guard's answer")

    def count(name: str) -> int:
        value = int(figures.get(name, ""))
        if value < 0:
            raise ValueError(f"negative {name}")
        return value

    age = figures.get("seconds-since-failure")
    error = figures.findtext(f"{{{ARCHIVE_GUARD_NS}}}error")
    return ArchiveHealth(
        failures=count("failures"),
        recovered=count("recovered"),
        dropped=count("dropped"),
        pending=count("pending"),
        seconds_since_failure=None if age is None else max(0, int(age)),
        error=error[:200] if error else None,
    )


@dataclass(slots=True)
class _Inbound:
    message: ET.Element
    # Where the archive stands once this message is handled, if that is known for sure.
    position: str | None
    # When it reached us (time.monotonic()), for the handler's latency figures.
    received: float


@dataclass(slots=True)
class _Slot:
    position: str | None
    done: bool = False


class ThrottledLog:
    """Log each kind of problem at most once per interval, saying how many were not logged."""

    def __init__(
        self, logger: logging.Logger = log, interval_s: float = REJECTION_LOG_INTERVAL_S
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def warning(self, kind: str, text: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._unlogged[kind] += 1
            return
        self._last[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        suffix = f" ({unlogged} more since the last report)" if unlogged else ""
        self._log.warning(text + suffix, *args)


# Contract with the caller (docs/contract/xmpp.md §4, docs/contract/targets.md §4): `on_event`
# returns once the event is stored. Up to `max_in_flight` calls run at once, so a handler that waits
# for a batched write does not serialise the stream; a call that raises is retried with back-off
# until it succeeds, so it should raise only for transient failures (the database being down) and
# deal itself with the events it refuses. On every (re)connect the receiver replays its XEP-0313
# archive after the position from `load_position` (the whole archive when that is None), and reports
# through `save_position` the newest archive id up to which every message was handled. An event may
# thus arrive twice (live and from the archive): the handler must be idempotent by id and version.
# Messages from anyone but the gateway, and bad payloads, are counted and skipped.
class EventReceiver:
    """Receive the gateway's events as collector@, losing none across restarts."""

    def __init__(
        self,
        settings: Settings,
        on_event: EventHandler,
        load_position: PositionLoader,
        save_position: PositionSaver,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        inbox_size: int = INBOX_SIZE,
        page_size: int = ARCHIVE_PAGE_SIZE,
    ) -> None:
        self._on_event = on_event
        self._load_position = load_position
        self._save_position = save_position
        self._inbox_size = inbox_size
        self._page_size = page_size
        self._own = settings.collector_jid
        self._gateway = settings.gateway_jid
        self._domain = settings.xmpp_domain
        self._service = settings.pubsub_service
        self._stats = ReceiverStats()
        self._rejections = ThrottledLog()
        self._inbox: asyncio.Queue[_Inbound] = asyncio.Queue(inbox_size)
        self._order: deque[_Slot] = deque()
        self._window = asyncio.Semaphore(max_in_flight)
        self._publishing = asyncio.Semaphore(MAX_PUBLISHES_IN_FLIGHT)
        self._published: OrderedDict[str, int] = OrderedDict()
        # The newest archive id up to which everything was handled, and the one last saved.
        self._position: str | None = None
        self._position_loaded = False
        self._saved: str | None = None
        self._dirty = asyncio.Event()
        # Set while live messages arrive in archive order right after a complete catch-up.
        self._in_sync = asyncio.Event()
        self._resync = asyncio.Event()
        # Set when the inbox is less than half full (waited on by the archive replay).
        self._room = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._connection = Connection(
            jid=f"{settings.collector_jid}/{RESOURCE}",
            password=settings.xmpp_collector_password.get_secret_value(),
            host=settings.xmpp_host,
            port=settings.xmpp_port,
            plugins=("xep_0004", "xep_0060", "xep_0313"),
            presence=True,
            setup=self._setup,
            ca_file=settings.tls_trusted_ca,
        )

    # -- public -----------------------------------------------------------------------------

    @property
    def stats(self) -> ReceiverStats:
        """Return the counters, reconnects included."""
        self._stats.reconnects = self._connection.reconnects
        return self._stats

    @property
    def online(self) -> bool:
        return self._connection.online

    @property
    def sessions(self) -> int:
        """Count the sessions opened so far (a new one after each reconnection)."""
        return self._connection.sessions

    @property
    def position(self) -> str | None:
        """Return the newest archive id up to which every message was handled."""
        return self._position

    def counters(self) -> dict[str, int]:
        """Return the counters as a plain mapping, for status reports."""
        stats = self.stats
        return {f"xmpp_{name}": getattr(stats, name) for name in ReceiverStats.__slots__}

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once a session is up (raise XmppUnavailable after `timeout_s`)."""
        await self._connection.wait_online(timeout_s)

    async def wait_caught_up(self, timeout_s: float | None = None) -> None:
        """Return once the archive was replayed and live messages flow (XmppUnavailable if not)."""
        try:
            await asyncio.wait_for(self._in_sync.wait(), timeout_s)
        except TimeoutError as exc:
            raise XmppUnavailable(f"not caught up with the archive within {timeout_s} s") from exc

    async def run(self) -> None:
        """Receive until `close()`; raise XmppAuthError if the server refuses our credentials."""
        failure: XmppError | None = None
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            consumer = tasks.create_task(self._consume())
            saver = tasks.create_task(self._save_periodically())
            try:
                await self._connection.run(self._on_online)
            except XmppError as exc:
                failure = exc
            except asyncio.CancelledError:
                # Cancelled from outside: stop at once, like a crash; the archive keeps the rest.
                self._in_flight.clear()
                raise
            else:
                await self._drain()
            finally:
                for task in (consumer, saver, *self._in_flight):
                    task.cancel()
                self._tasks = None
        await self._save_now()
        if failure is not None:
            raise failure

    async def close(self) -> None:
        """End the session; `run()` then finishes the events in hand and returns."""
        self._connection.close()

    async def publish(self, event: Event, timeout_s: float = PUBSUB_TIMEOUT_S) -> bool:
        """Publish `event` as item `event.id` of its node; return False if a newer one was."""
        # Raises XmppUnavailable when no session comes up within `timeout_s`, XmppClosed once
        # close() was called, PubSubError when the service refuses.
        if self._connection.closing:
            raise XmppClosed("the event receiver is closing")
        newest = self._published.get(event.id)
        if newest is not None and newest > event.version:
            self._stats.publish_stale += 1
            return False
        client = await self._connection.wait_online(timeout_s)
        node = event.type.pubsub_node
        async with self._publishing:
            try:
                try:
                    await self._publish_item(client, node, event, timeout_s)
                except PubSubError as exc:
                    if exc.condition != "item-not-found":
                        raise
                    # The node was deleted behind our back: the nodes always exist
                    # (docs/contract/xmpp.md §5).
                    await self._ensure_node(client, node)
                    await self._publish_item(client, node, event, timeout_s)
            except PubSubError:
                self._stats.publish_errors += 1
                raise
        self._published[event.id] = max(event.version, newest or 0)
        self._published.move_to_end(event.id)
        while len(self._published) > PUBLISHED_VERSIONS_KEPT:
            self._published.popitem(last=False)
        self._stats.published += 1
        return True

    async def archive_health(self, timeout_s: float = ARCHIVE_GUARD_TIMEOUT_S) -> ArchiveHealth:
        """Ask Prosody's archive guard for its figures (XmppUnavailable when offline)."""
        client = self._connection.client
        if client is None or not self._connection.online:
            raise XmppUnavailable("no XMPP session to ask the archive guard")
        iq: Any = client.make_iq_get(ito=self._domain)
        iq.xml.append(ET.Element(f"{{{ARCHIVE_GUARD_NS}}}query"))
        try:
            result = await iq.send(timeout=timeout_s)
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            raise ArchiveError(f"archive figures refused: {condition}", condition) from exc
        except IqTimeout as exc:
            raise ArchiveError("archive figures timed out", "timeout") from exc
        query = result.xml.find(f"{{{ARCHIVE_GUARD_NS}}}query")
        try:
            if query is None:
                raise ValueError("no <query/> in the answer")
            return archive_health_from(query)
        except ValueError as exc:
            raise ArchiveError(f"bad archive figures: {exc}", "bad-request") from exc

    # -- session ----------------------------------------------------------------------------

    def _setup(self, client: ClientXMPP) -> None:
        client.add_event_handler("message", self._on_message)
        client.add_event_handler("disconnected", self._on_disconnected)

    def _on_disconnected(self, _: Any) -> None:
        self._in_sync.clear()

    async def _on_online(self, client: ClientXMPP, resumed: bool) -> None:
        """Make sure the nodes exist, catch up, and catch up again after any overflow."""
        self._in_sync.clear()
        if not resumed:
            try:
                await self._ensure_nodes(client)
            except PubSubError as exc:
                log.error("cannot prepare the PubSub nodes on %s: %s", self._service, exc)
        self._resync.set()
        while True:
            await self._resync.wait()
            self._resync.clear()
            await self._catch_up(client)

    async def _catch_up(self, client: ClientXMPP) -> None:
        """Queue every archived message after the saved position, then go live."""
        if not self._position_loaded:
            self._position = await self._load_position()
            self._saved = self._position
            self._position_loaded = True
        after = self._position
        overflows = self._stats.overflows
        replayed = 0
        log.info("catching up from the archive after %s", after or "its beginning")
        while True:
            try:
                fin, results = await self._archive_page(client, after)
            except ArchiveError as exc:
                if exc.condition == "item-not-found" and after is not None:
                    # The position expired from the archive (archive_expires_after).
                    log.warning("archive position %s is gone; replaying the whole archive", after)
                    after = None
                    continue
                raise
            for result in results:
                archived = archived_message(result.xml)
                if archived is None:
                    continue
                while self._inbox.qsize() >= self._inbox_size // 2:
                    # Leave room for live messages, or they would overflow during a long replay.
                    self._room.clear()
                    await self._room.wait()
                await self._inbox.put(
                    _Inbound(archived.message, archived.archive_id, time.monotonic())
                )
                self._stats.from_archive += 1
                replayed += 1
                after = archived.archive_id
            if fin.get("complete") == "true" or not results:
                break
        self._stats.catch_ups += 1
        if self._stats.overflows != overflows:
            self._resync.set()  # live messages were dropped meanwhile: fetch them too
        else:
            self._in_sync.set()
        log.info("caught up: %d archived messages replayed", replayed)

    async def _archive_page(
        self, client: ClientXMPP, after: str | None
    ) -> tuple[ET.Element, list[Any]]:
        rsm: dict[str, Any] = {"max": self._page_size}
        if after is not None:
            rsm["after"] = after
        try:
            iq = await client.plugin["xep_0313"].retrieve(
                jid=None, rsm=rsm, timeout=ARCHIVE_TIMEOUT_S
            )
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            raise ArchiveError(f"archive query refused: {condition}", condition) from exc
        except IqTimeout as exc:
            raise ArchiveError("archive query timed out", "timeout") from exc
        return iq["mam_fin"].xml, list(iq["mam"]["results"])

    def _on_message(self, message: Any) -> None:
        """Queue a live message (runs in slixmpp's dispatch; never blocks)."""
        xml = message.xml
        if is_archive_result(xml) or message["type"] in ("error", "groupchat", "headline"):
            return  # archive results come through the query; the rest carries no event
        position = stanza_id(xml, self._own) if self._in_sync.is_set() else None
        try:
            self._inbox.put_nowait(_Inbound(xml, position, time.monotonic()))
        except asyncio.QueueFull:
            self._stats.overflows += 1
            self._in_sync.clear()
            self._resync.set()
            self._rejections.warning(
                "overflow",
                "inbox full (%d): leaving live messages to the archive",
                self._inbox_size,
            )

    # -- handling ---------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            item = await self._inbox.get()
            if self._inbox.qsize() < self._inbox_size // 2:
                self._room.set()
            try:
                await self._handle(item)
            finally:
                self._inbox.task_done()

    async def _handle(self, item: _Inbound) -> None:
        self._stats.received += 1
        slot = _Slot(item.position)
        self._order.append(slot)
        event = self._accept(item.message)
        if event is None:
            slot.done = True
            self._advance()
            return
        await self._window.acquire()
        assert self._tasks is not None
        task = self._tasks.create_task(self._deliver(event, slot, item.received))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _accept(self, message: ET.Element) -> Event | None:
        try:
            sender = JID(message.get("from", "")).bare
        except ValueError:  # slixmpp's InvalidJID
            sender = ""
        if sender != self._gateway:
            self._stats.foreign += 1
            self._rejections.warning(
                "foreign", "ignoring a message from %.100s: only the gateway sends events", sender
            )
            return None
        try:
            return event_from_message(message)
        except InvalidEvent as exc:
            self._stats.bad_payload += 1
            self._rejections.warning("payload", "ignoring a bad event payload: %.200s", exc)
            return None

    async def _deliver(self, event: Event, slot: _Slot, received: float) -> None:
        # This task's own context: the handler reads it, no other delivery sees it.
        RECEIVED_AT.set(received)
        delays = iter(HANDLER_RETRY_BACKOFF.delays())
        try:
            while True:
                try:
                    await self._on_event(event)
                    break
                except Exception as exc:
                    self._stats.handler_retries += 1
                    self._rejections.warning(
                        "handler", "event handler failed for %s, retrying: %r", event.id, exc
                    )
                    await asyncio.sleep(next(delays))
        finally:
            self._window.release()
        self._stats.events += 1
        slot.done = True
        self._advance()

    def _advance(self) -> None:
        """Move the position past every handled message at the head of the order."""
        moved = False
        while self._order and self._order[0].done:
            slot = self._order.popleft()
            if slot.position is not None:
                self._position = slot.position
                moved = True
        if moved:
            self._dirty.set()

    async def _drain(self) -> None:
        """Let the handler finish the messages in hand, for a while."""
        deadline = time.monotonic() + CLOSE_DRAIN_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._inbox.join(), CLOSE_DRAIN_S)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=max(0.0, deadline - time.monotonic()))
        if self._order:
            log.warning(
                "stopping with %d messages unhandled; the archive keeps them", len(self._order)
            )

    async def _save_periodically(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._save_now()
            await asyncio.sleep(SAVE_INTERVAL_S)

    async def _save_now(self) -> None:
        position = self._position
        if position is None or position == self._saved:
            return
        try:
            await self._save_position(position)
        except Exception as exc:
            self._dirty.set()  # try again at the next round
            self._rejections.warning("save", "could not save the archive position: %r", exc)
            return
        self._saved = position

    # -- PubSub -----------------------------------------------------------------------------

    async def _publish_item(
        self, client: ClientXMPP, node: str, event: Event, timeout_s: float
    ) -> None:
        try:
            pubsub: Any = client.plugin["xep_0060"]
            await pubsub.publish(
                self._service, node, id=event.id, payload=event_element(event), timeout=timeout_s
            )
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            raise PubSubError(f"publishing to {node} refused: {condition}", condition) from exc
        except IqTimeout as exc:
            raise PubSubError(f"publishing to {node} timed out", "timeout") from exc

    async def _ensure_nodes(self, client: ClientXMPP) -> None:
        for node in PUBSUB_NODES:
            await self._ensure_node(client, node)

    async def _ensure_node(self, client: ClientXMPP, node: str) -> None:
        """Create `node` open and persistent, or bring an existing one to that configuration."""
        pubsub: Any = client.plugin["xep_0060"]
        try:
            await pubsub.create_node(
                self._service, node, config=self._node_form(client, node), timeout=PUBSUB_TIMEOUT_S
            )
            log.info("created PubSub node %s on %s", node, self._service)
            return
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            if condition != "conflict":
                raise PubSubError(f"creating node {node} refused: {condition}", condition) from exc
        except IqTimeout as exc:
            raise PubSubError(f"creating node {node} timed out", "timeout") from exc
        try:
            await pubsub.set_node_config(
                self._service, node, self._node_form(client, node), timeout=PUBSUB_TIMEOUT_S
            )
        except IqError as exc:
            condition = exc.iq["error"]["condition"]
            raise PubSubError(f"configuring node {node} refused: {condition}", condition) from exc
        except IqTimeout as exc:
            raise PubSubError(f"configuring node {node} timed out", "timeout") from exc

    @staticmethod
    def _node_form(client: ClientXMPP, node: str) -> Any:
        forms: Any = client.plugin["xep_0004"]
        form = forms.make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value=NODE_CONFIG_FORM)
        form.add_field(var="pubsub#title", value=f"RoadWatch {node.replace('_', ' ')} events")
        for var, value in NODE_CONFIG.items():
            form.add_field(var=var, value=value)
        return form
