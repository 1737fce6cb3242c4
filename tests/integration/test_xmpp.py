"""The XMPP adapter against the real Prosody of deploy/prosody (docs/contract/xmpp.md §3, §4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError

from roadwatch.adapters.xmpp import EventReceiver, EventSender
from roadwatch.adapters.xmpp.connection import make_client, tcp_nodelay_enabled
from roadwatch.adapters.xmpp.stanza import PubSubItem, event_element, pubsub_items
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import RunLayout, read_pid
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 15.0


def make_event(kind: EventType = EventType.ACCIDENT, version: int = 1) -> Event:
    started = 1_700_000_000_000 + secrets.randbelow(10**9)
    return Event(
        id=new_event_id(started, secrets.token_hex(8)),
        type=kind,
        status=EventStatus.INSTANT if kind.pubsub_node == "zone" else EventStatus.ACTIVE,
        version=version,
        started_ms=started,
        updated_ms=started + 1_000,
        ended_ms=None,
        lat=48.8566,
        lon=2.3522,
        cause_code=2,
        station_ids=("car-1", "car-2"),
        details={"reporters": 2, "note": "é ü <&>"},
    )


class Positions:
    """An in-memory archive position, as the collector keeps it in MySQL."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.saves = 0

    async def load(self) -> str | None:
        return self.value

    async def save(self, position: str) -> None:
        self.value = position
        self.saves += 1


class Collected:
    """The events handed to a receiver's handler."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)

    def ids(self) -> set[str]:
        return {event.id for event in self.events}

    async def wait_for(self, *ids: str) -> None:
        await until(lambda: set(ids) <= self.ids(), f"events {ids}")


async def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    client: EventSender | EventReceiver,
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(WAIT_S)
        if isinstance(client, EventReceiver):
            await client.wait_caught_up(WAIT_S)
        yield task
    finally:
        await client.close()
        await asyncio.wait_for(task, WAIT_S)


@contextlib.asynccontextmanager
async def raw_client(settings: Settings, jid: str, password: str) -> AsyncIterator[ClientXMPP]:
    """A plain slixmpp session, as any third-party XMPP client would open."""
    client = make_client(jid, password, ("xep_0030", "xep_0060"), sm_window=5, allow_resume=False)
    started = asyncio.ensure_future(client.wait_until("session_start", WAIT_S))
    client.connect(settings.xmpp_host, settings.xmpp_port)
    await started
    client.send_presence()
    try:
        yield client
    finally:
        gone = client.disconnected
        client.disconnect()
        await asyncio.wait_for(gone, WAIT_S)


def run(scenario: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 90))


def archived_copies(settings: Settings, mariadb: MariaDB, user: str, event: Event) -> int:
    """How many messages carrying `event` the archive of USER@domain holds."""
    with (
        mariadb.admin_connection(settings.prosody_db_name) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "SELECT COUNT(*) FROM prosodyarchive WHERE host = %s AND user = %s"
            " AND store = 'archive' AND value LIKE %s",
            (settings.xmpp_domain, user, f"%{event.id}%"),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def xmpp(test_settings: Settings, prosody: Prosody) -> Settings:
    return test_settings


def test_event_from_the_gateway_reaches_the_collector_unchanged(xmpp: Settings) -> None:
    event = make_event(EventType.TRAFFIC_JAM)
    update = event.next_version(status=EventStatus.CLEARED, ended_ms=event.updated_ms + 5)
    collected = Collected()
    positions = Positions()

    async def scenario() -> None:
        receiver = EventReceiver(xmpp, collected.handle, positions.load, positions.save)
        sender = EventSender(xmpp)
        async with running(receiver), running(sender):
            await sender.send(event)
            await sender.send(update)
            await collected.wait_for(event.id)
            await until(lambda: len([e for e in collected.events if e.id == event.id]) >= 2, "v2")
            await until(lambda: sender.stats.acked >= 2, "acks from the server")
            client = sender._connection.client
            assert client is not None and tcp_nodelay_enabled(client)
        assert sender.stats.sent == 2
        assert sender.pending == 0
        assert positions.value is not None  # the archive id of what was handled was saved

    run(scenario())
    mine = [e for e in collected.events if e.id == event.id]
    assert mine[:2] == [event, update]


def test_only_the_collectors_copy_of_an_event_is_archived_across_prosody_restarts(
    xmpp: Settings, prosody: Prosody, mariadb: MariaDB
) -> None:
    """The gateway's "never archive" preference holds though Prosody keeps it in memory."""

    async def send(event: Event) -> None:
        sender = EventSender(xmpp)
        async with running(sender):
            await sender.send(event)
            await until(lambda: sender.stats.acked >= 1, "the server's ack")

    before, after = make_event(), make_event(EventType.ZONE_ENTER)
    run(send(before))
    prosody.stop()
    prosody.start()
    run(send(after))
    for event in (before, after):
        assert archived_copies(xmpp, mariadb, "collector", event) == 1
        assert archived_copies(xmpp, mariadb, "gateway", event) == 0


def test_other_accounts_cannot_message_the_collector_and_bad_payloads_are_ignored(
    xmpp: Settings, prosody: Prosody, mariadb: MariaDB
) -> None:
    intruder_password = secrets.token_urlsafe(12)
    prosody.set_password("intruder", intruder_password)
    forged = make_event()
    marker = make_event()
    collected = Collected()
    positions = Positions()

    async def scenario() -> None:
        receiver = EventReceiver(xmpp, collected.handle, positions.load, positions.save)
        async with running(receiver):
            foreign_before = receiver.stats.foreign
            bad_before = receiver.stats.bad_payload
            intruder_jid = f"intruder@{xmpp.xmpp_domain}"
            async with raw_client(xmpp, intruder_jid, intruder_password) as intruder:
                refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

                def on_error(answer: Any) -> None:
                    if not refused.done():
                        refused.set_result(answer["error"]["condition"])

                intruder.add_event_handler("message_error", on_error)
                message = intruder.make_message(mto=xmpp.collector_jid, mbody="x", mtype="chat")
                message.append(event_element(forged))
                message.send()
                # Prosody refuses it (mod_collector_inbox): no archive copy, no delivery.
                assert await asyncio.wait_for(refused, WAIT_S) == "not-allowed"
            gateway_password = xmpp.xmpp_gateway_password.get_secret_value()
            async with raw_client(xmpp, f"{xmpp.gateway_jid}/probe", gateway_password) as gateway:
                garbage = gateway.make_message(mto=xmpp.collector_jid, mbody="?", mtype="chat")
                bad = ET.SubElement(garbage.xml, "{urn:xmpp:json:0}json")
                bad.text = '{"id": "x", "type": "meteor"}'
                garbage.send()
                gateway.make_message(mto=xmpp.collector_jid, mbody="hi", mtype="chat").send()
                good = gateway.make_message(mto=xmpp.collector_jid, mbody="ok", mtype="chat")
                good.append(event_element(marker))
                good.send()
                await collected.wait_for(marker.id)
            assert receiver.stats.foreign == foreign_before  # it never reached the collector
            assert receiver.stats.bad_payload >= bad_before + 2
            assert receiver.online  # nothing of this stopped the session

    run(scenario())
    assert forged.id not in collected.ids()
    assert archived_copies(xmpp, mariadb, "collector", forged) == 0
    assert archived_copies(xmpp, mariadb, "collector", marker) == 1


def test_events_sent_while_the_collector_is_down_arrive_when_it_logs_in(xmpp: Settings) -> None:
    before = make_event()
    while_down = [make_event(EventType.ZONE_ENTER) for _ in range(3)]
    positions = Positions()
    first, second = Collected(), Collected()

    async def scenario() -> None:
        sender = EventSender(xmpp)
        async with running(sender):
            receiver = EventReceiver(xmpp, first.handle, positions.load, positions.save)
            async with running(receiver):
                await sender.send(before)
                await first.wait_for(before.id)
            saved = positions.value
            assert saved is not None
            for event in while_down:
                await sender.send(event)
            await until(lambda: sender.pending == 0, "the server to take the events")
            receiver = EventReceiver(xmpp, second.handle, positions.load, positions.save)
            async with running(receiver):
                await second.wait_for(*(event.id for event in while_down))
                await until(lambda: positions.value != saved, "the position to move on")

    run(scenario())
    # The catch-up starts after the saved position: what was handled is not replayed.
    assert before.id not in second.ids()


def test_events_sent_after_a_collector_crash_are_recovered(xmpp: Settings) -> None:
    after_crash = [make_event() for _ in range(3)]
    positions = Positions()
    crashed, restarted = Collected(), Collected()

    async def scenario() -> None:
        sender = EventSender(xmpp)
        async with running(sender):
            receiver = EventReceiver(xmpp, crashed.handle, positions.load, positions.save)
            task = asyncio.create_task(receiver.run())
            await receiver.wait_connected(WAIT_S)
            # kill -9: the TCP connection drops without a stream close; the server keeps the
            # session hibernating (XEP-0198) and queues for it.
            client = receiver._connection.client
            assert client is not None and client.transport is not None
            client.transport.abort()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for event in after_crash:
                await sender.send(event)
            await until(lambda: sender.pending == 0, "the server to take the events")
            receiver = EventReceiver(xmpp, restarted.handle, positions.load, positions.save)
            async with running(receiver):
                await restarted.wait_for(*(event.id for event in after_crash))

    run(scenario())


def test_sender_reconnects_after_losing_its_connection(xmpp: Settings) -> None:
    events = [make_event() for _ in range(2)]
    collected = Collected()
    positions = Positions()

    async def scenario() -> None:
        receiver = EventReceiver(xmpp, collected.handle, positions.load, positions.save)
        sender = EventSender(xmpp)
        async with running(receiver), running(sender):
            await sender.send(events[0])
            await collected.wait_for(events[0].id)
            client = sender._connection.client
            assert client is not None and client.transport is not None
            client.transport.abort()
            await until(lambda: not sender.online, "the sender to notice")
            await sender.send(events[1])  # queued while offline, sent on the next session
            await collected.wait_for(events[1].id)
            assert sender.stats.reconnects >= 1

    run(scenario())


def test_no_event_is_lost_when_prosody_is_killed(
    xmpp: Settings, prosody: Prosody, layout: RunLayout
) -> None:
    before = [make_event() for _ in range(20)]
    during = [make_event() for _ in range(20)]
    collected = Collected()
    positions = Positions()

    async def scenario() -> None:
        receiver = EventReceiver(xmpp, collected.handle, positions.load, positions.save)
        sender = EventSender(xmpp)
        async with running(receiver), running(sender):
            for event in before:
                await sender.send(event)
            pid = read_pid(layout.pidfile(prosody.name))
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # some events may still be unacknowledged
            await until(lambda: not sender.online and not receiver.online, "both to notice")
            for event in during:
                await sender.send(event)
            await asyncio.to_thread(prosody.start)
            await collected.wait_for(*(event.id for event in before + during))
            await until(lambda: sender.pending == 0, "the server to take every event")
        assert sender.stats.reconnects >= 1
        assert receiver.stats.reconnects >= 1

    run(scenario())


def test_published_event_is_readable_and_pushed_to_an_anonymous_browser_session(
    xmpp: Settings,
) -> None:
    event = make_event(EventType.ZONE_EXIT)
    older = make_event(EventType.ZONE_EXIT)
    positions = Positions()
    notified: list[PubSubItem | Exception] = []
    service = JID(xmpp.pubsub_service)

    async def scenario() -> None:
        receiver = EventReceiver(xmpp, Collected().handle, positions.load, positions.save)
        async with running(receiver):
            async with raw_client(xmpp, xmpp.anonymous_domain, "") as browser:
                browser_jid = browser.boundjid.bare
                assert browser.boundjid.domain == xmpp.anonymous_domain
                await check_browser_session(receiver, browser)
            # Its subscription ended with its session (deploy/prosody/modules).
            owner: Any = receiver._connection.client
            assert owner is not None

            async def subscribers() -> set[str]:
                result = await owner.plugin["xep_0060"].get_node_subscriptions(
                    service, "zone", timeout=WAIT_S
                )
                return {str(s["jid"]) for s in result["pubsub_owner"]["subscriptions"]}

            assert not any(jid.startswith(browser_jid) for jid in await subscribers())

    async def check_browser_session(receiver: EventReceiver, browser: ClientXMPP) -> None:
        # slixmpp's XEP-0060 plugin turns notifications into this event.
        browser.add_event_handler(
            "pubsub_publish", lambda message: notified.extend(pubsub_items(message.xml))
        )
        pubsub: Any = browser.plugin["xep_0060"]
        await pubsub.subscribe(service, "zone", timeout=WAIT_S)

        assert await receiver.publish(event)
        await until(lambda: any(getattr(n, "event", None) == event for n in notified), "push")
        item = next(n for n in notified if isinstance(n, PubSubItem) and n.event == event)
        assert (item.node, item.item_id) == ("zone", event.id)

        # The node holds the event as its item, for a page that loads later.
        result = await pubsub.get_item(service, "zone", event.id, timeout=WAIT_S)
        items = list(pubsub_items(result["pubsub"]["items"].xml))
        assert items == [PubSubItem("zone", event.id, event)]

        # An older version never overwrites a newer one.
        newer = event.next_version(status=EventStatus.CLEARED)
        assert await receiver.publish(newer)
        assert not await receiver.publish(event)

        # The browser cannot publish, create nodes, nor talk to the service accounts.
        with pytest.raises(IqError) as refused:
            await pubsub.publish(
                service, "zone", id=older.id, payload=event_element(older), timeout=WAIT_S
            )
        assert refused.value.condition == "forbidden"
        with pytest.raises(IqError) as refused:
            await pubsub.create_node(service, "browser-node", timeout=WAIT_S)
        assert refused.value.condition == "forbidden"
        for account in (xmpp.collector_jid, xmpp.gateway_jid):
            reply = asyncio.ensure_future(browser.wait_until("message_error", WAIT_S))
            forged = browser.make_message(mto=account, mbody="fake", mtype="chat")
            forged.append(event_element(older))
            forged.send()
            error = await reply
            assert error["error"]["condition"] == "not-allowed"

    run(scenario())


def test_bosh_answers_on_http_bind(xmpp: Settings) -> None:
    url = f"http://{xmpp.xmpp_host}:{xmpp.bosh_port}/http-bind"
    body = (
        "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' "
        f"to='{xmpp.anonymous_domain}' rid='{secrets.randbelow(10**9)}' wait='5' hold='1' "
        "ver='1.6' xmpp:version='1.0'/>"
    )
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "text/xml; charset=utf-8"}
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        assert response.status == 200
        answer = ET.fromstring(response.read())
    assert answer.get("sid")
    mechanisms = [m.text for m in answer.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    assert "ANONYMOUS" in mechanisms
