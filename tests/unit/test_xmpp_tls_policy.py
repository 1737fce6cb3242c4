"""When our XMPP sessions start TLS: always but on loopback (adapters/xmpp/connection.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roadwatch.adapters.xmpp.connection import Connection, make_client


def connection(host: str, starttls: bool | None = None) -> Connection:
    return Connection(
        jid="gateway@example.test/x", password="pw", host=host, port=5222, starttls=starttls
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_server_is_reached_without_tls(host: str) -> None:
    assert connection(host).starttls is False


@pytest.mark.parametrize("host", ["prosody", "192.0.2.2", "roadwatch.example.org", "fd00::2"])
def test_any_other_server_is_reached_over_tls(host: str) -> None:
    assert connection(host).starttls is True
    assert connection(host, starttls=False).starttls is False


def test_a_tls_client_sends_no_password_before_tls_and_checks_the_ca() -> None:
    async def check() -> None:  # slixmpp clients are made inside a running loop
        client = make_client(
            "gateway@example.test/x", "pw", (), 5, False, starttls=True, ca_file=Path("/ca.crt")
        )
        assert (client.enable_starttls, client.enable_plaintext, client.enable_direct_tls) == (
            True,
            False,
            False,
        )
        assert client.plugin["feature_mechanisms"].unencrypted_scram is False
        assert client.ca_certs == Path("/ca.crt")
        plain = make_client("gateway@example.test/x", "pw", (), 5, False)
        assert (plain.enable_starttls, plain.enable_plaintext) == (False, True)
        assert plain.plugin["feature_mechanisms"].unencrypted_scram is True

    asyncio.run(check())
