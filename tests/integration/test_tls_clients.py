"""Clients from outside come in over TLS, with the programs people already use
(docs/contract/mqtt.md §12, docs/contract/xmpp.md §7).

- MQTT: mosquitto_pub and mosquitto_sub, with their defaults and `--cafile`, on the TLS port;
  a plain client there is refused; plain MQTT still serves loopback on the other port.
- XMPP: slixmpp's own example PubSub client and profanity (Debian), unchanged, log in over
  STARTTLS with the CA trusted and get an accident; only SCRAM is ever offered.
- A client on another address than loopback gets no login without TLS, and our own services
  (as in containers) start TLS there and check the server's certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from slixmpp.exceptions import IqError

from roadwatch.adapters.xmpp.connection import Connection, is_encrypted, make_client
from roadwatch.adapters.xmpp.errors import XmppUnavailable
from roadwatch.domain.accounts import AccountKind
from roadwatch.domain.events import Event
from roadwatch.runner.accounts import AccountManager
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import free_ports
from roadwatch.runner.process import RunLayout
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings
from tests.clients import XmppAccount, profanity, pubsub_example
from tests.integration.mqtt_inbox import Inbox, gateway_endpoint
from tests.integration.test_mqtt_clients import client_environment
from tests.integration.test_pubsub_items import collector, make_event, publish

if TYPE_CHECKING:
    from slixmpp import ClientXMPP

    from roadwatch.runner.mariadb import MariaDB

pytestmark = pytest.mark.integration

NODE = "accident"
WAIT_S = 30.0
PLAIN_LOGIN_WAIT_S = 5.0
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


def ca_of(settings: Settings) -> Path:
    ca = settings.tls_trusted_ca
    assert ca is not None and ca.is_file()
    return ca


# -- MQTT ---------------------------------------------------------------------------------------


def mqtt_over_tls(
    settings: Settings, tool: str, env: dict[str, str], *options: str, cafile: Path | None
) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub or mosquitto_sub on the TLS port; `cafile` is its only TLS option."""
    argv = [tool, "-h", "localhost", "-p", str(settings.mqtt_tls_port), *options]
    if cafile is not None:
        argv += ["--cafile", str(cafile)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_mosquitto_clients_over_tls_with_the_ca_publish_and_subscribe(
    test_settings: Settings, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    made = AccountManager(test_settings).add(AccountKind.VEHICLE, f"tls-car-{os.getpid()}")
    station = made.account.name
    vehicle = client_environment(tmp_path, station, made.password)
    gateway = client_environment(
        tmp_path,
        test_settings.mqtt_gateway_user,
        test_settings.mqtt_gateway_password.get_secret_value(),
    )
    topic = f"vehicles/{station}/cam"
    ca = ca_of(test_settings)
    argv = ["mosquitto_sub", "-h", "localhost", "-p", str(test_settings.mqtt_tls_port)]
    argv += ["--cafile", str(ca), "-t", topic, "-C", "1", "-W", "20"]
    with (
        subprocess.Popen(argv, env=gateway, stdout=subprocess.PIPE, text=True) as reader,
        Inbox(gateway_endpoint(test_settings), (("vehicles/#", 0),)) as plain_reader,
    ):
        # mosquitto_sub -C 1 exits after one message; publish until it has subscribed.
        for _ in range(40):
            sent = mqtt_over_tls(
                test_settings, "mosquitto_pub", vehicle, "-t", topic, "-m", "over-tls", cafile=ca
            )
            assert sent.returncode == 0, sent.stderr
            try:
                out, _ = reader.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("mosquitto_sub over TLS received nothing")
        # The plain listener on loopback (our own services) sees the same message.
        assert (topic, b"over-tls") in [(t, p) for t, p, _q in plain_reader.quiet(0.5)]
    assert out.strip() == "over-tls"
    assert reader.returncode == 0


def test_the_tls_port_refuses_plain_mqtt_and_servers_it_cannot_verify(
    test_settings: Settings, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    env = client_environment(
        tmp_path,
        test_settings.mqtt_fleet_user,
        test_settings.mqtt_fleet_password.get_secret_value(),
    )
    ask = ("-t", "vehicles/tls-probe/cam", "-m", "x")
    plain = subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(test_settings.mqtt_tls_port), *ask],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.returncode != 0
    # Without our CA, the client does not trust the server (the system's CAs do not know it).
    untrusted = mqtt_over_tls(
        test_settings, "mosquitto_pub", env, *ask, "--capath", "/etc/ssl/certs", cafile=None
    )
    assert untrusted.returncode != 0
    assert "tls" in untrusted.stderr.lower() or "certificate" in untrusted.stderr.lower()
    # The plain port still serves clients on loopback.
    local = subprocess.run(
        ["mosquitto_pub", "-h", test_settings.mqtt_host, "-p", str(test_settings.mqtt_port), *ask],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert local.returncode == 0, local.stderr


# -- XMPP: a person's account and the accident node ---------------------------------------------


@pytest.fixture
def follower(test_settings: Settings, prosody: Prosody) -> XmppAccount:
    """A person's account on the services' host (as `roadwatch accounts add follower`)."""
    name = f"follower-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    prosody.set_password(name, password)
    return XmppAccount(
        f"{name}@{test_settings.xmpp_domain}",
        password,
        test_settings.xmpp_host,
        test_settings.xmpp_port,
    )


def publish_accident(settings: Settings, lat: float = 49.25, lon: float = 4.03) -> Event:
    """Publish a new accident to the `accident` node as the collector does; return it."""
    event = dataclasses.replace(make_event(secrets.randbelow(10_000)), lat=lat, lon=lon)

    async def run() -> None:
        async with collector(settings) as client:
            pubsub: Any = client.plugin["xep_0060"]
            try:
                await pubsub.create_node(settings.pubsub_service, NODE, timeout=WAIT_S)
            except IqError as exc:
                if exc.condition != "conflict":  # the collector made it already
                    raise
            await publish(client, settings.pubsub_service, NODE, event)

    asyncio.run(run())
    return event


def encrypted_logins(prosody: Prosody, jid: str) -> int:
    """Count the sessions of `jid` that Prosody logged as encrypted, then authenticated."""
    log = prosody.layout.logfile(prosody.name).read_text(errors="replace")
    sessions: dict[str, list[str]] = {}
    for line in log.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].startswith("c2s"):
            sessions.setdefault(parts[0], []).append(parts[2])
    return sum(
        1
        for lines in sessions.values()
        if any(text.startswith("Stream encrypted") for text in lines)
        and any(text == f"Authenticated as {jid}" for text in lines)
    )


# -- XMPP: slixmpp's example ---------------------------------------------------------------------


def test_slixmpp_pubsub_example_gets_an_accident_over_starttls(
    test_settings: Settings, prosody: Prosody, follower: XmppAccount
) -> None:
    accident = publish_accident(test_settings)
    done = pubsub_example(
        follower, test_settings.pubsub_service, "get", NODE, accident.id, ca=ca_of(test_settings)
    )
    assert f"Retrieved item {accident.id}" in done.stderr, done.stderr
    assert accident.id in done.stderr.split("Retrieved item", 1)[1]
    assert encrypted_logins(prosody, follower.jid) >= 1


def test_slixmpp_pubsub_example_refuses_a_server_it_cannot_verify(
    test_settings: Settings, prosody: Prosody, follower: XmppAccount
) -> None:
    accident = publish_accident(test_settings)
    done = pubsub_example(follower, test_settings.pubsub_service, "get", NODE, accident.id, ca=None)
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "Retrieved item" not in done.stderr


# -- XMPP: profanity ------------------------------------------------------------------------------


def test_profanity_logs_in_over_starttls_and_shows_an_accident(
    test_settings: Settings, prosody: Prosody, follower: XmppAccount, tmp_path: Path
) -> None:
    ca = ca_of(test_settings)
    # The person subscribes once with a client that can (here slixmpp's example); profanity,
    # like most clients, has no command for it, but shows what the node sends.
    subscribed = pubsub_example(follower, test_settings.pubsub_service, "subscribe", NODE, ca=ca)
    assert f"Subscribed {follower.jid} to node {NODE}" in subscribed.stderr, subscribed.stderr
    lat, lon = 49.2 + secrets.randbelow(10_000) / 1e6, 4.0 + secrets.randbelow(10_000) / 1e6
    with profanity(follower, tmp_path, ca) as client:
        assert client.wait_for(r"logged in successfully", WAIT_S), client.screen()[-2000:]
        # Its status bar says the connection is encrypted.
        assert re.search(r"\[ ?TLS ?\]", client.screen())
        accident = publish_accident(test_settings, lat, lon)
        where = f"{accident.lat:.5f},{accident.lon:.5f}"
        shown = client.wait_for(rf"Headline: \[active\] accident at {re.escape(where)}", WAIT_S)
        assert shown, client.screen()[-2000:]


# -- XMPP: a client on another address ------------------------------------------------------------


def non_loopback_address() -> str | None:
    """Return an IPv4 address of this machine that is not loopback, if it has one."""
    try:
        listed = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return next((address for address in listed if ":" not in address), None)


@pytest.fixture(scope="module")
def outside(test_settings: Settings, run_root: Path, mariadb: MariaDB) -> Iterator[Settings]:
    """A second Prosody whose c2s listens only on a non-loopback address of this machine.

    Its own domain keeps its accounts apart from the session's Prosody (same MySQL).
    """
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    xmpp_port, bosh_port = free_ports(2)
    settings = test_settings.model_copy(
        update={
            "xmpp_domain": "outside.test",
            "xmpp_bind": address,
            "xmpp_host": address,
            "xmpp_port": xmpp_port,
            "bosh_port": bosh_port,
            "run_dir": run_root / "outside",
        }
    )
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    server = Prosody(settings, layout)
    server.start()
    yield settings
    server.stop()


def stream_features(sock: socket.socket, domain: str) -> str:
    sock.sendall(
        f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode()
    )
    return read_until(sock, "</stream:features>")


def read_until(sock: socket.socket, end: str) -> str:
    data = b""
    while end.encode() not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def mechanisms(features: str) -> list[str]:
    return re.findall(r"<mechanism>([^<]+)</mechanism>", features)


def test_a_client_on_another_address_gets_no_login_before_tls(outside: Settings) -> None:
    with socket.create_connection((outside.xmpp_host, outside.xmpp_port), timeout=10) as sock:
        features = stream_features(sock, outside.xmpp_domain)
        assert re.search(rf"<starttls xmlns=.{TLS_NS}.><required\s*/></starttls>", features)
        assert mechanisms(features) == []
        # Trying anyway is refused before any password would be used.
        sock.sendall(f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-1'>biws</auth>".encode())
        assert "<encryption-required/>" in read_until(sock, "</failure>")


def test_only_scram_is_offered_with_or_without_tls(
    outside: Settings, test_settings: Settings
) -> None:
    with socket.create_connection((outside.xmpp_host, outside.xmpp_port), timeout=10) as sock:
        stream_features(sock, outside.xmpp_domain)
        sock.sendall(f"<starttls xmlns='{TLS_NS}'/>".encode())
        assert "<proceed" in read_until(sock, "/>")
        context = ssl.create_default_context(cafile=ca_of(outside))
        with context.wrap_socket(sock, server_hostname=outside.xmpp_domain) as secured:
            offered = mechanisms(stream_features(secured, outside.xmpp_domain))
    assert offered and all(name.startswith("SCRAM-") for name in offered)
    # On loopback, without TLS: SCRAM too, never PLAIN, and STARTTLS offered, not required.
    with socket.create_connection(
        (test_settings.xmpp_host, test_settings.xmpp_port), timeout=10
    ) as sock:
        features = stream_features(sock, test_settings.xmpp_domain)
    assert mechanisms(features) and all(name.startswith("SCRAM-") for name in mechanisms(features))
    assert f"<starttls xmlns='{TLS_NS}'/>" in features.replace('"', "'")


def test_our_services_start_tls_from_another_address_and_check_the_certificate(
    outside: Settings, test_settings: Settings
) -> None:
    password = outside.xmpp_gateway_password.get_secret_value()

    async def session(ca: Path) -> bool:
        connection = Connection(
            jid=f"{outside.gateway_jid}/tls-test",
            password=password,
            host=outside.xmpp_host,
            port=outside.xmpp_port,
            ca_file=ca,
            connect_timeout_s=5.0,
        )
        assert connection.starttls  # not loopback: TLS is required of us too

        async def online(client: ClientXMPP, resumed: bool) -> None:
            """Nothing to do: the session stays up until closed."""

        runner = asyncio.ensure_future(connection.run(online))
        try:
            return is_encrypted(await connection.wait_online(8.0))
        finally:
            connection.close()
            await asyncio.wait_for(runner, 15.0)

    assert asyncio.run(session(ca_of(outside))) is True
    # A certificate from another CA (the session's own) is not accepted.
    with pytest.raises(XmppUnavailable):
        asyncio.run(session(ca_of(test_settings)))


def test_a_plain_client_from_another_address_cannot_log_in(outside: Settings) -> None:
    password = outside.xmpp_gateway_password.get_secret_value()

    async def attempt() -> str:
        # As our services connect on loopback: no STARTTLS, SCRAM allowed without it.
        client = make_client(
            f"{outside.gateway_jid}/plain", password, (), sm_window=5, allow_resume=False
        )
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(name: str) -> None:
            if not outcome.done():
                outcome.set_result(name)

        for name in ("session_start", "failed_all_auth", "disconnected"):
            client.add_event_handler(name, lambda _data, name=name: settle(name))
        client.connect(outside.xmpp_host, outside.xmpp_port)
        try:
            # Offered STARTTLS alone, such a client waits for ever, or fails; never logs in.
            return await asyncio.wait_for(outcome, PLAIN_LOGIN_WAIT_S)
        except TimeoutError:
            return "no session"
        finally:
            client.abort()

    assert asyncio.run(attempt()) != "session_start"
