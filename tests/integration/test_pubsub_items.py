"""PubSub node items as deploy/prosody keeps them: the newest version of each event, read at
once, written to MySQL in batches, and the same after Prosody restarts
(deploy/prosody/modules/mod_pubsub_batched_items.lua)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from slixmpp import ClientXMPP

from roadwatch.adapters.xmpp.connection import make_client
from roadwatch.adapters.xmpp.receiver import NODE_CONFIG, NODE_CONFIG_FORM
from roadwatch.adapters.xmpp.stanza import PubSubItem, event_element, pubsub_items
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 15.0
MAX_ITEMS = 5


def make_event(n: int) -> Event:
    started = 1_700_000_000_000 + n * 1_000
    return Event(
        id=new_event_id(started, secrets.token_hex(8)),
        type=EventType.ACCIDENT,
        status=EventStatus.ACTIVE,
        version=1,
        started_ms=started,
        updated_ms=started,
        ended_ms=None,
        lat=49.25,
        lon=4.03,
        cause_code=2,
        station_ids=(f"car-{n}",),
    )


@contextlib.asynccontextmanager
async def collector(settings: Settings) -> AsyncIterator[ClientXMPP]:
    """A session as collector@, the owner of the PubSub service."""
    client = make_client(
        f"{settings.collector_jid}/items-test",
        settings.xmpp_collector_password.get_secret_value(),
        ("xep_0004", "xep_0060"),
        sm_window=5,
        allow_resume=False,
    )
    started = asyncio.ensure_future(client.wait_until("session_start", WAIT_S))
    client.connect(settings.xmpp_host, settings.xmpp_port)
    await started
    try:
        yield client
    finally:
        gone = client.disconnected
        client.disconnect()
        await asyncio.wait_for(gone, WAIT_S)


async def create_node(client: ClientXMPP, service: str, node: str) -> None:
    forms: Any = client.plugin["xep_0004"]
    form = forms.make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=NODE_CONFIG_FORM)
    for var, value in {**NODE_CONFIG, "pubsub#max_items": str(MAX_ITEMS)}.items():
        form.add_field(var=var, value=value)
    pubsub: Any = client.plugin["xep_0060"]
    await pubsub.create_node(service, node, config=form, timeout=WAIT_S)


async def publish(client: ClientXMPP, service: str, node: str, event: Event) -> None:
    pubsub: Any = client.plugin["xep_0060"]
    await pubsub.publish(service, node, id=event.id, payload=event_element(event), timeout=WAIT_S)


async def items(client: ClientXMPP, service: str, node: str) -> dict[str, Event]:
    pubsub: Any = client.plugin["xep_0060"]
    result = await pubsub.get_items(service, node, timeout=WAIT_S)
    found = list(pubsub_items(result["pubsub"]["items"].xml))
    assert all(isinstance(item, PubSubItem) for item in found)
    return {item.item_id: item.event for item in found if isinstance(item, PubSubItem)}


def test_a_node_keeps_the_newest_version_of_its_newest_events_across_a_restart(
    test_settings: Settings, prosody: Prosody
) -> None:
    service = test_settings.pubsub_service
    node = f"items-{secrets.token_hex(4)}"
    events = [make_event(n) for n in range(8)]
    updated = events[6].next_version(status=EventStatus.CLEARED, ended_ms=events[6].updated_ms)
    # Published last, just before Prosody stops: still inside a write batch.
    last = make_event(8)
    # The MAX_ITEMS most recently published, each at its newest version.
    held = [events[3], events[4], events[5], updated, events[7]]
    kept = [*held[1:], last]

    async def before_restart() -> dict[str, Event]:
        async with collector(test_settings) as client:
            await create_node(client, service, node)
            for event in events:
                await publish(client, service, node, event)
            await publish(client, service, node, updated)
            read = await items(client, service, node)
            await publish(client, service, node, last)
            # At once: the last item is still waiting for its batch when Prosody stops.
            await asyncio.to_thread(prosody.stop)
            return read

    async def after_restart() -> dict[str, Event]:
        async with collector(test_settings) as client:
            return await items(client, service, node)

    assert asyncio.run(before_restart()) == {event.id: event for event in held}
    prosody.start()
    assert asyncio.run(after_restart()) == {event.id: event for event in kept}
