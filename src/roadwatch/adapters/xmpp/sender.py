"""The gateway's side of docs/contract/xmpp.md §3: send each event to collector@ over one long-lived
session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198.stanza import RequestAck

from roadwatch.adapters.xmpp.connection import Connection
from roadwatch.adapters.xmpp.errors import XmppClosed
from roadwatch.adapters.xmpp.stanza import event_element
from roadwatch.domain.events import Event
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# Events waiting for the session. Events are far rarer than vehicle messages, so this absorbs
# minutes of an XMPP outage before `submit` starts to hold the producer.
QUEUE_SIZE = 10_000
# Events handed to the server but not yet acknowledged (XEP-0198); the pump waits beyond this.
MAX_UNACKED = 1_000
# Ask the server for an ack every this many stanzas, and whenever the queue runs empty.
SM_WINDOW = 50
FLUSH_TIMEOUT_S = 10.0
FULL_QUEUE_LOG_INTERVAL_S = 60.0
PREFS_TIMEOUT_S = 10.0


@dataclass(slots=True)
class SenderStats:
    """Counters of one EventSender (read them from any thread; they only grow)."""

    submitted: int = 0
    sent: int = 0
    acked: int = 0
    resent: int = 0
    reconnects: int = 0
    blocked_submits: int = 0
    unsent_at_close: int = 0


# Choices (docs/contract/xmpp.md §3, docs/contract/targets.md §4): `send()` waits while the queue is
# full: back-pressure on the caller (the gateway's outbox), counted in `stats.blocked_submits` and
# logged at a limited rate. No event is ever dropped silently. Events the server has not
# acknowledged (XEP-0198) are sent again on the next session, so the collector may see one twice;
# its store is idempotent by id and version.
class EventSender:
    """Send events to collector@ over one long-lived XEP-0198 session, reconnecting as needed."""

    def __init__(self, settings: Settings, queue_size: int = QUEUE_SIZE) -> None:
        self._settings = settings
        self._recipient = settings.collector_jid
        self._queue_size = queue_size
        self._closed = False
        self._full_logged_at = -FULL_QUEUE_LOG_INTERVAL_S
        self._stats = SenderStats()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._unacked: OrderedDict[str, Event] = OrderedDict()
        # Set whenever the server acknowledges something (waited on by the pump and close()).
        self._progress = asyncio.Event()
        # Told the new total each time the server acknowledges an event (on the loop).
        self.on_acked: Callable[[int], None] | None = None
        self._connection = Connection(
            # "gateway", or "gateway-N" for each instance sharing the load.
            jid=f"{settings.gateway_jid}/{settings.gateway_name}",
            password=settings.xmpp_gateway_password.get_secret_value(),
            host=settings.xmpp_host,
            port=settings.xmpp_port,
            sm_window=SM_WINDOW,
            setup=self._setup,
            ca_file=settings.tls_trusted_ca,
        )

    # -- the event loop ---------------------------------------------------------------------

    async def send(self, event: Event) -> None:
        """Queue `event`, waiting while the queue is full."""
        if self._closed:
            raise XmppClosed("the event sender is closed")
        if self._queue.full():
            self._note_full_queue()
        await self._queue.put(event)
        self._stats.submitted += 1

    @property
    def stats(self) -> SenderStats:
        """Return the counters, reconnects included."""
        self._stats.reconnects = self._connection.reconnects
        return self._stats

    @property
    def pending(self) -> int:
        """Count the events queued or sent but not yet acknowledged by the server."""
        return self._queue.qsize() + len(self._unacked)

    @property
    def online(self) -> bool:
        return self._connection.online

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once a session is up (raise XmppUnavailable after `timeout_s`)."""
        await self._connection.wait_online(timeout_s)

    def counters(self) -> dict[str, int]:
        """Return the counters as a plain mapping, for status reports."""
        stats = self.stats
        return {
            "xmpp_submitted": stats.submitted,
            "xmpp_sent": stats.sent,
            "xmpp_acked": stats.acked,
            "xmpp_resent": stats.resent,
            "xmpp_reconnects": stats.reconnects,
            "xmpp_blocked_submits": stats.blocked_submits,
            "xmpp_pending": self.pending,
        }

    async def run(self) -> None:
        """Keep the session up and send queued events until `close()`."""
        await self._connection.run(self._pump)

    async def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush queued events (until acked or `timeout_s`), then end the session."""
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self._request_ack()
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.1)
        self._stats.unsent_at_close = self.pending
        if self.pending:
            log.error("closing with %d events not acknowledged by the server", self.pending)
        self._connection.close()

    # -- internals --------------------------------------------------------------------------

    def _note_full_queue(self) -> None:
        self._stats.blocked_submits += 1
        now = time.monotonic()
        if now - self._full_logged_at >= FULL_QUEUE_LOG_INTERVAL_S:
            self._full_logged_at = now
            log.warning(
                "XMPP queue full (%d events, %d blocked submits so far): holding the producer",
                self._queue_size,
                self._stats.blocked_submits,
            )

    def _setup(self, client: ClientXMPP) -> None:
        client.add_event_handler("stanza_acked", self._on_acked)

    def _on_acked(self, stanza: Any) -> None:
        if stanza.name != "message":
            return
        if self._unacked.pop(stanza["id"], None) is not None:
            self._stats.acked += 1
            self._progress.set()
            if self.on_acked is not None:
                self.on_acked(self._stats.acked)

    def _request_ack(self) -> None:
        """Ask the server to acknowledge what we sent (XEP-0198 <r/>)."""
        client = self._connection.client
        if client is None or not self._connection.online:
            return
        # Through the send queue, not straight to the socket: the request must follow the
        # messages sent before it, or the answer acknowledges none of them.
        client.send(RequestAck(client))

    async def _pump(self, client: ClientXMPP, resumed: bool) -> None:
        """Send queued events while this session lasts."""
        if not resumed:
            await self._turn_archiving_off(client)
            # A new session: the server lost whatever it had not acknowledged (XEP-0198 §5).
            # With resumption, slixmpp re-sends those itself.
            for event_id, event in list(self._unacked.items()):
                self._stats.resent += 1
                self._send(client, event_id, event)
        while True:
            while len(self._unacked) >= MAX_UNACKED:
                self._request_ack()
                self._progress.clear()
                await self._progress.wait()
            if self._queue.empty():
                self._request_ack()
            event = await self._queue.get()
            # From here to the send there is no await: a cancelled session cannot lose it.
            stanza_id = f"{event.id}.v{event.version}"
            self._unacked[stanza_id] = event
            self._send(client, stanza_id, event)
            self._stats.sent += 1

    def _send(self, client: ClientXMPP, stanza_id: str, event: Event) -> None:
        message = client.make_message(mto=self._recipient, mbody=event.summary(), mtype="chat")
        message["id"] = stanza_id
        message.append(event_element(event))
        message.send()

    async def _turn_archiving_off(self, client: ClientXMPP) -> None:
        """Ask the server not to archive what we send: only collector@'s archive matters."""
        iq: Any = client.make_iq_set()
        prefs = iq.xml.makeelement("{urn:xmpp:mam:2}prefs", {"default": "never"})
        iq.xml.append(prefs)
        try:
            await iq.send(timeout=PREFS_TIMEOUT_S)
        except (IqError, IqTimeout) as exc:
            log.warning("could not turn off archiving of sent messages: %s", exc)
