"""The whole system for end-to-end tests: every server and service, and a real browser."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from roadwatch.runner.stack import PythonService, service_probe
from tests.browser import headless_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from roadwatch.runner.apache import Apache
    from roadwatch.runner.mariadb import MariaDB
    from roadwatch.runner.mosquitto import Mosquitto
    from roadwatch.runner.process import RunLayout
    from roadwatch.runner.prosody import Prosody
    from roadwatch.settings import Settings

# Screenshots of every page, saved by the browser tests for people to look at (git-ignored).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@dataclass
class RunningSystem:
    """The test system's settings and its Python services, which tests may restart or kill."""

    settings: Settings
    services: dict[str, PythonService]


@pytest.fixture(scope="package")
def running_system(
    test_settings: Settings,
    layout: RunLayout,
    mariadb: MariaDB,
    mosquitto: Mosquitto,
    prosody: Prosody,
    apache: Apache,
) -> Iterator[RunningSystem]:
    """Every RoadWatch service running against the test servers, for the e2e tests only.

    Package-scoped: the integration tests log in as the same XMPP and MQTT accounts, and two
    sessions on one account would take turns disconnecting each other.
    """
    services = {
        name: PythonService(name, test_settings, layout, service_probe(test_settings, name))
        for name in ("api", "collector", "gateway")
    }
    try:
        for service in services.values():
            service.start()
        yield RunningSystem(test_settings, services)
    finally:
        for service in reversed(services.values()):
            service.stop()


@pytest.fixture
def system(running_system: RunningSystem) -> Settings:
    """The settings of the running test system."""
    return running_system.settings


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium driven by Playwright."""
    with headless_chromium() as browser:
        yield browser


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Page, str], Path]:
    """Save a full-page screenshot as test-artifacts/screenshots/<name>.png; return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(page: Page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
