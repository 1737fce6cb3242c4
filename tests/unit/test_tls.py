"""The local CA and server certificate made at set-up (runner/tls.py), with the openssl command."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from roadwatch.runner import tls
from roadwatch.runner.process import RunnerError
from roadwatch.settings import Settings


def settings_in(root: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, environment="test", run_dir=root, **values)  # type: ignore[call-arg]


def openssl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, check=False)


def not_after(cert: Path) -> str:
    return openssl("x509", "-in", str(cert), "-noout", "-enddate").stdout


def test_set_up_makes_a_ca_and_a_server_certificate_for_every_name_clients_use(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path, xmpp_domain="example.test", tls_extra_names="rw.example.org")
    certs = tls.ensure_certificates(settings)
    folder = tmp_path / "tls"
    assert certs.generated and certs.ca == folder / "ca.crt"
    names = tls.certificate_names(certs.cert)
    for name in ("example.test", "pubsub.example.test", "anon.example.test", "localhost"):
        assert name in names
    assert {"127.0.0.1", "::1", "rw.example.org", socket.gethostname().lower()} <= set(names)
    # A server certificate of this CA, for servers only.
    verified = openssl("verify", "-CAfile", str(certs.ca), "-purpose", "sslserver", str(certs.cert))
    assert verified.returncode == 0, verified.stderr
    text = openssl("x509", "-in", str(certs.cert), "-noout", "-text").stdout
    assert "CA:FALSE" in text and "TLS Web Server Authentication" in text
    # The keys are for their owner's eyes only; the CA certificate is for everybody to copy.
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "server.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert [path.name for path in folder.iterdir() if path.name.startswith(".")] == []


def test_a_current_certificate_is_kept_as_it_is(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    first = tls.ensure_certificates(settings)
    before = {path.name: path.read_bytes() for path in (tmp_path / "tls").iterdir()}
    second = tls.ensure_certificates(settings)
    assert second == first
    assert {path.name: path.read_bytes() for path in (tmp_path / "tls").iterdir()} == before


def test_changed_names_renew_the_certificate_with_the_same_ca_and_key(tmp_path: Path) -> None:
    certs = tls.ensure_certificates(settings_in(tmp_path))
    ca, key, cert = certs.ca, certs.key.read_bytes(), certs.cert.read_bytes()
    assert ca is not None
    ca_bytes = ca.read_bytes()
    renewed = tls.ensure_certificates(
        settings_in(tmp_path, tls_extra_names="10.1.2.3, new.example")
    )
    assert renewed.cert.read_bytes() != cert
    assert {"10.1.2.3", "new.example"} <= set(tls.certificate_names(renewed.cert))
    assert renewed.key.read_bytes() == key and ca.read_bytes() == ca_bytes


def test_a_certificate_near_its_end_is_renewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "SERVER_DAYS", 10)  # inside RENEW_BEFORE_S
    short = tls.ensure_certificates(settings_in(tmp_path))
    ending = not_after(short.cert)
    monkeypatch.setattr(tls, "SERVER_DAYS", 397)
    renewed = tls.ensure_certificates(settings_in(tmp_path))
    assert not_after(renewed.cert) != ending


def test_a_new_ca_brings_a_new_server_certificate(tmp_path: Path) -> None:
    certs = tls.ensure_certificates(settings_in(tmp_path))
    assert certs.ca is not None
    certs.ca.unlink()
    again = tls.ensure_certificates(settings_in(tmp_path))
    assert again.ca is not None
    verified = openssl("verify", "-CAfile", str(again.ca), str(again.cert))
    assert verified.returncode == 0, verified.stderr


def test_names_that_are_neither_dns_names_nor_addresses_are_left_out(tmp_path: Path) -> None:
    extra = "ok.example, x;y,300.1.1.1 -bad.example,a..b"
    names = tls.server_names(settings_in(tmp_path, tls_extra_names=extra))
    assert "ok.example" in names
    assert not {"x;y", "300.1.1.1", "-bad.example", "a..b"} & set(names)


def test_the_operators_own_certificate_is_used_as_given(tmp_path: Path) -> None:
    theirs = tls.ensure_certificates(settings_in(tmp_path / "elsewhere"))
    settings = settings_in(
        tmp_path, tls_cert_file=theirs.cert, tls_key_file=theirs.key, tls_ca_file=theirs.ca
    )
    certs = tls.ensure_certificates(settings)
    assert (certs.cert, certs.key, certs.ca, certs.generated) == (
        theirs.cert,
        theirs.key,
        theirs.ca,
        False,
    )
    assert not (tmp_path / "tls").exists()
    assert settings.tls_trusted_ca == theirs.ca
    # From a public CA (no CA file given), our clients use the system's store.
    public = settings_in(tmp_path, tls_cert_file=theirs.cert, tls_key_file=theirs.key)
    assert public.tls_trusted_ca is None


def test_an_operators_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    one = tls.ensure_certificates(settings_in(tmp_path / "one"))
    other = tls.ensure_certificates(settings_in(tmp_path / "other"))
    with pytest.raises(RunnerError, match="does not belong"):
        tls.ensure_certificates(
            settings_in(tmp_path, tls_cert_file=one.cert, tls_key_file=other.key)
        )


def test_certificate_and_key_settings_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        settings_in(tmp_path, tls_cert_file=tmp_path / "server.crt")


def test_each_server_gets_its_own_copy_with_a_private_key(tmp_path: Path) -> None:
    certs = tls.ensure_certificates(settings_in(tmp_path))
    cert, key = tls.install(certs, tmp_path / "broker")
    assert cert.read_bytes() == certs.cert.read_bytes()
    assert key.read_bytes() == certs.key.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    assert tls.certificate_tag(settings_in(tmp_path))  # a renewal changes the servers' programs


def test_containers_get_a_copy_each_owned_by_their_servers_account(tmp_path: Path) -> None:
    out = tls.prepare_for_containers(settings_in(tmp_path), tmp_path / "tls")
    assert (out / "ca" / "ca.crt").read_bytes() == (tmp_path / "tls" / "ca.crt").read_bytes()
    for server, uid in tls.CONTAINER_ACCOUNTS.items():
        key = out / server / "server.key"
        assert key.stat().st_mode & 0o777 == 0o600
        if os.geteuid() == 0:
            assert key.stat().st_uid == uid and (out / server).stat().st_uid == uid
    # The CA's own key never goes to a container.
    assert not list(out.rglob("ca.key"))
