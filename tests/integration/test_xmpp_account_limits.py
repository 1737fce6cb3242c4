"""Bounds on ordinary XMPP accounts (deploy/prosody/modules/mod_account_limits.lua), real Prosody.

An ordinary account (a follower's) may not flood Prosody nor fill archives or offline stores;
the gateway's and the collector's flow is never slowed nor refused. Rows are counted in
Prosody's own MySQL tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from slixmpp import ClientXMPP

from roadwatch.adapters.xmpp import EventReceiver, EventSender
from roadwatch.adapters.xmpp.connection import make_client
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 30.0
# deploy/prosody/prosody.cfg.lua's defaults.
STORED_BURST = 300
OFFLINE_MAX = 100
INPUT_RATE = 10240  # bytes/s
INPUT_BURST_BYTES = 2 * INPUT_RATE


@dataclass
class Account:
    name: str
    password: str
    jid: str


@dataclass
class Refusals:
    """The errors an account received for its messages, by condition."""

    conditions: list[str] = field(default_factory=list)

    def count(self, condition: str = "resource-constraint") -> int:
        return self.conditions.count(condition)


def new_account(prosody: Prosody, settings: Settings, role: str) -> Account:
    name = f"{role}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    prosody.set_password(name, password)
    return Account(name, password, f"{name}@{settings.xmpp_domain}")


@contextlib.asynccontextmanager
async def session(
    settings: Settings,
    jid: str,
    password: str,
    refusals: Refusals | None = None,
    received: list[str] | None = None,
) -> AsyncIterator[ClientXMPP]:
    """A plain slixmpp session, available (initial presence handled by the server)."""
    client = make_client(jid, password, (), sm_window=5, allow_resume=False)
    if received is not None:
        # Before the presence that brings the offline messages.
        client.add_event_handler("message", lambda message: received.append(message["body"]))
    if refusals is not None:
        client.add_event_handler(
            "message_error",
            lambda message: refusals.conditions.append(message["error"]["condition"]),
        )
    started = asyncio.ensure_future(client.wait_until("session_start", WAIT_S))
    client.connect(settings.xmpp_host, settings.xmpp_port)
    await started
    client.send_presence()
    await settle(client)
    try:
        yield client
    finally:
        gone = client.disconnected
        client.disconnect()
        await asyncio.wait_for(gone, WAIT_S)


async def settle(client: ClientXMPP) -> None:
    """Return once the server has handled everything the client sent before (one round trip)."""
    ping: Any = client.plugin["xep_0199"]
    await ping.ping(client.boundjid.host, timeout=WAIT_S)


async def flood(client: ClientXMPP, to: str, count: int, body: str = "flood") -> None:
    for n in range(count):
        client.make_message(mto=to, mbody=f"{body} {n}", mtype="chat").send()
    await settle(client)


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, 180))


def rows(mariadb: MariaDB, settings: Settings, user: str, store: str) -> int:
    """How many items Prosody's MySQL holds in USER's archive-type STORE."""
    with mariadb.admin_connection(settings.prosody_db_name) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM prosodyarchive WHERE host = %s AND user = %s AND store = %s",
            (settings.xmpp_domain, user, store),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def archived_with(mariadb: MariaDB, settings: Settings, user: str, marker: str) -> int:
    """How many messages holding MARKER USER's archive has."""
    with mariadb.admin_connection(settings.prosody_db_name) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM prosodyarchive WHERE host = %s AND user = %s"
            " AND store = 'archive' AND value LIKE %s",
            (settings.xmpp_domain, user, f"%{marker}%"),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


def stored_bytes(mariadb: MariaDB, settings: Settings, user: str) -> int:
    with mariadb.admin_connection(settings.prosody_db_name) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COALESCE(SUM(LENGTH(value)), 0) FROM prosodyarchive"
            " WHERE host = %s AND user = %s",
            (settings.xmpp_domain, user),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def xmpp(test_settings: Settings, prosody: Prosody) -> Settings:
    return test_settings


def test_an_account_flooding_another_is_refused_once_its_allowance_is_spent(
    xmpp: Settings, prosody: Prosody, mariadb: MariaDB
) -> None:
    flooder, victim = (new_account(prosody, xmpp, role) for role in ("flooder", "victim"))
    refusals = Refusals()
    received: list[str] = []

    async def scenario() -> None:
        async with session(xmpp, victim.jid, victim.password, received=received) as inbox:
            async with session(xmpp, flooder.jid, flooder.password, refusals) as client:
                await flood(client, victim.jid, 200)
            await settle(inbox)

    run(scenario())
    # Each delivered message is stored twice, both copies counted against the sender: its own
    # archive's and the victim's.
    delivered = rows(mariadb, xmpp, victim.name, "archive")
    assert delivered == STORED_BURST // 2
    assert refusals.count() == 200 - delivered
    assert rows(mariadb, xmpp, flooder.name, "archive") == delivered
    assert len(received) == delivered


def test_many_accounts_flooding_one_fill_its_archive_no_further_than_its_allowance(
    xmpp: Settings, prosody: Prosody, mariadb: MariaDB
) -> None:
    flooders = [new_account(prosody, xmpp, "flooder") for _ in range(3)]
    victim = new_account(prosody, xmpp, "victim")
    refusals = [Refusals() for _ in flooders]

    async def scenario() -> None:
        async with session(xmpp, victim.jid, victim.password):
            for flooder, refused in zip(flooders, refusals, strict=True):
                async with session(xmpp, flooder.jid, flooder.password, refused) as client:
                    await flood(client, victim.jid, 120)

    run(scenario())
    # 360 sent, each within its sender's allowance: the victim's own stops them at 300.
    assert rows(mariadb, xmpp, victim.name, "archive") == STORED_BURST
    assert [refused.count() for refused in refusals] == [0, 0, 360 - STORED_BURST]
    # A refused message is not kept in its sender's archive either.
    assert rows(mariadb, xmpp, flooders[2].name, "archive") == 120 - (360 - STORED_BURST)


def test_an_offline_account_holds_a_bounded_number_of_offline_messages(
    xmpp: Settings, prosody: Prosody, mariadb: MariaDB
) -> None:
    flooders = [new_account(prosody, xmpp, "flooder") for _ in range(2)]
    victim, friend = new_account(prosody, xmpp, "victim"), new_account(prosody, xmpp, "friend")
    refusals = [Refusals() for _ in flooders]
    received: list[str] = []

    async def scenario() -> None:
        for flooder, refused in zip(flooders, refusals, strict=True):
            async with session(xmpp, flooder.jid, flooder.password, refused) as client:
                await flood(client, victim.jid, 80)
        assert rows(mariadb, xmpp, victim.name, "offline") == OFFLINE_MAX
        assert rows(mariadb, xmpp, victim.name, "archive") == OFFLINE_MAX
        assert refusals[0].count() == 0
        assert refusals[1].count() == 160 - OFFLINE_MAX

        # Reading them frees the store: the cap is on what is held, not on what arrived.
        async with session(xmpp, victim.jid, victim.password, received=received):
            await until(lambda: len(received) >= OFFLINE_MAX, "the offline messages")
            assert rows(mariadb, xmpp, victim.name, "offline") == 0
            async with session(xmpp, friend.jid, friend.password) as client:
                client.make_message(mto=victim.jid, mbody="hello", mtype="chat").send()
                await until(lambda: "hello" in received, "a new message")

    run(scenario())


def test_the_gateways_events_are_all_archived_for_the_collector_without_delay(
    xmpp: Settings, mariadb: MariaDB
) -> None:
    """Far more events than an ordinary account's allowance, and faster than its input rate."""
    count = 3 * STORED_BURST
    marker = secrets.token_hex(8)
    events = [make_event(marker) for _ in range(count)]
    got: set[str] = set()

    async def scenario() -> float:
        async def handle(event: Event) -> None:
            got.add(event.id)

        receiver = EventReceiver(xmpp, handle, _no_position, _ignore_position)
        sender = EventSender(xmpp)
        async with running(receiver), running(sender):
            started = time.monotonic()
            for event in events:
                await sender.send(event)
            await until(lambda: sender.stats.acked >= count, "the server's acks")
            elapsed = time.monotonic() - started
            await until(lambda: {event.id for event in events} <= got, "every event")
        return elapsed

    elapsed = asyncio.run(asyncio.wait_for(scenario(), 180))
    # Over 500 bytes each: at an ordinary account's input rate they would take over 40 s.
    assert elapsed < 10.0
    assert archived_with(mariadb, xmpp, "collector", marker) == count


def test_an_ordinary_accounts_input_is_slowed_and_the_gateways_is_not(
    xmpp: Settings, prosody: Prosody
) -> None:
    account = new_account(prosody, xmpp, "talker")
    body = "x" * 1500
    messages = 40  # about 64 kB: three times the burst

    async def send_to_self(jid: str, password: str) -> float:
        async with session(xmpp, jid, password) as client:
            started = time.monotonic()
            for _ in range(messages):
                # Headlines are never stored: only the input rate can slow them.
                client.make_message(mto=client.boundjid.bare, mbody=body, mtype="headline").send()
            await settle(client)
            return time.monotonic() - started

    gateway_password = xmpp.xmpp_gateway_password.get_secret_value()
    ordinary = asyncio.run(send_to_self(account.jid, account.password))
    service = asyncio.run(send_to_self(f"{xmpp.gateway_jid}/probe", gateway_password))
    sent = messages * len(body)
    assert ordinary >= (sent - INPUT_BURST_BYTES) / INPUT_RATE * 0.8
    assert service < 1.0


# Figures set through the environment -----------------------------------------------------------


@dataclass
class PrivateProsody:
    settings: Settings
    mariadb: MariaDB
    prosody: Prosody


@pytest.fixture
def small_allowance(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateProsody]:
    """MariaDB and Prosody of our own, with a 256 KiB allowance and no input rate limit."""
    monkeypatch.setenv("ROADWATCH_PROSODY_STORED_BURST_BYTES", str(256 * 1024))
    monkeypatch.setenv("ROADWATCH_PROSODY_INPUT_RATE", "0")
    root = Path(tempfile.mkdtemp(prefix="rw-account-limits-"))
    root.chmod(0o755)  # the servers run as their own users
    settings = private_settings(root)
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    mariadb, prosody = MariaDB(settings, layout), Prosody(settings, layout)
    try:
        mariadb.start()
        prosody.start()
        yield PrivateProsody(settings, mariadb, prosody)
    finally:
        prosody.stop()
        mariadb.stop()
        if not os.environ.get("ROADWATCH_KEEP_TEST_RUN"):
            shutil.rmtree(root, ignore_errors=True)


def test_large_messages_spend_the_byte_allowance(small_allowance: PrivateProsody) -> None:
    settings, mariadb = small_allowance.settings, small_allowance.mariadb
    flooder, victim = (
        new_account(small_allowance.prosody, settings, role) for role in ("flooder", "victim")
    )
    refusals = Refusals()
    body = "y" * 50_000

    async def scenario() -> None:
        async with (
            session(settings, victim.jid, victim.password),
            session(settings, flooder.jid, flooder.password, refusals) as client,
        ):
            await flood(client, victim.jid, 6, body)

    run(scenario())
    # Two copies of each (the flooder's archive and the victim's) count against the flooder:
    # 256 KiB lets three through.
    assert rows(mariadb, settings, victim.name, "archive") == 3
    assert refusals.count() == 3
    assert stored_bytes(mariadb, settings, victim.name) < 256 * 1024


# Helpers for the service path --------------------------------------------------------------------


def make_event(marker: str) -> Event:
    started = 1_760_000_000_000 + secrets.randbelow(10**9)
    return Event(
        id=new_event_id(started, secrets.token_hex(8)),
        type=EventType.ZONE_ENTER,
        status=EventStatus.INSTANT,
        version=1,
        started_ms=started,
        updated_ms=started,
        ended_ms=None,
        lat=48.85,
        lon=2.35,
        cause_code=None,
        station_ids=("car-1",),
        details={"marker": marker},
    )


async def _no_position() -> str | None:
    return None


async def _ignore_position(position: str) -> None:
    return None


@contextlib.asynccontextmanager
async def running(client: EventSender | EventReceiver) -> AsyncIterator[None]:
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(WAIT_S)
        if isinstance(client, EventReceiver):
            await client.wait_caught_up(WAIT_S)
        yield
    finally:
        await client.close()
        await asyncio.wait_for(task, WAIT_S)


async def until(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
