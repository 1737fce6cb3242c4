"""Errors of the XMPP adapter; slixmpp's exceptions are converted into these at the boundary."""

from __future__ import annotations


class XmppError(Exception):
    """Something went wrong talking to the XMPP server."""


class XmppAuthError(XmppError):
    """The server refused our credentials: retrying will not help."""


class XmppUnavailable(XmppError):
    """No session with the server right now (or not within the time allowed)."""


class XmppClosed(XmppError):
    """The client was closed and accepts no more work."""


class PubSubError(XmppError):
    """The PubSub service refused or failed a request (XEP-0060)."""

    def __init__(self, message: str, condition: str = "") -> None:
        super().__init__(message)
        self.condition = condition


class ArchiveError(XmppError):
    """The message archive refused or failed a query (XEP-0313)."""

    def __init__(self, message: str, condition: str = "") -> None:
        super().__init__(message)
        self.condition = condition
