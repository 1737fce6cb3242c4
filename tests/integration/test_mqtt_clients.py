"""Debian's own MQTT clients, MQTT 3.1.1 and 5, against the broker's accounts
(docs/contract/mqtt.md §8, docs/contract/targets.md §7).

mosquitto_pub and mosquitto_sub run unchanged; their credentials come from their own options
file (as docs/accounts-and-tls.md shows), so no password is on their command line either.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from roadwatch.domain.accounts import AccountKind
from roadwatch.runner.accounts import AccountManager
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.settings import Settings
from tests.integration.mqtt_inbox import Inbox, gateway_endpoint

pytestmark = pytest.mark.integration

VERSIONS = ["mqttv311", "mqttv5"]
EVERY_TREE = (("vehicles/#", 1), ("owntracks/#", 1))


def client_environment(tmp_path: Path, user: str, password: str) -> dict[str, str]:
    """An environment whose mosquitto_pub/_sub options file logs in as `user`."""
    config = tmp_path / f"config-{user}"
    config.mkdir()
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        options = config / tool
        options.write_text(f"-u {user}\n-P {password}\n")
        options.chmod(0o600)
    return {**os.environ, "XDG_CONFIG_HOME": str(config)}


def mosquitto_pub(
    settings: Settings, env: dict[str, str], version: str, topic: str, message: bytes
) -> subprocess.CompletedProcess[str]:
    argv = ["mosquitto_pub", "-h", settings.mqtt_host, "-p", str(settings.mqtt_port)]
    argv += ["-V", version, "-q", "1", "-t", topic, "-s"]
    return subprocess.run(
        argv,
        input=message.decode(),
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def accounts(test_settings: Settings, mosquitto: Mosquitto) -> AccountManager:
    return AccountManager(test_settings)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_vehicle_publishes_as_itself_and_nothing_else_gets_through(
    test_settings: Settings, accounts: AccountManager, tmp_path: Path, version: str
) -> None:
    made = accounts.add(AccountKind.VEHICLE, f"pub-{version[-2:]}-{os.getpid()}")
    station = made.account.name
    env = client_environment(tmp_path, station, made.password)
    cam = orjson.dumps({"stationId": station, "stationType": 5})
    with Inbox(gateway_endpoint(test_settings), EVERY_TREE) as gateway:
        mine = mosquitto_pub(test_settings, env, version, f"vehicles/{station}/cam", cam)
        assert mine.returncode == 0, mine.stderr
        for forged in ("vehicles/someone-else/cam", f"owntracks/{station}/phone"):
            refused = mosquitto_pub(test_settings, env, version, forged, cam)
            if version == "mqttv5":
                # MQTT 5 tells the publisher why; 3.1.1 has no way to, so the broker drops it.
                assert "not authorized" in (refused.stdout + refused.stderr).lower()
        received = {topic for topic, _payload, _qos in gateway.quiet(1.0)}
    assert received == {f"vehicles/{station}/cam"}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_phone_publishes_locations_under_its_own_user_only(
    test_settings: Settings, accounts: AccountManager, tmp_path: Path, version: str
) -> None:
    made = accounts.add(AccountKind.PHONE, f"ot-{version[-2:]}-{os.getpid()}")
    user = made.account.name
    env = client_environment(tmp_path, user, made.password)
    location = orjson.dumps({"_type": "location", "lat": 49.25, "lon": 4.03, "tst": 1})
    with Inbox(gateway_endpoint(test_settings), EVERY_TREE) as gateway:
        done = mosquitto_pub(test_settings, env, version, f"owntracks/{user}/pixel", location)
        assert done.returncode == 0, done.stderr
        mosquitto_pub(test_settings, env, version, "owntracks/other/pixel", location)
        mosquitto_pub(test_settings, env, version, f"vehicles/{user}/denm", location)
        received = {topic for topic, _payload, _qos in gateway.quiet(1.0)}
    assert received == {f"owntracks/{user}/pixel"}


@pytest.mark.parametrize("version", VERSIONS)
def test_anonymous_and_wrong_passwords_are_refused(
    test_settings: Settings, accounts: AccountManager, tmp_path: Path, version: str
) -> None:
    made = accounts.add(AccountKind.VEHICLE, f"pw-{version[-2:]}-{os.getpid()}")
    station = made.account.name
    topic = f"vehicles/{station}/cam"
    anonymous = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "none")}
    wrong = client_environment(tmp_path, station, made.password + "x")
    with Inbox(gateway_endpoint(test_settings), EVERY_TREE) as gateway:
        for env in (anonymous, wrong):
            refused = mosquitto_pub(test_settings, env, version, topic, b"{}")
            assert refused.returncode != 0
            assert "not authori" in refused.stderr.lower() or "refused" in refused.stderr.lower()
        assert gateway.quiet(0.5) == []


def test_a_vehicle_cannot_subscribe_to_anything(
    test_settings: Settings, accounts: AccountManager, tmp_path: Path
) -> None:
    made = accounts.add(AccountKind.VEHICLE, f"sub-{os.getpid()}")
    env = client_environment(tmp_path, made.account.name, made.password)
    argv = ["mosquitto_sub", "-h", test_settings.mqtt_host, "-p", str(test_settings.mqtt_port)]
    argv += ["-V", "mqttv5", "-t", "vehicles/#", "-t", f"vehicles/{made.account.name}/#"]
    argv += ["-W", "2", "-v"]
    spy = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fleet_env = client_environment(
        tmp_path,
        test_settings.mqtt_fleet_user,
        test_settings.mqtt_fleet_password.get_secret_value(),
    )
    mosquitto_pub(test_settings, fleet_env, "mqttv5", "vehicles/other/cam", b"private")
    out, _err = spy.communicate(timeout=10)
    assert "private" not in out
