"""The compose deployment under test: its env file, its project, a browser.

These tests run against containers that `make compose-test` (deploy/compose/test.sh) built
and started; `make test` does not collect them (pyproject.toml ignores this folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from roadwatch.runner.envfile import read_env_file
from tests.browser import headless_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Deployment:
    """How to reach the running containers from this machine."""

    project: str
    env: dict[str, str]

    def value(self, name: str, default: str = "") -> str:
        return self.env.get(name, default)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.value('ROADWATCH_HTTP_PORT', '8080')}"

    @property
    def mqtt_port(self) -> int:
        return int(self.value("ROADWATCH_MQTT_PORT", "1883"))

    def containers(self) -> dict[str, str]:
        """Map each running service to its published ports, as `docker ps` shows them."""
        result = subprocess.run(
            [
                "docker",
                "ps",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--format",
                '{{.Label "com.docker.compose.service"}}\t{{.Ports}}',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        found: dict[str, str] = {}
        for line in result.stdout.splitlines():
            service, _, ports = line.partition("\t")
            found[service] = ports
        return found

    def container(self, service: str) -> str:
        """Return the id of the (first) running container of `service`."""
        ids = subprocess.run(
            [
                "docker",
                "ps",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            pytest.fail(f"no running container of the service {service}")
        return ids[0]

    def exec(
        self, service: str, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the (first) container of `service`, with `env` added."""
        options = [f"--env={name}={value}" for name, value in (env or {}).items()]
        return subprocess.run(
            ["docker", "exec", *options, self.container(service), *argv],
            capture_output=True,
            text=True,
            check=False,
        )

    def compose(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run `docker-compose ARGV` on this deployment (e.g. a one-off `run` of a tool)."""
        env_file = os.environ.get("ROADWATCH_COMPOSE_ENV_FILE", str(REPO / ".env"))
        return subprocess.run(
            [
                "docker-compose",
                "--project-name",
                self.project,
                "--env-file",
                env_file,
                "--file",
                str(REPO / "compose.yaml"),
                *argv,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )

    @contextlib.contextmanager
    def paused(self, service: str) -> Iterator[None]:
        """Freeze the processes of `service` for the duration (`docker pause`)."""
        container = self.container(service)
        subprocess.run(["docker", "pause", container], capture_output=True, check=True)
        try:
            yield
        finally:
            subprocess.run(["docker", "unpause", container], capture_output=True, check=True)


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    """The deployment named by ROADWATCH_COMPOSE_ENV_FILE and ROADWATCH_COMPOSE_PROJECT."""
    env_file = Path(os.environ.get("ROADWATCH_COMPOSE_ENV_FILE", str(REPO / ".env")))
    if not env_file.is_file():
        pytest.fail(f"no env file {env_file}: run `make compose-test`")
    # docker-compose's default project name: the folder's name, lower case, alphanumerics only.
    default_project = re.sub(r"[^a-z0-9]", "", REPO.name.lower())
    project = os.environ.get("ROADWATCH_COMPOSE_PROJECT", default_project)
    return Deployment(project, read_env_file(env_file))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium driven by Playwright."""
    with headless_chromium() as browser:
        yield browser
