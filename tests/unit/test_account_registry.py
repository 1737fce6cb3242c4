"""The account registry's files, and the gateway's view of them (no server)."""

from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path

import pytest

from roadwatch.adapters.accounts import (
    AccountRegistry,
    RegistryError,
    TrustRegistry,
    mosquitto_password_hash,
)
from roadwatch.domain.accounts import Account, AccountKind, Trust


def test_the_hash_is_mosquittos_pbkdf2_sha512_format() -> None:
    salt = bytes(range(12))
    encoded = mosquitto_password_hash("s3cret", salt)
    kind, rounds, salt_b64, digest_b64 = encoded.split("$")[1:]
    assert (kind, rounds) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert base64.b64decode(digest_b64) == expected
    assert mosquitto_password_hash("s3cret") != mosquitto_password_hash("s3cret")  # salted


def test_files_hold_hashes_only_and_the_secrets_are_private(tmp_path: Path) -> None:
    registry = AccountRegistry(tmp_path / "accounts")
    password = registry.add(Account.of("car-1", AccountKind.VEHICLE))
    assert password is not None
    for path in (registry.registry_file, registry.passwd_file, registry.acl_file):
        assert password not in path.read_text()
    assert registry.passwd_file.stat().st_mode & 0o777 == 0o600
    assert registry.acl_file.read_text() == (
        "user car-1\ntopic write vehicles/car-1/cam\ntopic write vehicles/car-1/denm\n"
    )
    assert registry.accounts() == {"car-1": Account("car-1", AccountKind.VEHICLE)}


def test_a_follower_has_no_mqtt_password_nor_acl(tmp_path: Path) -> None:
    registry = AccountRegistry(tmp_path)
    assert registry.add(Account.of("desk", AccountKind.FOLLOWER)) is None
    assert registry.passwd_file.read_text() == ""
    assert registry.acl_file.read_text() == ""


def test_put_refuses_a_name_of_another_kind_and_changes_nothing(tmp_path: Path) -> None:
    registry = AccountRegistry(tmp_path)
    registry.add(Account.of("amb-1", AccountKind.EMERGENCY))
    before = registry.passwd_file.read_text()
    with pytest.raises(RegistryError, match="already a emergency account"):
        registry.put({"car-9": "pw", "amb-1": "pw"}, AccountKind.VEHICLE)
    assert registry.passwd_file.read_text() == before
    assert set(registry.accounts()) == {"amb-1"}


def test_concurrent_commands_lose_no_account(tmp_path: Path) -> None:
    registry = AccountRegistry(tmp_path)

    def add(n: int) -> None:
        for k in range(10):
            AccountRegistry(tmp_path).add(Account.of(f"car-{n}-{k}", AccountKind.VEHICLE))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry.accounts()) == 40
    assert len(registry.passwd_file.read_text().splitlines()) == 40


def test_the_gateway_sees_a_change_within_its_check_interval_and_keeps_a_broken_file_out(
    tmp_path: Path,
) -> None:
    registry = AccountRegistry(tmp_path)
    trust = TrustRegistry(registry.registry_file, check_interval_s=1.0)
    assert trust.trust_of("rsu-1", now=0.0) is None
    registry.add(Account.of("rsu-1", AccountKind.OPERATOR))
    assert trust.trust_of("rsu-1", now=0.5) is None  # not looked at again yet
    assert trust.trust_of("rsu-1", now=1.0) is Trust.OPERATOR
    good = registry.registry_file.read_bytes()
    registry.registry_file.write_text("{not json")
    assert trust.trust_of("rsu-1", now=2.0) is Trust.OPERATOR
    assert trust.failures == 1
    registry.registry_file.write_bytes(good)
    registry.remove("rsu-1")
    assert trust.trust_of("rsu-1", now=3.0) is None
    # Phones and followers publish no vehicle topic: they own no vehicle station.
    registry.add(Account.of("ann", AccountKind.PHONE))
    assert trust.trust_of("ann", now=4.0) is None
