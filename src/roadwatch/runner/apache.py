"""Apache for the native runner: the web app, /api/ and /http-bind behind one VirtualHost."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request

from roadwatch.runner.process import (
    run_checked,
    start_process,
    wait_until,
)
from roadwatch.runner.server import Server
from roadwatch.runner.templates import deploy_dir, repo_dir

log = logging.getLogger(__name__)

APACHE_USER = "www-data"


class Apache(Server):
    """The HTTP front of SPEC §8, configured only through environment variables."""

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
        s = self.settings
        env = dict(os.environ)
        env.update(s.as_environment())
        env.update(
            ROADWATCH_APACHE_DIR=str(self.folder),
            ROADWATCH_APACHE_USER=APACHE_USER
            if os.geteuid() == 0
            else os.environ.get("USER", "nobody"),
            ROADWATCH_WEB_ROOT=str(repo_dir() / "web"),
            ROADWATCH_API_UPSTREAM=f"http://{s.api_host}:{s.api_port}",
            ROADWATCH_BOSH_UPSTREAM=f"http://{s.xmpp_host}:{s.bosh_port}",
        )
        return env

    def argv(self, *extra: str) -> list[str]:
        apache2 = shutil.which("apache2") or "/usr/sbin/apache2"
        return [apache2, "-f", str(deploy_dir() / "apache" / "httpd.conf"), *extra]

    def check_config(self) -> None:
        """Fail early, with Apache's own message, on a configuration error."""
        run_checked(self.argv("-t"), "apache2 -t", env=self.environment())

    def start(self) -> None:
        if self.healthy():
            return
        self.check_config()
        start_process(self.layout, self.name, self.argv("-DFOREGROUND"), env=self.environment())
        wait_until(self.healthy, "apache", 15, self.layout.logfile(self.name))
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
