"""Apache for the native runner: the web app, /api/ and /http-bind behind one VirtualHost."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request

from pydantic import SecretStr

from roadwatch.runner.process import Program, prioritised, program_environment, run_checked
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir, repo_dir
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

APACHE_USER = "www-data"
# Apache proxies and serves files: it needs none of the system's secrets.
_SECRET_SETTINGS = frozenset(
    name for name, field in Settings.model_fields.items() if field.annotation is SecretStr
)


class Apache(Server):
    """The HTTP front of docs/contract/web.md §1, configured only through environment variables."""

    name = "apache"
    data_folder = "apache"

    @property
    def url(self) -> str:
        host = (
            "localhost"
            if self.settings.http_bind in ("0.0.0.0", "127.0.0.1")
            else self.settings.http_bind
        )
        return f"http://{host}:{self.settings.http_port}/"

    def environment(self) -> dict[str, str]:
        """Return the variables httpd.conf reads: the settings but no secret, and its paths."""
        s = self.settings
        env = {
            key: value
            for key, value in s.as_environment().items()
            if key.removeprefix("ROADWATCH_").lower() not in _SECRET_SETTINGS
        }
        env.update(
            ROADWATCH_APACHE_DIR=str(self.folder),
            ROADWATCH_APACHE_USER=APACHE_USER
            if os.geteuid() == 0
            else os.environ.get("USER", "nobody"),
            ROADWATCH_WEB_ROOT=str(repo_dir() / "web"),
            ROADWATCH_API_UPSTREAM=f"http://{s.api_host}:{s.api_port}",
            ROADWATCH_BOSH_UPSTREAM=f"http://{s.xmpp_host}:{s.bosh_port}",
        )
        return program_environment(self.layout.root, self.name, env)

    def argv(self, *extra: str) -> list[str]:
        apache2 = shutil.which("apache2") or "/usr/sbin/apache2"
        return [apache2, "-f", str(deploy_dir() / "apache" / "httpd.conf"), *extra]

    def prepare(self) -> None:
        """Fail early, with Apache's own message, on a configuration error."""
        run_checked(self.argv("-t"), "apache2 -t", env=self.environment())

    def program(self) -> Program:
        return Program(
            self.name,
            prioritised(self.argv("-DFOREGROUND"), self.settings.pipeline_nice),
            self.environment(),
            self.folder,
            # The workers of a parent killed with SIGKILL ignore SIGTERM and hold the port
            # (docs/DESIGN.md "Native runner"): they get SIGKILL straight away.
            leftover_grace_s=0.0,
            ports=(self.settings.http_port,),
        )

    def after_start(self, started: bool) -> None:
        log.info("apache serving %s", self.url)

    def healthy(self) -> bool:
        if not self.running():
            return False
        url = f"http://127.0.0.1:{self.settings.http_port}/"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False
