"""Certificates for the clients that come from outside: a local CA and one server certificate.

At set-up the runner (and the test harness, and `make compose-up`) makes sure that
`<run_dir>/tls/` holds:

    ca.key      the local CA's private key, 0600: it never leaves this folder
    ca.crt      the local CA: what people install in Gajim, Conversations, mosquitto_pub
    server.key  the servers' private key, 0600; each server gets its own copy (install())
    server.crt  signed by ca.crt for the XMPP domain, its pubsub. and anon. hosts, localhost,
                127.0.0.1, ::1, this machine's name and ROADWATCH_TLS_EXTRA_NAMES

The server certificate is made again when it expires within RENEW_BEFORE_S, when the names it
must cover changed, or when it no longer matches the CA or its key. An operator's own
certificate (ROADWATCH_TLS_CERT_FILE and ROADWATCH_TLS_KEY_FILE, with ROADWATCH_TLS_CA_FILE
when its CA is not a public one) is used as given instead, and nothing is generated.

Everything is done with the `openssl` command; keys go to files, never through a command line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from roadwatch.runner.process import RunnerError
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

CA_DAYS = 3650
# At most 398 days: Apple's clients refuse server certificates valid for longer.
SERVER_DAYS = 397
RENEW_BEFORE_S = 30 * 86_400
OPENSSL_TIMEOUT_S = 30.0
# P-256: every TLS client in use takes it, and a key is made in milliseconds.
_KEY_ALGORITHM = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
# A DNS name, or a wildcard one, as a subjectAltName may hold it (RFC 5280, RFC 6125).
_DNS_NAME = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class Certificates:
    """The files the servers present, and the CA that clients trust (None: a public CA)."""

    cert: Path
    key: Path
    ca: Path | None
    generated: bool


def tls_dir(settings: Settings) -> Path:
    """Return the folder of the generated CA and server certificate."""
    return Path(settings.run_dir) / "tls"


def server_names(settings: Settings) -> list[str]:
    """Return every name and address the server certificate must cover, in a stable order."""
    domain = settings.xmpp_domain
    wanted = [domain, f"pubsub.{domain}", f"anon.{domain}", "localhost"]
    wanted += [socket.gethostname(), socket.getfqdn()]
    wanted += ["127.0.0.1", "::1"]
    wanted += extra_names(settings.tls_extra_names)
    names: list[str] = []
    for name in wanted:
        normal = _normal_name(name)
        if normal is None:
            log.warning("%r is not a DNS name or an IP address: left out of the certificate", name)
        elif normal not in names:
            names.append(normal)
    return names


def extra_names(text: str) -> list[str]:
    """Split ROADWATCH_TLS_EXTRA_NAMES (commas or spaces) into names."""
    return [name for name in re.split(r"[,\s]+", text) if name]


def _normal_name(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    # An all-numeric last label is a mistyped address, not a name (RFC 3696 §2).
    if _DNS_NAME.match(name) and len(name) <= 253 and not name.rsplit(".", 1)[-1].isdigit():
        return name.lower()
    return None


def ensure_certificates(settings: Settings, folder: Path | None = None) -> Certificates:
    """Return the certificates to serve: the operator's own, else generated ones kept current."""
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        return _operator_certificates(settings)
    folder = folder or tls_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # ca.crt is for people to copy; the keys are 0600
    ca_key, ca_cert = folder / "ca.key", folder / "ca.crt"
    key, cert = folder / "server.key", folder / "server.crt"
    if not (ca_key.exists() and ca_cert.exists()) or _expires_soon(ca_cert):
        _make_ca(folder, settings)
        log.warning(
            "made a new local CA, %s: clients must trust it (docs/accounts-and-tls.md)",
            ca_cert,
        )
    names = server_names(settings)
    reason = _renewal_reason(cert, key, ca_cert, names)
    if reason is not None:
        _make_server_certificate(folder, settings.xmpp_domain, names)
        log.info("made the server certificate %s (%s) for %s", cert, reason, ", ".join(names))
    return Certificates(cert=cert, key=key, ca=ca_cert, generated=True)


def _operator_certificates(settings: Settings) -> Certificates:
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file
    for what, path in (("certificate", cert), ("key", key), ("CA", ca)):
        if path is not None and not path.is_file():
            raise RunnerError(f"the TLS {what} file {path} does not exist")
    if _public_key(cert) != _public_key(key, private=True):
        raise RunnerError(f"the TLS key {key} does not belong to the certificate {cert}")
    if _expires_soon(cert):
        # Someone else issues it: say so loudly, but serve it while it is still valid.
        log.warning("the TLS certificate %s expires within 30 days: renew it", cert)
    return Certificates(cert=cert, key=key, ca=ca, generated=False)


def install(certs: Certificates, target: Path, prefix: str = "server") -> tuple[Path, Path]:
    """Copy the certificate and key into a server's own folder (the key 0600); return both.

    Each server reads its own copy, owned by its own account (the caller gives the folder to
    it), so neither can read the other's files nor the CA's key. Files are replaced whole, so a
    running server never reads half of one.
    """
    target.mkdir(parents=True, exist_ok=True)
    cert, key = target / f"{prefix}.crt", target / f"{prefix}.key"
    _copy_if_changed(certs.cert, cert, 0o644)
    _copy_if_changed(certs.key, key, 0o600)
    return cert, key


def _copy_if_changed(source: Path, target: Path, mode: int) -> None:
    data = source.read_bytes()
    if target.exists() and target.read_bytes() == data:
        target.chmod(mode)
        return
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def give_to(paths: Iterable[Path], uid: int, gid: int) -> None:
    """Hand files to a server's account (when we may: running as root)."""
    if os.geteuid() != 0:
        return
    for path in paths:
        os.chown(path, uid, gid)


# -- openssl --------------------------------------------------------------------------------


def _openssl(*argv: str, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RunnerError("no `openssl` command: apt-get install openssl")
    result = subprocess.run(
        [openssl, *argv], capture_output=True, text=True, check=False, timeout=OPENSSL_TIMEOUT_S
    )
    if check and result.returncode != 0:
        raise RunnerError(f"openssl {what} failed: {result.stderr.strip() or result.stdout}")
    return result


def _make_ca(folder: Path, settings: Settings) -> None:
    subject = f"RoadWatch local CA ({socket.gethostname()})"
    config = (
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = ca_ext\n"
        f"[dn]\nO = RoadWatch\nCN = {_config_text(subject)}\n"
        "[ca_ext]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    with _workdir(folder) as work:
        (work / "ca.cnf").write_text(config)
        _openssl("genpkey", *_KEY_ALGORITHM, "-out", str(work / "ca.key"), what="genpkey (CA)")
        _openssl(
            "req", "-x509", "-new", "-config", str(work / "ca.cnf"), "-key", str(work / "ca.key"),
            "-sha256", "-days", str(CA_DAYS), "-set_serial", _serial(),
            "-out", str(work / "ca.crt"),
            what="req (CA)",
        )  # fmt: skip
        _publish(work, folder, {"ca.key": 0o600, "ca.crt": 0o644})
    # A new CA: the old server certificate is signed by a CA nobody trusts any more.
    (folder / "server.crt").unlink(missing_ok=True)


def _make_server_certificate(folder: Path, domain: str, names: Sequence[str]) -> None:
    alt_names = ", ".join(f"IP:{name}" if _is_ip(name) else f"DNS:{name}" for name in names)
    config = (
        "[req]\nprompt = no\ndistinguished_name = dn\n"
        f"[dn]\nO = RoadWatch\nCN = {_config_text(domain)}\n"
        "[server_ext]\nbasicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid, issuer\n"
        f"subjectAltName = {alt_names}\n"
    )
    with _workdir(folder) as work:
        (work / "server.cnf").write_text(config)
        key = folder / "server.key"
        # The key is kept across renewals: a client that pinned it keeps working.
        if not key.exists():
            _openssl("genpkey", *_KEY_ALGORITHM, "-out", str(work / "server.key"), what="genpkey")
            key = work / "server.key"
        _openssl(
            "req", "-new", "-config", str(work / "server.cnf"), "-key", str(key),
            "-out", str(work / "server.csr"),
            what="req (server)",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(work / "server.csr"),
            "-CA", str(folder / "ca.crt"), "-CAkey", str(folder / "ca.key"),
            "-set_serial", _serial(), "-days", str(SERVER_DAYS), "-sha256",
            "-extfile", str(work / "server.cnf"), "-extensions", "server_ext",
            "-out", str(work / "server.crt"),
            what="x509 (sign the server certificate)",
        )  # fmt: skip
        published = {"server.crt": 0o644}
        if key != folder / "server.key":
            published["server.key"] = 0o600
        _publish(work, folder, published)


class _workdir:
    """A private (0700) folder beside the results, removed afterwards: keys are born there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(dir=self.folder, prefix=".new-"))
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _publish(work: Path, folder: Path, files: dict[str, int]) -> None:
    """Move finished files into place, each with its mode set before it appears."""
    for name, mode in files.items():
        (work / name).chmod(mode)
        (work / name).replace(folder / name)


def _serial() -> str:
    # Random serials (RFC 5280 allows 20 octets): no serial file to keep.
    return "0x" + secrets.token_hex(16)


def _config_text(text: str) -> str:
    # Only what an openssl config value can hold unquoted: the names are ours or validated.
    return re.sub(r"[^A-Za-z0-9 .()*-]", "", text)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _expires_soon(cert: Path) -> bool:
    result = _openssl(
        "x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE_S),
        what="x509 -checkend", check=False,
    )  # fmt: skip
    return result.returncode != 0


def certificate_names(cert: Path) -> list[str]:
    """Return the subjectAltNames of a certificate (IP addresses in their short form)."""
    result = _openssl(
        "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName", what="x509 -ext"
    )
    names = []
    for entry in re.split(r",\s*", " ".join(result.stdout.splitlines()[1:]).strip()):
        kind, _, value = entry.strip().partition(":")
        if kind == "DNS":
            names.append(value.lower())
        elif kind == "IP Address":
            names.append(str(ipaddress.ip_address(value)))
    return names


def _public_key(path: Path, private: bool = False) -> str:
    if private:
        result = _openssl("pkey", "-in", str(path), "-pubout", what="pkey -pubout")
    else:
        result = _openssl("x509", "-in", str(path), "-noout", "-pubkey", what="x509 -pubkey")
    return result.stdout


def _renewal_reason(cert: Path, key: Path, ca: Path, names: Sequence[str]) -> str | None:
    """Say why the server certificate must be made (again), or None when it is current."""
    if not cert.exists() or not key.exists():
        return "none yet"
    if _expires_soon(cert):
        return "near expiry"
    if sorted(certificate_names(cert)) != sorted(names):
        return "names changed"
    verified = _openssl(
        "verify", "-CAfile", str(ca), "-purpose", "sslserver", str(cert),
        what="verify", check=False,
    )  # fmt: skip
    if verified.returncode != 0:
        return "not signed by the current CA"
    if _public_key(cert) != _public_key(key, private=True):
        return "does not match its key"
    return None


def certificate_tag(settings: Settings) -> dict[str, str]:
    """Return a digest of the server certificate, for the environment of a server using it.

    A renewed certificate changes it, so `make up` restarts exactly the servers concerned
    (supervisord.conf holds a digest of each program's environment); `up` makes sure of the
    certificates before it compares.
    """
    cert = settings.tls_cert_file or tls_dir(settings) / "server.crt"
    if not cert.exists():
        return {}
    return {"ROADWATCH_TLS_CERT_DIGEST": hashlib.sha256(cert.read_bytes()).hexdigest()[:16]}


def probe_host(bind: str) -> str:
    """Return where this machine reaches a listener bound to `bind`."""
    return "127.0.0.1" if bind in ("0.0.0.0", "*", "::", "") else bind


# The servers' accounts in their images (deploy/docker/mosquitto.Dockerfile, prosody.Dockerfile):
# fixed ids, so that files made on the host belong to them inside the containers.
CONTAINER_ACCOUNTS = {"mosquitto": 901, "prosody": 902}
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def prepare_for_containers(settings: Settings, folder: Path) -> Path:
    """Lay out the certificates for compose.yaml under `folder`/containers; return that.

    containers/mosquitto and containers/prosody hold each server's certificate and its own
    copy of the key, owned by the server's account in its image (mounted read-only);
    containers/ca/ca.crt is what the Python services trust. The CA's key stays in `folder`.
    """
    certs = ensure_certificates(settings, folder)
    out = folder / "containers"
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    for server, uid in CONTAINER_ACCOUNTS.items():
        target = out / server
        target.mkdir(exist_ok=True)
        target.chmod(0o700)
        give_to((target, *install(certs, target)), uid, uid)
    trusted = out / "ca"
    trusted.mkdir(exist_ok=True)
    trusted.chmod(0o755)
    # An operator's certificate from a public CA: the services trust what this machine trusts.
    _copy_if_changed(certs.ca or SYSTEM_CA_BUNDLE, trusted / "ca.crt", 0o644)
    return out
