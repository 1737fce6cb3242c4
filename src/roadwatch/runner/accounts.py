"""`roadwatch accounts`: provision, list, rotate and remove accounts on the native system.

MQTT accounts live in the account registry (adapters/accounts.py), which the broker's password
file and ACL are rebuilt from and the gateway reads each account's trust from; followers are
XMPP accounts made through prosodyctl. Passwords are generated here, handed to the servers
through files or standard input, and returned once to be shown to the operator.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from roadwatch.adapters.accounts import AccountRegistry, RegistryError, new_password
from roadwatch.domain.accounts import Account, AccountKind, Trust
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.process import RunLayout, RunnerError
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# Mosquitto applies a reloaded password file and ACL shortly after SIGHUP.
RELOAD_SETTLE_S = 0.3
# XMPP accounts RoadWatch's own services use.
XMPP_SERVICE_ACCOUNTS = frozenset({"gateway", "collector"})


@dataclass(frozen=True)
class Provisioned:
    account: Account
    password: str


class AccountManager:
    """Account operations over the registry, the broker and Prosody of one run folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = AccountRegistry(settings.account_folder, settings.its_prefix)
        layout = RunLayout(settings.run_dir)
        self._broker = Mosquitto(settings, layout)
        self._prosody = Prosody(settings, layout)

    @property
    def reserved(self) -> frozenset[str]:
        s = self.settings
        return frozenset({s.mqtt_gateway_user, s.mqtt_fleet_user, *XMPP_SERVICE_ACCOUNTS})

    def add(self, kind: AccountKind, name: str, trust: Trust | None = None) -> Provisioned:
        try:
            account = Account.of(name, kind, trust)
        except ValueError as exc:
            raise RegistryError(str(exc)) from exc
        if not kind.is_mqtt and not self._prosody_prepared():
            raise RegistryError(
                "no Prosody here: XMPP accounts are made where it runs (in containers: "
                "`docker-compose exec prosody roadwatch-xmpp-account add NAME`)"
            )
        password = self.registry.add(account, self.reserved)
        if password is None:
            password = self._set_xmpp_password(account)
        else:
            self.apply_to_broker()
        return Provisioned(account, password)

    def rotate(self, name: str) -> Provisioned:
        account, password = self.registry.rotate(name)
        if password is None:
            password = new_password()
            self._prosody.change_password(name, password)
        else:
            self.apply_to_broker()
        return Provisioned(account, password)

    def remove(self, name: str) -> Account:
        account = self.registry.remove(name)
        if account.kind.is_mqtt:
            self.apply_to_broker()
        else:
            self._prosody.delete_account(name)
        return account

    def accounts(self) -> list[Account]:
        return [account for _name, account in sorted(self.registry.accounts().items())]

    def _prosody_prepared(self) -> bool:
        """Tell whether a native Prosody was set up in this run folder (not the containers')."""
        folder = self._prosody.layout.root / self._prosody.data_folder
        return folder.is_dir() and shutil.which("prosodyctl") is not None

    def _set_xmpp_password(self, account: Account) -> str:
        password = new_password()
        try:
            self._prosody.set_password(account.name, password)
        except RunnerError:
            # An account the registry lists but Prosody never made would be a lie.
            self.registry.remove(account.name)
            raise
        return password

    def native_broker(self) -> bool:
        """Tell whether a native broker was set up in this run folder."""
        return self._broker.prepared()

    def apply_to_broker(self) -> None:
        """Rebuild the native broker's files and make it re-read them.

        Without a native broker here (the containers' accounts volume), the broker's container
        notices the registry change itself.
        """
        if not self.native_broker():
            log.info("no native broker in %s: the registry alone changed", self.settings.run_dir)
            return
        self._broker.apply_accounts()
        if self._broker.pid() is not None:
            self._broker.reload()
            time.sleep(RELOAD_SETTLE_S)


def vehicle_provisioner(settings: Settings) -> Callable[[Mapping[str, str]], None]:
    """Return what creates the simulator's vehicle accounts (ordinary trust) on the native broker.

    Each call provisions a batch of stations with their passwords in one broker reload.
    """
    manager = AccountManager(settings)

    def provision(accounts: Mapping[str, str]) -> None:
        if not manager.native_broker():
            raise RegistryError(
                f"no native broker in {settings.run_dir}: vehicle mode provisions accounts in "
                "the broker started by `make up`"
            )
        try:
            manager.registry.put(accounts, AccountKind.VEHICLE)
        except ValueError as exc:
            raise RegistryError(f"cannot provision vehicle accounts: {exc}") from exc
        manager.apply_to_broker()

    return provision
