"""The account registry: who may publish what, and how far each account is trusted
(docs/contract/mqtt.md §8, §9).

One folder holds it, shared by the `roadwatch accounts` command (which writes it), the broker
(which reads the password hashes and ACL rendered from it) and the gateway (which reads each
account's trust):

- `accounts.json`: every account's name, kind and trust, no secret;
- `mqtt.passwd`: Mosquitto password hashes of the MQTT accounts, readable by its owner only;
- `mqtt.acl`: the ACL sections of the MQTT accounts, each limited to its own topics.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import orjson

from roadwatch.domain.accounts import Account, AccountKind, Trust, acl_section

log = logging.getLogger(__name__)

REGISTRY_FILE: Final = "accounts.json"
PASSWD_FILE: Final = "mqtt.passwd"
ACL_FILE: Final = "mqtt.acl"
_LOCK_FILE: Final = ".lock"
# Mosquitto 2.0's own password hash (mosquitto_passwd's default): PBKDF2-SHA512, 101 rounds,
# 12 bytes of salt. Computed here, the password never reaches another process.
_MOSQUITTO_HASH_ROUNDS: Final = 101
_MOSQUITTO_SALT_BYTES: Final = 12


class RegistryError(Exception):
    """An account operation that cannot be done; the message says why."""


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """Hash `password` the way Mosquitto's password file stores it."""
    salt = secrets.token_bytes(_MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQUITTO_HASH_ROUNDS)
    encoded_salt = base64.b64encode(salt).decode()
    return f"$7${_MOSQUITTO_HASH_ROUNDS}${encoded_salt}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    """A fresh password: 144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` by `data` at once, created with `mode` (never briefly more open)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def load_accounts(path: Path) -> dict[str, Account]:
    """Read a registry file; a missing file is an empty registry."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read the account registry {path}: {exc}") from exc
    accounts: dict[str, Account] = {}
    for name, entry in raw.get("accounts", {}).items():
        try:
            accounts[name] = Account.of(name, AccountKind(entry["kind"]), Trust(entry["trust"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"account {name!r} in {path} is not valid: {exc}") from exc
    return accounts


class AccountRegistry:
    """The registry folder, changed under an exclusive lock so concurrent commands take turns."""

    def __init__(self, folder: Path, its_prefix: str = "its") -> None:
        self.folder = folder
        self._its_prefix = its_prefix

    @property
    def registry_file(self) -> Path:
        return self.folder / REGISTRY_FILE

    @property
    def passwd_file(self) -> Path:
        return self.folder / PASSWD_FILE

    @property
    def acl_file(self) -> Path:
        return self.folder / ACL_FILE

    def accounts(self) -> dict[str, Account]:
        return load_accounts(self.registry_file)

    def ensure(self) -> None:
        """Create the folder and its empty files, so a broker can always read them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # the gateway and the broker read it; secrets are 0600
        with self._locked():
            if not self.registry_file.exists():
                self._save({}, {})

    def add(self, account: Account, reserved: frozenset[str] = frozenset()) -> str | None:
        """Provision a new account; return its MQTT password (None for a follower)."""
        if account.name in reserved:
            raise RegistryError(f"{account.name} is reserved for a RoadWatch service")
        with self._locked():
            accounts = self.accounts()
            if account.name in accounts:
                existing = accounts[account.name].kind
                raise RegistryError(f"an account {account.name} ({existing}) already exists")
            accounts[account.name] = account
            hashes = self._hashes()
            password = None
            if account.kind.is_mqtt:
                password = new_password()
                hashes[account.name] = mosquitto_password_hash(password)
            self._save(accounts, hashes)
        log.info("account %s added as %s", account.name, account.kind)
        return password

    def put(self, passwords: Mapping[str, str], kind: AccountKind) -> None:
        """Create or re-key many MQTT accounts of one kind with the given passwords, at once.

        A name that belongs to an account of another kind is refused, whole batch included.
        """
        with self._locked():
            accounts = self.accounts()
            hashes = self._hashes()
            for name, password in passwords.items():
                existing = accounts.get(name)
                if existing is not None and existing.kind is not kind:
                    raise RegistryError(f"{name} is already a {existing.kind} account")
                accounts[name] = existing or Account.of(name, kind)
                hashes[name] = mosquitto_password_hash(password)
            self._save(accounts, hashes)

    def rotate(self, name: str) -> tuple[Account, str | None]:
        """Give an MQTT account a new password; return it (None for a follower)."""
        with self._locked():
            accounts = self.accounts()
            account = self._existing(accounts, name)
            if not account.kind.is_mqtt:
                return account, None
            password = new_password()
            hashes = self._hashes()
            hashes[name] = mosquitto_password_hash(password)
            self._save(accounts, hashes)
        log.info("account %s has a new password", name)
        return account, password

    def remove(self, name: str) -> Account:
        with self._locked():
            accounts = self.accounts()
            account = self._existing(accounts, name)
            del accounts[name]
            hashes = self._hashes()
            hashes.pop(name, None)
            self._save(accounts, hashes)
        log.info("account %s removed", name)
        return account

    @staticmethod
    def _existing(accounts: Mapping[str, Account], name: str) -> Account:
        try:
            return accounts[name]
        except KeyError:
            raise RegistryError(f"no account {name}") from None

    def _hashes(self) -> dict[str, str]:
        try:
            text = self.passwd_file.read_text()
        except FileNotFoundError:
            return {}
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def _save(self, accounts: Mapping[str, Account], hashes: Mapping[str, str]) -> None:
        names = sorted(accounts)
        registry = {
            "accounts": {
                name: {"kind": accounts[name].kind.value, "trust": accounts[name].trust.value}
                for name in names
            }
        }
        passwd = "".join(f"{name}:{hashes[name]}\n" for name in names if name in hashes)
        acl = "".join(acl_section(accounts[name], self._its_prefix) for name in names)
        # The hashes first, the registry last: a gateway never trusts an account the broker
        # would not yet let in, and a reader never sees half a file.
        write_atomically(self.passwd_file, passwd.encode(), 0o600)
        write_atomically(self.acl_file, acl.encode(), 0o644)
        write_atomically(
            self.registry_file, orjson.dumps(registry, option=orjson.OPT_INDENT_2), 0o644
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class TrustRegistry:
    """The gateway's view of the registry: each station's trust, re-read when the file changes.

    The file is looked at no more than once per `check_interval_s`; a registry that cannot be
    read keeps the last one read (an account once provisioned keeps its standing).
    """

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self._path = path
        self._check_interval_s = check_interval_s
        self._next_check = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._trust: dict[str, Trust] = {}
        self.reloads = 0
        self.failures = 0

    def trust_of(self, station_id: str, now: float) -> Trust | None:
        """The trust of the account owning `station_id`; None when no account owns it."""
        if now >= self._next_check:
            self._next_check = now + self._check_interval_s
            self._refresh()
        return self._trust.get(station_id)

    def _refresh(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            self.failures += 1
            log.warning("account registry %s unreadable: %s", self._path, exc)
            return
        else:
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            accounts = load_accounts(self._path)
        except RegistryError as exc:
            self.failures += 1
            log.warning("%s; keeping the accounts read before", exc)
            return
        self._stamp = stamp
        self._trust = {
            name: account.trust
            for name, account in accounts.items()
            if account.kind.publishes_as_vehicle
        }
        self.reloads += 1
        log.info("account registry read: %d vehicle accounts", len(self._trust))
