"""Shared fixtures: a private system (ports, folders, secrets) for the test session.

Every server the tests need is started by the harness itself on free ports and under its own
folder, with the same runner code `make up` uses, so tests never touch a running `make up`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from roadwatch.runner.process import RunLayout, free_port
from roadwatch.settings import Settings

pytest_plugins = [
    "tests.fixtures_servers",
]


_LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fast layers first: unit, then integration, then end to end."""

    def layer(item: pytest.Item) -> int:
        parts = Path(str(item.path)).parts
        return next((i for i, name in enumerate(_LAYERS) if name in parts), len(_LAYERS))

    items.sort(key=layer)


@pytest.fixture(scope="session")
def run_root() -> Iterator[Path]:
    """A fresh folder for every server's state; readable by the servers' own users."""
    root = Path(tempfile.mkdtemp(prefix="rw-test-"))
    root.chmod(0o755)
    yield root
    if not os.environ.get("ROADWATCH_KEEP_TEST_RUN"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def test_settings(run_root: Path) -> Settings:
    """Settings of the test system: free ports, random secrets, its own run folder."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        mqtt_port=free_port(),
        xmpp_port=free_port(),
        bosh_port=free_port(),
        mysql_port=free_port(),
        http_port=free_port(),
        api_port=free_port(),
        gateway_metrics_port=free_port(),
        mqtt_gateway_password=SecretStr(secrets.token_urlsafe(18)),
        mqtt_fleet_password=SecretStr(secrets.token_urlsafe(18)),
        xmpp_gateway_password=SecretStr(secrets.token_urlsafe(18)),
        xmpp_collector_password=SecretStr(secrets.token_urlsafe(18)),
        mysql_password=SecretStr(secrets.token_urlsafe(18)),
        prosody_db_password=SecretStr(secrets.token_urlsafe(18)),
        api_token=SecretStr(secrets.token_urlsafe(24)),
        run_dir=run_root,
        demo=False,
    )


@pytest.fixture(scope="session")
def layout(test_settings: Settings) -> RunLayout:
    layout = RunLayout(test_settings.run_dir)
    layout.ensure()
    return layout
