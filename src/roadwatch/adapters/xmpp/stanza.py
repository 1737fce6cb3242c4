"""Read and write the wire format of docs/contract/xmpp.md §3: events in XEP-0335 JSON
containers."""

# Pure functions over ElementTree elements, kept apart from any client behaviour.

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from roadwatch.domain.events import Event, InvalidEvent

JSON_NS = "urn:xmpp:json:0"  # XEP-0335
CLIENT_NS = "jabber:client"
MAM_NS = "urn:xmpp:mam:2"  # XEP-0313
FORWARD_NS = "urn:xmpp:forward:0"  # XEP-0297
STANZA_ID_NS = "urn:xmpp:sid:0"  # XEP-0359
PUBSUB_EVENT_NS = "http://jabber.org/protocol/pubsub#event"  # XEP-0060

JSON_TAG = f"{{{JSON_NS}}}json"
_ARCHIVED_MESSAGE_PATH = f"{{{MAM_NS}}}result/{{{FORWARD_NS}}}forwarded/{{{CLIENT_NS}}}message"

# An event object is well under 4 KiB; refuse to parse anything absurdly larger.
MAX_PAYLOAD_CHARS = 64 * 1024


def event_element(event: Event) -> ET.Element:
    """Return <json xmlns='urn:xmpp:json:0'> holding the object (docs/contract/events.md §1) of
    `event`."""
    element = ET.Element(JSON_TAG)
    element.text = event.to_json().decode()
    return element


def find_event_element(parent: ET.Element) -> ET.Element | None:
    """Return the XEP-0335 child of a message or PubSub item, if it has one."""
    return parent.find(JSON_TAG)


def event_from_element(element: ET.Element) -> Event:
    """Validate the JSON text of a XEP-0335 element into an Event (raise InvalidEvent)."""
    text = element.text or ""
    if len(text) > MAX_PAYLOAD_CHARS:
        raise InvalidEvent(f"payload of {len(text)} characters is too large")
    return Event.from_json(text)


def event_from_message(message: ET.Element) -> Event:
    """Return the event carried by a <message> (raise InvalidEvent when it carries none)."""
    element = find_event_element(message)
    if element is None:
        raise InvalidEvent("message without a <json xmlns='urn:xmpp:json:0'> element")
    return event_from_element(element)


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """One XEP-0313 result: the archive's id for it and the original message."""

    archive_id: str
    message: ET.Element


def archived_message(result: ET.Element) -> ArchivedMessage | None:
    """Unwrap a MAM result <message>; None when it is not one or lacks the id."""
    wrapper = result.find(f"{{{MAM_NS}}}result")
    inner = result.find(_ARCHIVED_MESSAGE_PATH)
    if wrapper is None or inner is None:
        return None
    archive_id = wrapper.get("id")
    if not archive_id:
        return None
    return ArchivedMessage(archive_id, inner)


def is_archive_result(message: ET.Element) -> bool:
    """Tell whether a <message> is a MAM query result rather than a live message."""
    return message.find(f"{{{MAM_NS}}}result") is not None


def stanza_id(message: ET.Element, by: str) -> str | None:
    """Return the XEP-0359 id that the archive of `by` (a bare JID) gave this message."""
    for element in message.iterfind(f"{{{STANZA_ID_NS}}}stanza-id"):
        # The server strips ids claiming to be by us (XEP-0359 §5), so this one is its own.
        if element.get("by") == by and element.get("id"):
            return element.get("id")
    return None


@dataclass(frozen=True, slots=True)
class PubSubItem:
    """One item of a XEP-0060 notification or items result."""

    node: str
    item_id: str
    event: Event


def pubsub_items(container: ET.Element) -> Iterator[PubSubItem | InvalidEvent]:
    """Yield the events in a notification <message> or an <items> result, or why one is bad."""
    if container.tag.endswith("}items") or container.tag == "items":
        blocks = [container]
    else:
        blocks = list(container.iterfind(f"{{{PUBSUB_EVENT_NS}}}event/{{{PUBSUB_EVENT_NS}}}items"))
    for items in blocks:
        node = items.get("node", "")
        for item in items:
            if not item.tag.endswith("}item"):
                continue
            element = find_event_element(item)
            try:
                if element is None:
                    raise InvalidEvent("item without a <json xmlns='urn:xmpp:json:0'> element")
                yield PubSubItem(node, item.get("id", ""), event_from_element(element))
            except InvalidEvent as exc:
                yield exc
