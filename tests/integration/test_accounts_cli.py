"""`roadwatch accounts`, run as an operator runs it, against the real broker and Prosody."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError

from roadwatch.adapters.mqtt import BlockingPublisher, MqttAuthError, MqttEndpoint
from roadwatch.adapters.xmpp import EventReceiver
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings
from tests.integration.test_xmpp import Collected, Positions, raw_client, running

pytestmark = pytest.mark.integration

PASSWORD_LINE = re.compile(r"^password: (\S+)$", re.MULTILINE)


def roadwatch(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        **settings.as_environment(),
        "ROADWATCH_ENV_FILE": "",
        "ROADWATCH_RUN_DIR": str(Path(settings.run_dir).resolve()),
    }
    return subprocess.run(
        [sys.executable, "-m", "roadwatch", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def password_of(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    [password] = [str(found) for found in PASSWORD_LINE.findall(done.stdout)]
    assert password not in done.stderr  # printed once, to the operator only
    return password


def logs_in(settings: Settings, user: str, password: str) -> bool:
    endpoint = MqttEndpoint(settings.mqtt_host, settings.mqtt_port, user, password)
    publisher = BlockingPublisher(endpoint)
    try:
        publisher.start(timeout_s=5)
    except MqttAuthError:
        return False
    publisher.stop()
    return True


def test_an_operator_adds_lists_rotates_and_removes_an_emergency_vehicle(
    test_settings: Settings, mosquitto: Mosquitto
) -> None:
    added = roadwatch(test_settings, "accounts", "add", "emergency", "samu-51")
    password = password_of(added)
    assert "vehicles/samu-51/cam" in added.stdout
    assert "(emergency)" in added.stdout
    assert logs_in(test_settings, "samu-51", password)

    listed = roadwatch(test_settings, "accounts", "list")
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("samu-51 ")]
    assert line.split()[1:3] == ["emergency", "emergency"]
    assert password not in listed.stdout

    again = roadwatch(test_settings, "accounts", "add", "vehicle", "samu-51")
    assert again.returncode == 2
    assert "already exists" in again.stderr

    rotated = password_of(roadwatch(test_settings, "accounts", "rotate", "samu-51"))
    assert rotated != password
    assert not logs_in(test_settings, "samu-51", password)
    assert logs_in(test_settings, "samu-51", rotated)

    removed = roadwatch(test_settings, "accounts", "remove", "samu-51")
    assert removed.returncode == 0, removed.stderr
    assert not logs_in(test_settings, "samu-51", rotated)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("add", "vehicle", "a/b"), "1 to 64 characters"),
        (("add", "phone", "roadwatch-fleet"), "reserved"),
        (("add", "vehicle", "x", "--trust", "operator"), "only `its` may choose"),
        (("remove", "nobody-at-all"), "no account nobody-at-all"),
    ],
)
def test_a_wrong_request_is_refused_with_a_clear_message(
    test_settings: Settings, mosquitto: Mosquitto, arguments: tuple[str, ...], message: str
) -> None:
    done = roadwatch(test_settings, "accounts", *arguments)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_follower_logs_in_to_xmpp_reads_the_alert_nodes_and_can_be_removed(
    test_settings: Settings, prosody: Prosody
) -> None:
    password = password_of(roadwatch(test_settings, "accounts", "add", "follower", "ops-desk"))
    jid = f"ops-desk@{test_settings.xmpp_domain}"
    positions = Positions()

    async def refused() -> None:
        async with raw_client(test_settings, jid, password):
            pass

    async def follow() -> None:
        # The collector makes the alert nodes when it logs in.
        receiver = EventReceiver(test_settings, Collected().handle, positions.load, positions.save)
        async with running(receiver), raw_client(test_settings, jid, password) as client:
            pubsub: Any = client.plugin["xep_0060"]
            items = await pubsub.get_items(test_settings.pubsub_service, "accident", timeout=10)
            assert items["pubsub"]["items"]["node"] == "accident"
            # Following is reading: publishing to the alert nodes is the collector's alone.
            with pytest.raises(IqError):
                await pubsub.publish(test_settings.pubsub_service, "accident", timeout=10)

    asyncio.run(asyncio.wait_for(follow(), 60))

    async def ended_by(*command: str) -> None:
        async with raw_client(test_settings, jid, password) as client:
            ended = asyncio.ensure_future(client.wait_until("disconnected", 15))
            done = await asyncio.to_thread(roadwatch, test_settings, "accounts", *command)
            assert done.returncode == 0, done.stderr
            await ended  # the open session ends with the password or account it used

    asyncio.run(asyncio.wait_for(ended_by("rotate", "ops-desk"), 60))
    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(refused(), 8))  # the old password no longer logs in
    password = password_of(roadwatch(test_settings, "accounts", "rotate", "ops-desk"))
    asyncio.run(asyncio.wait_for(ended_by("remove", "ops-desk"), 60))

    with pytest.raises((TimeoutError, asyncio.TimeoutError)):
        asyncio.run(asyncio.wait_for(refused(), 8))
