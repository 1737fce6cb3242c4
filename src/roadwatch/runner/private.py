"""Settings of a private system: what tests and benchmarks start beside any `make up`."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import SecretStr

from roadwatch.runner.process import free_port
from roadwatch.settings import Settings


def _secret(size: int = 18) -> SecretStr:
    return SecretStr(secrets.token_urlsafe(size))


def private_settings(root: Path) -> Settings:
    """Free ports, fresh random secrets and `root` as the run folder; no `.env`, no demo."""
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
        collector_metrics_port=free_port(),
        simulator_metrics_port=free_port(),
        mqtt_gateway_password=_secret(),
        mqtt_fleet_password=_secret(),
        xmpp_gateway_password=_secret(),
        xmpp_collector_password=_secret(),
        mysql_password=_secret(),
        prosody_db_password=_secret(),
        api_token=_secret(24),
        run_dir=root,
        demo=False,
    )
