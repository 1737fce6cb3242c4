"""Shared fixtures: a private system (ports, folders, secrets) for the test session.

Every server the tests need is started by the harness itself on free ports and under its own
folder, with the same runner code `make up` uses, so tests never touch a running `make up`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
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
    return private_settings(run_root)


@pytest.fixture(scope="session")
def layout(test_settings: Settings) -> RunLayout:
    layout = RunLayout(test_settings.run_dir)
    layout.ensure()
    return layout
