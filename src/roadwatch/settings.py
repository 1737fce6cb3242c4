"""Typed settings for every RoadWatch process, read from the environment and `.env`.

Precedence, lowest first: defaults < the env file (`ROADWATCH_ENV_FILE`, default `.env`) <
the process environment < command-line options (applied by the CLI through `model_copy`).
Both runners (native and containers) read the same variable names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from roadwatch.domain.accident import AccidentRules
    from roadwatch.domain.detector import DetectionRules
    from roadwatch.domain.partition import Partitioning


# Values that a human might leave in a copied env file; refused outside development.
_PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password"})


class Settings(BaseSettings):
    """Every setting of every RoadWatch process; the env prefix is `ROADWATCH_`."""

    model_config = SettingsConfigDict(
        env_prefix="ROADWATCH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: str = Field("production", description="`development` allows placeholder secrets")
    log_level: str = "INFO"

    # MQTT (docs/contract/mqtt.md §1, §8)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # Address of the plain listener above: loopback, for the services on this machine
    # (docs/contract/mqtt.md §1).
    mqtt_bind: str = "127.0.0.1"
    # The TLS listener, for vehicles and phones from other machines (docs/contract/mqtt.md §1):
    # every interface by default, since that is what it is for; same accounts and ACL.
    mqtt_tls_port: int = 8883
    mqtt_tls_bind: str = "0.0.0.0"
    mqtt_gateway_user: str = "roadwatch-gateway"
    mqtt_gateway_password: SecretStr = SecretStr("")
    mqtt_fleet_user: str = "roadwatch-fleet"
    mqtt_fleet_password: SecretStr = SecretStr("")
    # Broker-side queue for the gateway's persistent session; see docs/STACK-NOTES.md §2.
    mqtt_gateway_client_id: str = "roadwatch-gateway"
    # The account registry (adapters/accounts.py): kinds, trust, MQTT hashes and ACL sections.
    # Unset, it is `accounts/` in the run folder.
    accounts_dir: Path | None = None
    # The fleet rule of docs/contract/mqtt.md §9: the stationType declared for a station no account
    # owns (only the fleet account may publish there) is believed. Off, such stations are never
    # trusted.
    fleet_declared_trust: bool = True
    # The topic prefix of its-client accounts (`{prefix}/inQueue/v2x/...`,
    # docs/contract/mqtt.md §10).
    its_prefix: str = Field("its", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    # XMPP (docs/contract/xmpp.md §1)
    xmpp_domain: str = "roadwatch.local"
    xmpp_host: str = "127.0.0.1"
    xmpp_port: int = 5222
    # Address c2s listens on: every interface, STARTTLS required for all but loopback clients
    # (BOSH stays on loopback behind Apache). It must include xmpp_host.
    xmpp_bind: str = "0.0.0.0"
    bosh_port: int = 5280
    xmpp_gateway_password: SecretStr = SecretStr("")
    xmpp_collector_password: SecretStr = SecretStr("")

    # MySQL (docs/contract/storage.md §1)
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    mysql_database: str = "roadwatch"
    mysql_user: str = "roadwatch"
    mysql_password: SecretStr = SecretStr("")
    prosody_db_name: str = "prosody"
    prosody_db_user: str = "prosody"
    prosody_db_password: SecretStr = SecretStr("")

    # TLS (docs/DESIGN.md, "TLS and outside clients"). Unset, set-up generates a local CA and a
    # server certificate under <run_dir>/tls/. The operator's own certificate and key (PEM) go
    # together; the CA is what clients and our own services trust (unset with an own
    # certificate: the system's store, i.e. a public CA).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # More names or addresses for the generated certificate, comma-separated: the public name
    # or address clients connect to, when it is not this machine's own name.
    tls_extra_names: str = ""

    # HTTP
    http_port: int = 8080
    http_bind: str = "127.0.0.1"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: SecretStr = SecretStr("")

    # Collector batching: a batch takes what waits, up to this many events; it waits this long
    # for more after its first only when above 0. At 0 the batches grow with the load by
    # themselves (what arrives during one commit forms the next batch) and a lone accident
    # does not wait: 0.02 s here added 20 ms to every event at low load.
    collector_batch_size: int = 500
    collector_flush_interval_s: float = 0.0

    # Detection thresholds (docs/contract/detection.md §10), all overridable from the environment.
    accident_radius_m: float = 200.0
    accident_window_s: float = 600.0
    accident_expiry_s: float = 1800.0
    future_tolerance_s: float = 300.0
    # A timestamp this far ahead of the detection clock moves it without confirmation (see
    # docs/DESIGN.md: one vehicle with a fast clock must not expire everybody's state).
    clock_slack_s: float = 10.0
    # Traffic jams: H3 cells split by direction of travel (docs/contract/detection.md §5).
    jam_cell_resolution: int = 9
    jam_window_s: float = 60.0
    jam_min_stations: int = 3
    jam_slow_speed_kmh: float = 30.0
    jam_free_speed_kmh: float = 50.0
    jam_clear_after_s: float = 120.0
    jam_clear_min_stations: int = 2
    jam_update_interval_s: float = 30.0
    # Zones: the GeoJSON file loaded at start (relative paths are from the repository).
    zones_file: Path = Path("deploy/zones/reims.geojson")
    # The road network the simulator drives and the web map draws; empty means the shipped
    # Reims network.
    network_file: Path | None = None
    zone_timeout_s: float = 600.0
    zone_hysteresis_m: float = 0.0
    # How often the gateway looks for zone changes made through the REST API.
    zone_refresh_s: float = 2.0
    # Other DENM causes relayed as `hazard` events.
    hazard_radius_m: float = 200.0
    hazard_expiry_s: float = 1800.0
    # CPU priority (nice) of everything an alert goes through natively: Mosquitto, the
    # gateway, Prosody, the collector, MariaDB and Apache. Below 0 they run before other work
    # on the machine, so a browser on the same two cores cannot delay an accident (Chromium
    # raises its own display threads to -8: -10 stays ahead). 0 leaves them at the default;
    # raising priority needs root, and nice(1) warns and runs them unchanged without.
    pipeline_nice: int = -10
    # Detection state saved by the gateway (a snapshot at most this often, and at shutdown).
    state_snapshot_interval_s: float = 5.0
    # Keep every journal segment (under archive/) instead of deleting those a snapshot holds:
    # an audit trail of exactly what the detector was fed (the fault tests compare with it).
    gateway_keep_journal: bool = False
    # Each Python service answers GET /health and GET /metrics on its own loopback port
    # (adapters/metrics.py); 0 serves none.
    gateway_metrics_port: int = 8001
    collector_metrics_port: int = 8002
    simulator_metrics_port: int = 8003
    # Several gateway instances sharing the load (docs/scaling.md): how many, and
    # which one this is (0 .. partitions - 1). One partition is a single gateway, as always.
    gateway_partitions: int = Field(1, ge=1, le=64)
    gateway_instance: int = Field(0, ge=0)
    # Places are grid cells this many metres across, each owned by one instance; a message
    # within the margin of another cell also goes to that cell's owner.
    gateway_partition_cell_m: float = 5000.0
    gateway_partition_margin_m: float = 1000.0
    # The MQTT 5 shared-subscription group the instances take vehicle messages through.
    gateway_share_group: str = Field("roadwatch-gateways", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    # Native runner
    run_dir: Path = Path(".run")
    demo: bool = True

    @model_validator(mode="after")
    def _check_gateway_instance(self) -> Settings:
        if self.gateway_instance >= self.gateway_partitions:
            raise ValueError(
                f"ROADWATCH_GATEWAY_INSTANCE must be below ROADWATCH_GATEWAY_PARTITIONS"
                f" ({self.gateway_partitions})"
            )
        if not 0 <= self.gateway_partition_margin_m < self.gateway_partition_cell_m:
            raise ValueError("ROADWATCH_GATEWAY_PARTITION_MARGIN_M must be below the cell size")
        return self

    @model_validator(mode="after")
    def _check_tls_files(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("ROADWATCH_TLS_CERT_FILE and ROADWATCH_TLS_KEY_FILE go together")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "development":
            return self
        for name in ("mqtt_gateway_password", "xmpp_gateway_password", "mysql_password"):
            value: SecretStr = getattr(self, name)
            if value.get_secret_value().lower() in _PLACEHOLDER_SECRETS - {""}:
                raise ValueError(f"ROADWATCH_{name.upper()} is a placeholder; run `make up`")
        return self

    def as_environment(self) -> dict[str, str]:
        """Render these settings as `ROADWATCH_*` variables for a child process."""
        env: dict[str, str] = {}
        for name, value in self:
            if value is None:
                continue  # unset optional setting: "None" would read back as a value
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, bool):
                text = "1" if value else "0"
            else:
                text = str(value)
            env[f"ROADWATCH_{name.upper()}"] = text
        return env

    @property
    def account_folder(self) -> Path:
        return self.accounts_dir if self.accounts_dir is not None else self.run_dir / "accounts"

    @property
    def tls_trusted_ca(self) -> Path | None:
        """Return the CA our own clients verify servers with (None: the system's store)."""
        if self.tls_ca_file is not None:
            return self.tls_ca_file
        if self.tls_cert_file is not None:
            return None  # the operator's certificate without a CA of theirs: a public CA
        return Path(self.run_dir) / "tls" / "ca.crt"

    @property
    def gateway_jid(self) -> str:
        return f"gateway@{self.xmpp_domain}"

    @property
    def gateway_name(self) -> str:
        """Name this gateway instance: its state folder, status file and XMPP resource."""
        if self.gateway_partitions == 1:
            return "gateway"
        return f"gateway-{self.gateway_instance}"

    @property
    def gateway_client_id(self) -> str:
        """Return this instance's MQTT client id (each has its own persistent session)."""
        if self.gateway_partitions == 1 or not self.mqtt_gateway_client_id:
            return self.mqtt_gateway_client_id
        return f"{self.mqtt_gateway_client_id}-{self.gateway_instance}"

    @property
    def gateway_partitioning(self) -> Partitioning:
        """Return the partition function shared by every gateway instance."""
        from roadwatch.domain.partition import Partitioning  # noqa: PLC0415

        return Partitioning(
            partitions=self.gateway_partitions,
            cell_m=self.gateway_partition_cell_m,
            margin_m=self.gateway_partition_margin_m,
        )

    @property
    def collector_jid(self) -> str:
        return f"collector@{self.xmpp_domain}"

    @property
    def pubsub_service(self) -> str:
        return f"pubsub.{self.xmpp_domain}"

    @property
    def anonymous_domain(self) -> str:
        return f"anon.{self.xmpp_domain}"

    @property
    def accident_rules(self) -> AccidentRules:
        from roadwatch.domain.accident import AccidentRules  # noqa: PLC0415

        return AccidentRules(
            radius_m=self.accident_radius_m,
            window_ms=round(self.accident_window_s * 1000),
            expiry_ms=round(self.accident_expiry_s * 1000),
        )

    @property
    def detection_rules(self) -> DetectionRules:
        """Return the thresholds of every detection rule (docs/contract/detection.md §10), from
        these settings."""
        from roadwatch.domain.detector import DetectionRules  # noqa: PLC0415
        from roadwatch.domain.hazard import HazardRules  # noqa: PLC0415
        from roadwatch.domain.traffic_jam import JamRules  # noqa: PLC0415
        from roadwatch.domain.zones import ZoneRules  # noqa: PLC0415

        def ms(seconds: float) -> int:
            return round(seconds * 1000)

        return DetectionRules(
            accident=self.accident_rules,
            traffic_jam=JamRules(
                cell_resolution=self.jam_cell_resolution,
                window_ms=ms(self.jam_window_s),
                min_stations=self.jam_min_stations,
                slow_speed_kmh=self.jam_slow_speed_kmh,
                free_speed_kmh=self.jam_free_speed_kmh,
                clear_after_ms=ms(self.jam_clear_after_s),
                clear_min_stations=self.jam_clear_min_stations,
                update_interval_ms=ms(self.jam_update_interval_s),
            ),
            zones=ZoneRules(
                timeout_ms=ms(self.zone_timeout_s), hysteresis_m=self.zone_hysteresis_m
            ),
            hazard=HazardRules(radius_m=self.hazard_radius_m, expiry_ms=ms(self.hazard_expiry_s)),
            clock_slack_ms=ms(self.clock_slack_s),
            future_tolerance_ms=ms(self.future_tolerance_s),
        )


def load_settings(**overrides: object) -> Settings:
    """Read the settings now (never at import), with command-line overrides on top."""
    env_file = os.environ.get("ROADWATCH_ENV_FILE", ".env")
    settings = Settings(_env_file=env_file or None)  # type: ignore[call-arg]
    if overrides:
        settings = settings.model_copy(update=overrides)
    return settings
