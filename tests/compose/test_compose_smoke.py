"""The compose deployment works end to end, and exposes only what it should.

Accident DENMs published with the fleet account to the published MQTT port become one event,
served by the API through Apache and shown live in Chromium (BOSH through Apache). Two gateway
containers share the vehicle messages: every accident becomes one event, sent by its owner.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from roadwatch.adapters.mqtt import (
    BlockingPublisher,
    MqttAuthError,
    MqttEndpoint,
    MqttPublishRefused,
)
from roadwatch.domain.geo import mean_position
from roadwatch.domain.partition import Partitioning
from roadwatch.settings import Settings
from tests.e2e.helpers import (
    accident_row,
    api_events,
    connected,
    open_live_page,
    poll_until,
    publish_accident_pair,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from tests.compose.conftest import Deployment

pytestmark = pytest.mark.compose

# Containers share two cores with the browser here: a little more room than the native e2e.
DEADLINE_S = 10.0
# Reims, where the web map is centred.
LAT, LON = 49.2536, 4.0340
# The gateway services of the `scaled` profile, in instance order.
GATEWAYS = ("gateway", "gateway-2")
# publish_accident_pair puts the second report this far north-east of the first.
PAIR_STEP = (0.0004, 0.0005)
PLACES_PER_INSTANCE = 3
_SAMPLE = re.compile(r"^roadwatch_gateway_(\w+)(?:\{([^}]*)\})? (\S+)$")


def fleet_endpoint(deployment: Deployment) -> MqttEndpoint:
    return MqttEndpoint(
        "127.0.0.1",
        deployment.mqtt_port,
        deployment.value("ROADWATCH_MQTT_FLEET_USER", "roadwatch-fleet"),
        deployment.value("ROADWATCH_MQTT_FLEET_PASSWORD"),
    )


def test_accident_reports_reach_the_api_and_the_browser(
    deployment: Deployment, browser: Browser
) -> None:
    # Logged in anonymously to the containerised Prosody over BOSH through Apache.
    page, errors = open_live_page(browser, deployment.http_url, timeout_ms=20_000)

    suffix = str(time.time_ns())[-6:]
    first, second = f"compose-a-{suffix}", f"compose-b-{suffix}"
    try:
        with connected(fleet_endpoint(deployment)) as fleet:
            publish_accident_pair(fleet, first, second, LAT, LON)
        deadline = time.monotonic() + DEADLINE_S

        items = poll_until(
            f"an event for {first} in GET /api/events",
            lambda: api_events(deployment.http_url, station=first),
            deadline,
            interval_s=0.1,
        )
        assert len(items) == 1
        event = items[0]
        assert event["type"] == "accident"
        assert event["status"] == "active"
        assert sorted(event["station_ids"]) == sorted([first, second])

        accident_row(page, event["id"], deadline, grace_ms=1000)
        assert errors == []
    finally:
        page.close()


def test_only_apache_mosquitto_and_prosodys_c2s_are_published(deployment: Deployment) -> None:
    # Each service's published ports (`docker ps` also lists the exposed ones, without "->").
    published = {
        service: sorted(part for part in ports.split(", ") if "->" in part)
        for service, ports in deployment.containers().items()
        if "->" in ports
    }
    assert sorted(published) == ["apache", "mosquitto", "prosody"]
    http = (
        deployment.value("ROADWATCH_HTTP_BIND", "127.0.0.1"),
        deployment.value("ROADWATCH_HTTP_PORT", "8080"),
    )
    mqtt = (deployment.value("ROADWATCH_MQTT_BIND", "127.0.0.1"), deployment.mqtt_port)
    mqtts = (
        deployment.value("ROADWATCH_MQTT_TLS_BIND", "0.0.0.0"),
        deployment.value("ROADWATCH_MQTT_TLS_PORT", "8883"),
    )
    xmpp = (
        deployment.value("ROADWATCH_XMPP_BIND", "0.0.0.0"),
        deployment.value("ROADWATCH_XMPP_PORT", "5222"),
    )
    assert published["apache"] == [f"{http[0]}:{http[1]}->8080/tcp"]
    # Plain MQTT for this machine; MQTT over TLS and XMPP (STARTTLS) for clients from outside.
    assert published["mosquitto"] == sorted(
        [f"{mqtt[0]}:{mqtt[1]}->1883/tcp", f"{mqtts[0]}:{mqtts[1]}->8883/tcp"]
    )
    assert published["prosody"] == [f"{xmpp[0]}:{xmpp[1]}->5222/tcp"]


def test_the_simulator_reaches_mosquitto_but_not_mysql(deployment: Deployment) -> None:
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    assert deployment.exec("simulator", "python", "-c", probe, "mosquitto", "1883").returncode == 0
    assert deployment.exec("simulator", "python", "-c", probe, "mysql", "3306").returncode == 1
    assert deployment.exec("apache", "bash", "-c", "getent hosts mysql").returncode != 0


def test_accounts_made_with_the_tool_container_log_in_and_keep_to_their_kind(
    deployment: Deployment,
) -> None:
    station = f"compose-car-{str(time.time_ns())[-6:]}"
    made = deployment.compose("run", "--rm", "accounts", "add", "vehicle", station)
    assert made.returncode == 0, made.stderr
    assert f"may publish to vehicles/{station}/cam" in made.stdout
    password = made.stdout.split("password: ", 1)[1].strip()
    listed = deployment.compose("run", "--rm", "accounts", "list")
    assert any(line.split()[:2] == [station, "vehicle"] for line in listed.stdout.splitlines())

    endpoint = MqttEndpoint("127.0.0.1", deployment.mqtt_port, station, password)
    deadline = time.monotonic() + 10  # the broker applies the registry within a second or two
    while True:
        vehicle = BlockingPublisher(endpoint)
        try:
            vehicle.start()
            break
        except MqttAuthError:
            assert time.monotonic() < deadline, "the new account was never let in"
            time.sleep(0.5)
    try:
        mine = vehicle.publish(f"vehicles/{station}/cam", b"{}", qos=1)
        phone_topic = vehicle.publish(f"owntracks/{station}/phone", b"{}", qos=1)
        assert mine is not None and phone_topic is not None
        mine.wait(5)
        with pytest.raises(MqttPublishRefused):
            phone_topic.wait(5)
    finally:
        vehicle.stop()
    impostor = BlockingPublisher(
        MqttEndpoint("127.0.0.1", deployment.mqtt_port, station, password + "x")
    )
    with pytest.raises(MqttAuthError):
        impostor.start()
    removed = deployment.compose("run", "--rm", "accounts", "remove", station)
    assert removed.returncode == 0, removed.stderr


def test_a_follower_made_in_the_prosody_container_gets_a_password_once(
    deployment: Deployment,
) -> None:
    name = f"desk-{str(time.time_ns())[-6:]}"
    made = deployment.exec("prosody", "roadwatch-xmpp-account", "add", name)
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("password: ") == 1
    rotated = deployment.exec("prosody", "roadwatch-xmpp-account", "rotate", name)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.split("password: ")[1] != made.stdout.split("password: ")[1]
    removed = deployment.exec("prosody", "roadwatch-xmpp-account", "remove", name)
    assert removed.returncode == 0, removed.stderr


# --- Two gateway containers (profile `scaled`) -------------------------------------------------

Position = tuple[float, float]
_ACCIDENTS_SENT = 'events_total{status="active",type="accident"}'
_METRICS_SCRIPT = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen('http://127.0.0.1:8001/metrics', timeout=3) as reply:\n"
    "    sys.stdout.write(reply.read().decode())\n"
)


def deployment_partitioning(deployment: Deployment) -> Partitioning:
    """The partition function of the deployment's gateways: its values, else the defaults."""
    fields = Settings.model_fields

    def setting(name: str) -> str:
        return deployment.value(f"ROADWATCH_{name.upper()}", str(fields[name].default))

    return Partitioning(
        partitions=int(setting("gateway_partitions")),
        cell_m=float(setting("gateway_partition_cell_m")),
        margin_m=float(setting("gateway_partition_margin_m")),
    )


def needs_two_gateways(deployment: Deployment) -> Partitioning:
    partitioning = deployment_partitioning(deployment)
    if partitioning.partitions != len(GATEWAYS):
        pytest.skip("the deployment runs one gateway (make compose-test runs two)")
    assert set(GATEWAYS) <= set(deployment.containers())
    return partitioning


def report_positions(lat: float, lon: float) -> list[Position]:
    """Where publish_accident_pair puts the two reports of an accident at (lat, lon)."""
    return [(lat, lon), (lat + PAIR_STEP[0], lon + PAIR_STEP[1])]


def places_inside_cells(partitioning: Partitioning) -> list[tuple[int, Position]]:
    """Accident places nearest Reims, in distinct cells, far from borders: so many per owner."""
    candidates = sorted(
        (
            (LAT + row * 0.01, LON + column * 0.015)
            for row in range(-15, 16)
            for column in range(-15, 16)
        ),
        key=lambda place: (place[0] - LAT) ** 2 + ((place[1] - LON) * 0.65) ** 2,
    )
    chosen: list[tuple[int, Position]] = []
    cells: set[tuple[int, int]] = set()
    per_owner: Counter[int] = Counter()
    for place in candidates:
        owners = set().union(*(partitioning.area_owners(*p) for p in report_positions(*place)))
        cell = partitioning.cell(*place)
        if len(owners) != 1 or cell in cells:
            continue  # near another owner's cell (a halo), or a cell already used
        owner = owners.pop()
        if per_owner[owner] < PLACES_PER_INSTANCE:
            chosen.append((owner, place))
            cells.add(cell)
            per_owner[owner] += 1
    assert sorted(per_owner.values()) == [PLACES_PER_INSTANCE] * partitioning.partitions
    return chosen


def place_across_a_border(partitioning: Partitioning) -> tuple[int, Position]:
    """An accident whose two reports lie on either side of a border between two owners.

    Each report reaches both owners through the halo; the event is sent by the owner of the
    reports' mean position only.
    """
    step = 0.001
    west = LON - 0.2
    while west < LON + 0.2:
        if partitioning.area_owner(LAT, west) != partitioning.area_owner(LAT, west + step):
            break
        west += step
    else:
        pytest.fail("no border between two owners near Reims")
    east = west + step
    while east - west > 1e-7:  # the border, to a centimetre
        middle = (west + east) / 2
        same = partitioning.area_owner(LAT, middle) == partitioning.area_owner(LAT, west)
        west, east = (middle, east) if same else (west, middle)
    place = (LAT, east - 0.0004)  # the second report is 0.0005° east of the first
    first, second = report_positions(*place)
    assert partitioning.area_owner(*first) != partitioning.area_owner(*second)
    return partitioning.area_owner(*mean_position([first, second])), place


def gateway_metrics(deployment: Deployment, service: str) -> dict[str, float]:
    """The samples of a gateway container's /metrics, by name and labels."""
    answer = deployment.exec(service, "python", "-c", _METRICS_SCRIPT)
    assert answer.returncode == 0, answer.stderr
    samples: dict[str, float] = {}
    for line in answer.stdout.splitlines():
        if match := _SAMPLE.match(line):
            name, labels, value = match.groups()
            samples[f"{name}{{{labels}}}" if labels else name] = float(value)
    return samples


def settled_metrics(deployment: Deployment) -> dict[str, dict[str, float]]:
    """Every gateway's metrics once no message is arriving any more."""
    last = {service: gateway_metrics(deployment, service) for service in GATEWAYS}
    for _ in range(20):
        time.sleep(0.25)
        now = {service: gateway_metrics(deployment, service) for service in GATEWAYS}
        if all(
            now[s]["messages_received_total"] == last[s]["messages_received_total"]
            for s in GATEWAYS
        ):
            return now
        last = now
    pytest.fail("the gateways kept receiving messages with the simulator paused")


def test_two_gateway_containers_share_the_accidents_without_doubles_or_losses(
    deployment: Deployment,
) -> None:
    partitioning = needs_two_gateways(deployment)
    border_owner, border_place = place_across_a_border(partitioning)
    accidents = [*places_inside_cells(partitioning), (border_owner, border_place)]
    suffix = str(time.time_ns())[-6:]
    stations = [(f"share-{suffix}-{n}-a", f"share-{suffix}-{n}-b") for n in range(len(accidents))]

    # The simulator's own accidents would blur the gateways' counts meanwhile. (Docker shows a
    # paused container unhealthy until its next healthcheck after `unpause`.)
    with deployment.paused("simulator"):
        before = settled_metrics(deployment)
        with connected(fleet_endpoint(deployment)) as fleet:
            for (first, second), (_, (lat, lon)) in zip(stations, accidents, strict=True):
                publish_accident_pair(fleet, first, second, lat, lon)
        deadline = time.monotonic() + DEADLINE_S
        for first, second in stations:
            items = poll_until(
                f"an event for {first} in GET /api/events",
                functools.partial(api_events, deployment.http_url, station=first),
                deadline,
                interval_s=0.1,
            )
            assert len(items) == 1, items
            assert items[0]["type"] == "accident"
            assert sorted(items[0]["station_ids"]) == sorted([first, second])
        after = {service: gateway_metrics(deployment, service) for service in GATEWAYS}

    def grown(service: str, sample: str) -> float:
        return after[service].get(sample, 0.0) - before[service].get(sample, 0.0)

    # Each accident was sent once, by the container owning its place: both did their share.
    owners = Counter(GATEWAYS[owner] for owner, _ in accidents)
    assert {service: grown(service, _ACCIDENTS_SENT) for service in GATEWAYS} == {
        service: float(owners[service]) for service in GATEWAYS
    }
    assert all(owners[service] >= PLACES_PER_INSTANCE for service in GATEWAYS)
    # The accident across the border was seen by the other owner too, which stayed silent.
    other = GATEWAYS[1 - border_owner]
    assert grown(other, "partition_events_elsewhere_total") >= 1
    for service in GATEWAYS:
        assert grown(service, "messages_received_total") > 0
        assert grown(service, "partition_unrouted_total") == 0


def test_each_gateway_container_keeps_its_own_state_and_status(deployment: Deployment) -> None:
    needs_two_gateways(deployment)
    for instance, service in enumerate(GATEWAYS):
        name = f"gateway-{instance}"
        other = f"gateway-{1 - instance}"
        run_dir = deployment.exec(service, "ls", "-1", "/var/lib/roadwatch").stdout.split()
        assert name in run_dir
        assert other not in run_dir
        status = deployment.exec(service, "ls", "-1", "/var/lib/roadwatch/status").stdout.split()
        assert [entry for entry in status if entry.endswith(".json")] == [f"{name}.json"]
        assert deployment.exec(service, "roadwatch-healthcheck", "gateway").returncode == 0
    # The healthcheck reads its own instance's status file: under another number it finds none.
    elsewhere = {"ROADWATCH_GATEWAY_INSTANCE": "0"}
    assert (
        deployment.exec("gateway-2", "roadwatch-healthcheck", "gateway", env=elsewhere).returncode
        == 1
    )
    single = {"ROADWATCH_GATEWAY_PARTITIONS": "1"}
    assert (
        deployment.exec("gateway", "roadwatch-healthcheck", "gateway", env=single).returncode == 1
    )


def test_no_secret_is_on_any_process_command_line_while_the_stack_runs(
    deployment: Deployment,
) -> None:
    """Healthchecks run every 5 s in every container; `ps` on this machine sees them all."""
    secrets_in_use = {
        value
        for name, value in deployment.env.items()
        if name.endswith(("PASSWORD", "TOKEN")) and len(value) >= 8
    }
    assert secrets_in_use
    seen: set[str] = set()
    known: set[str] = set()
    deadline = time.monotonic() + 12  # over two healthcheck intervals
    while time.monotonic() < deadline:
        # Only processes not met yet are read: a pass takes about a millisecond, so even a
        # healthcheck's mosquitto_sub, alive a few milliseconds, is seen.
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in known:
                continue
            known.add(pid)
            try:
                cmdline = Path("/proc", pid, "cmdline").read_bytes()
            except OSError:
                continue  # the process ended meanwhile
            seen.add(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    # The scan does catch the short-lived healthchecks, the broker's own client included.
    assert any(line.startswith("mosquitto_sub ") for line in seen)
    leaked = [line[:80] for line in seen for secret in secrets_in_use if secret in line]
    assert leaked == []
