"""XMPP sender stage: the outbox's events to collector@ over one long-lived session.

adapters/xmpp/sender.py keeps the session (XEP-0198 stream management); here the outbox
learns of each acknowledgement as it comes, so it forgets acknowledged events at once and
the "sent" stage is timed from detection to the server's acknowledgement.
"""

from __future__ import annotations

from roadwatch.adapters.xmpp import EventSender
from roadwatch.domain.events import Event
from roadwatch.services.gateway.outbox import Outbox


class SenderSink:
    """Adapts an EventSender to the outbox's EventSink, and reports its acknowledgements."""

    def __init__(self, sender: EventSender, outbox: Outbox) -> None:
        self.sender = sender
        sender.on_acked = outbox.acknowledge

    async def send(self, event: Event) -> None:
        await self.sender.send(event)

    def acknowledged(self) -> int:
        return self.sender.stats.acked
