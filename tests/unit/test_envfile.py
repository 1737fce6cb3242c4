"""The generated `.env`: created once with every secret, reused after, never overwritten."""

from __future__ import annotations

from pathlib import Path

from roadwatch.runner.envfile import GENERATED, ensure_env_file, read_env_file
from roadwatch.settings import Settings

CONTRACT_NAMES = {
    "ROADWATCH_MQTT_FLEET_USER",
    "ROADWATCH_MQTT_FLEET_PASSWORD",
    "ROADWATCH_API_TOKEN",
}


def test_first_run_writes_every_secret_readable_only_by_its_owner(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    added = ensure_env_file(env)
    values = read_env_file(env)
    assert set(added) == set(GENERATED) == set(values)
    assert set(values) >= CONTRACT_NAMES
    assert all(len(values[name]) >= 16 for name in values if name.endswith(("PASSWORD", "TOKEN")))
    assert env.stat().st_mode & 0o077 == 0


def test_second_run_keeps_existing_secrets(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    ensure_env_file(env)
    before = env.read_text()
    assert ensure_env_file(env) == []
    assert env.read_text() == before


def test_missing_names_are_added_and_user_values_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("ROADWATCH_HTTP_PORT=9090\nROADWATCH_API_TOKEN=mine")
    added = ensure_env_file(env)
    values = read_env_file(env)
    assert "ROADWATCH_API_TOKEN" not in added
    assert values["ROADWATCH_API_TOKEN"] == "mine"
    assert values["ROADWATCH_HTTP_PORT"] == "9090"
    assert set(GENERATED) <= set(values)


def test_two_machines_get_different_secrets(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    ensure_env_file(one)
    ensure_env_file(two)
    assert read_env_file(one)["ROADWATCH_API_TOKEN"] != read_env_file(two)["ROADWATCH_API_TOKEN"]


def test_the_runner_reads_the_file_as_the_settings_do(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "export ROADWATCH_API_TOKEN='quoted # not a comment'\n"
        'ROADWATCH_MYSQL_PASSWORD="with \\"escaped\\" quotes"\n'
        "ROADWATCH_XMPP_DOMAIN=example.org # a comment\n"
    )
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    values = read_env_file(env)
    assert values["ROADWATCH_API_TOKEN"] == settings.api_token.get_secret_value()
    assert values["ROADWATCH_MYSQL_PASSWORD"] == settings.mysql_password.get_secret_value()
    assert values["ROADWATCH_XMPP_DOMAIN"] == settings.xmpp_domain == "example.org"
