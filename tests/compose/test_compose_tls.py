"""The containers take clients from outside over TLS, with the same certificates as `make up`.

An accident reported with mosquitto_pub over TLS on the published MQTT/TLS port becomes an
event that slixmpp's own example client, logged in over STARTTLS on the published c2s port as a
person's account, reads from the accident node. Plain MQTT on that port and a login before
STARTTLS are refused; the gateway and the collector reach Prosody over TLS too.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.clients import XmppAccount, pubsub_example
from tests.compose.conftest import REPO, Deployment
from tests.e2e.helpers import accident_denm, api_events, poll_until
from tests.integration.test_mqtt_clients import client_environment

pytestmark = pytest.mark.compose

DEADLINE_S = 20.0
# Away from the other compose tests' places around Reims.
LAT, LON = 49.2001, 3.9702
OPERATOR = 15  # a road operator's report is an accident at once (docs/contract/detection.md §4)


def tls_ca(deployment: Deployment) -> Path:
    folder = deployment.value("ROADWATCH_COMPOSE_TLS_DIR", "./.run/tls/containers")
    ca = (REPO / folder / "ca" / "ca.crt").resolve()
    assert ca.is_file(), f"no CA at {ca}: deploy/compose/prepare.sh makes it"
    return ca


def mqtt_tls_port(deployment: Deployment) -> int:
    return int(deployment.value("ROADWATCH_MQTT_TLS_PORT", "8883"))


def xmpp_port(deployment: Deployment) -> int:
    return int(deployment.value("ROADWATCH_XMPP_PORT", "5222"))


def fleet_options(deployment: Deployment, tmp_path: Path) -> dict[str, str]:
    return client_environment(
        tmp_path,
        deployment.value("ROADWATCH_MQTT_FLEET_USER", "roadwatch-fleet"),
        deployment.value("ROADWATCH_MQTT_FLEET_PASSWORD"),
    )


def mosquitto_pub(
    deployment: Deployment, env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    argv = ["mosquitto_pub", "-h", "localhost", "-p", str(mqtt_tls_port(deployment)), *options]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_an_accident_sent_over_mqtt_tls_is_read_by_a_person_over_starttls(
    deployment: Deployment, tmp_path: Path
) -> None:
    ca = tls_ca(deployment)
    station = f"compose-tls-{str(time.time_ns())[-6:]}"
    denm = accident_denm(station, LAT, LON, int(time.time() * 1000), station_type=OPERATOR)
    sent = mosquitto_pub(
        deployment,
        fleet_options(deployment, tmp_path),
        "--cafile",
        str(ca),
        "-q",
        "1",
        "-t",
        f"vehicles/{station}/denm",
        "-m",
        denm.decode(),
    )
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + DEADLINE_S
    event = poll_until(
        f"the accident of {station} in GET /api/events",
        lambda: api_events(deployment.http_url, station=station),
        deadline,
        interval_s=0.2,
    )[0]

    name = f"tls-desk-{str(time.time_ns())[-6:]}"
    made = deployment.exec("prosody", "roadwatch-xmpp-account", "add", name)
    assert made.returncode == 0, made.stderr
    password = made.stdout.split("password: ", 1)[1].strip()
    domain = deployment.value("ROADWATCH_XMPP_DOMAIN", "roadwatch.local")
    person = XmppAccount(f"{name}@{domain}", password, "127.0.0.1", xmpp_port(deployment))
    try:
        read = pubsub_example(person, f"pubsub.{domain}", "get", "accident", event["id"], ca=ca)
        assert f"Retrieved item {event['id']}" in read.stderr, read.stderr
        # Without the CA, the same client does not trust the server.
        untrusted = pubsub_example(person, f"pubsub.{domain}", "nodes", ca=None)
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        deployment.exec("prosody", "roadwatch-xmpp-account", "remove", name)


def test_plain_mqtt_is_refused_on_the_tls_port(deployment: Deployment, tmp_path: Path) -> None:
    refused = mosquitto_pub(
        deployment, fleet_options(deployment, tmp_path), "-t", "vehicles/plain/cam", "-m", "x"
    )
    assert refused.returncode != 0


def test_a_client_from_outside_gets_no_login_before_starttls(deployment: Deployment) -> None:
    domain = deployment.value("ROADWATCH_XMPP_DOMAIN", "roadwatch.local")
    with socket.create_connection(("127.0.0.1", xmpp_port(deployment)), timeout=10) as sock:
        sock.sendall(
            f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode()
        )
        features = b""
        while b"</stream:features>" not in features:
            chunk = sock.recv(65536)
            if not chunk:
                break
            features += chunk
    text = features.decode()
    assert re.search(r"<starttls [^>]*><required\s*/></starttls>", text), text
    assert "<mechanism>" not in text


def test_the_services_reach_prosody_over_tls(deployment: Deployment) -> None:
    domain = deployment.value("ROADWATCH_XMPP_DOMAIN", "roadwatch.local")
    logs = subprocess.run(
        ["docker", "logs", deployment.container("prosody")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    sessions: dict[str, list[str]] = {}
    for line in (logs.stdout + logs.stderr).splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].startswith("c2s"):
            sessions.setdefault(parts[0], []).append(parts[2])
    for account in ("gateway", "collector"):
        assert any(
            any(text.startswith("Stream encrypted") for text in lines)
            and any(text.startswith(f"Authenticated as {account}@{domain}") for text in lines)
            for lines in sessions.values()
        ), f"no encrypted session of {account}@{domain} in Prosody's log"
