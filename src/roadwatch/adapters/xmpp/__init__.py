"""XMPP adapter (docs/contract/xmpp.md §3, §4, §5): the gateway's EventSender and the collector's
EventReceiver."""

# Nothing connects at import: each client is created inside its `run()`, in the running loop.

from roadwatch.adapters.xmpp.connection import RECONNECT_BACKOFF, Backoff
from roadwatch.adapters.xmpp.errors import (
    ArchiveError,
    PubSubError,
    XmppAuthError,
    XmppClosed,
    XmppError,
    XmppUnavailable,
)
from roadwatch.adapters.xmpp.receiver import (
    EventHandler,
    EventReceiver,
    PositionLoader,
    PositionSaver,
    ReceiverStats,
)
from roadwatch.adapters.xmpp.sender import EventSender, SenderStats

__all__ = [
    "RECONNECT_BACKOFF",
    "ArchiveError",
    "Backoff",
    "EventHandler",
    "EventReceiver",
    "EventSender",
    "PositionLoader",
    "PositionSaver",
    "PubSubError",
    "ReceiverStats",
    "SenderStats",
    "XmppAuthError",
    "XmppClosed",
    "XmppError",
    "XmppUnavailable",
]
