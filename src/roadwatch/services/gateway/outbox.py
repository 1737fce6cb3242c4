"""Outbox stage: events in the order they were produced, kept until XMPP acknowledges them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from roadwatch.adapters.xmpp import XmppClosed
from roadwatch.domain.events import Event

log = logging.getLogger(__name__)

# Events produced but not yet handed to the XMPP sender; beyond this the intake stops reading,
# so back-pressure reaches the broker (which queues) instead of memory growing.
OUTBOX_LIMIT = 10_000
# Reading resumes once the backlog is down to this share of the limit.
RESUME_SHARE = 0.5


class EventSink(Protocol):
    """Where the outbox sends events (the XMPP EventSender, or a fake in tests)."""

    async def send(self, event: Event) -> None: ...

    def acknowledged(self) -> int:
        """Count the events the server has acknowledged so far."""
        ...


class Outbox:
    """Unsent events, then events sent but not acknowledged, both oldest first.

    Everything runs on the event loop. An event moves from unsent to in flight with no await
    in between, so a snapshot taken on the loop always finds it in one of the two.
    """

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._limit = limit
        self._resume_at = int(limit * RESUME_SHARE)
        # (event, perf_counter when it was produced): the time feeds the "sent" stage figure.
        self._unsent: deque[tuple[Event, float]] = deque()
        self._inflight: deque[tuple[Event, float]] = deque()
        self._acked = 0
        self._ready = asyncio.Event()
        self._emptied = asyncio.Event()
        self._full_listeners: list[Callable[[bool], None]] = []
        self._holding = False
        self.forwarded = 0
        self.blocked = 0
        # Told how long each acknowledged event took from production to acknowledgement.
        self.on_acknowledged: Callable[[float], None] | None = None

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def full(self) -> bool:
        return len(self._unsent) >= self._limit

    def on_full(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(True)` when the outbox fills up and `listener(False)` once it has room."""
        self._full_listeners.append(listener)

    def put(self, events: Iterable[Event]) -> None:
        """Queue events for sending (never blocks: the intake pauses instead)."""
        now = time.perf_counter()
        self._unsent.extend((event, now) for event in events)
        self._ready.set()
        if not self._holding and self.full:
            self._holding = True
            self.blocked += 1
            if self.blocked == 1 or self.blocked % 100 == 0:
                log.warning("outbox full (%d events): the intake pauses", len(self._unsent))
            for listener in self._full_listeners:
                listener(True)

    def pending(self) -> list[Event]:
        """Return every event not acknowledged yet, oldest first."""
        return [event for event, _at in (*self._inflight, *self._unsent)]

    def acknowledge(self, acked_total: int) -> None:
        """Forget the events the server acknowledged; acknowledgements come in sending order."""
        inflight = self._inflight
        observe = self.on_acknowledged
        now = time.perf_counter()
        while self._acked < acked_total and inflight:
            _event, produced_at = inflight.popleft()
            self._acked += 1
            if observe is not None:
                observe(now - produced_at)

    async def forward(self, sink: EventSink) -> None:
        """Hand events to `sink` in order until it closes."""
        unsent = self._unsent
        while True:
            while unsent:
                item = unsent.popleft()
                self._inflight.append(item)
                self.forwarded += 1
                if self._holding and len(unsent) <= self._resume_at:
                    self._holding = False
                    for listener in self._full_listeners:
                        listener(False)
                try:
                    await sink.send(item[0])
                except XmppClosed:
                    return
            self._emptied.set()
            self._ready.clear()
            if not unsent:
                await self._ready.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every event has been handed to the sink; tell whether it happened."""
        if self._unsent:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout_s)
        return not self._unsent
