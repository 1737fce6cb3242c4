"""Session fixtures that start each real server for the tests, through the native runner.

The servers run unsupervised here (`Server.start`), owned by the test session; the supervised
run of `make up` is tested on its own private system (tests/integration/test_supervised_run.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from roadwatch.runner.apache import Apache
    from roadwatch.runner.mariadb import MariaDB
    from roadwatch.runner.mosquitto import Mosquitto
    from roadwatch.runner.process import RunLayout
    from roadwatch.runner.prosody import Prosody
    from roadwatch.settings import Settings


@pytest.fixture(scope="session")
def mariadb(test_settings: Settings, layout: RunLayout) -> Iterator[MariaDB]:
    """A real MariaDB with the roadwatch and prosody databases, migrated."""
    from roadwatch.runner.mariadb import MariaDB  # noqa: PLC0415

    server = MariaDB(test_settings, layout)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mosquitto(test_settings: Settings, layout: RunLayout) -> Iterator[Mosquitto]:
    """A real Mosquitto with the RoadWatch password file and ACL."""
    from roadwatch.runner.mosquitto import Mosquitto  # noqa: PLC0415

    server = Mosquitto(test_settings, layout)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prosody(test_settings: Settings, layout: RunLayout, mariadb: MariaDB) -> Iterator[Prosody]:
    """A real Prosody storing in the test MariaDB, with the gateway and collector accounts."""
    from roadwatch.runner.prosody import Prosody  # noqa: PLC0415

    server = Prosody(test_settings, layout)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def apache(test_settings: Settings, layout: RunLayout) -> Iterator[Apache]:
    """A real Apache serving web/ and proxying /api/ and /http-bind."""
    from roadwatch.runner.apache import Apache  # noqa: PLC0415

    server = Apache(test_settings, layout)
    server.start()
    yield server
    server.stop()
