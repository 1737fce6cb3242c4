"""Settings of a private system: what tests and benchmarks start beside any `make up`."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from pydantic import SecretStr

from roadwatch.settings import Settings


def _secret(size: int = 18) -> SecretStr:
    return SecretStr(secrets.token_urlsafe(size))


def free_ports(count: int) -> list[int]:
    """Return `count` different TCP ports that are free on the loopback interface right now.

    The sockets are held open together while the ports are picked: one at a time, the system
    may hand out a port it has just released, and two servers would then share it.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def private_settings(root: Path) -> Settings:
    """Free ports, fresh random secrets and `root` as the run folder; no `.env`, no demo."""
    mqtt, mqtt_tls, xmpp, bosh, mysql, http, api, gateway, collector, simulator = free_ports(10)
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        mqtt_port=mqtt,
        mqtt_tls_port=mqtt_tls,
        # A private system opens nothing to other machines.
        mqtt_tls_bind="127.0.0.1",
        xmpp_port=xmpp,
        xmpp_bind="127.0.0.1",
        bosh_port=bosh,
        mysql_port=mysql,
        http_port=http,
        api_port=api,
        gateway_metrics_port=gateway,
        collector_metrics_port=collector,
        simulator_metrics_port=simulator,
        mqtt_gateway_password=_secret(),
        mqtt_fleet_password=_secret(),
        xmpp_gateway_password=_secret(),
        xmpp_collector_password=_secret(),
        mysql_password=_secret(),
        prosody_db_password=_secret(),
        api_token=_secret(24),
        run_dir=root,
        demo=False,
    )
