"""Apache in front of everything: static app, clean URLs, proxies and security headers."""

from __future__ import annotations

import base64
import contextlib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import pytest

from roadwatch.runner.apache import Apache
from roadwatch.runner.process import RunLayout
from roadwatch.runner.prosody import Prosody
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration


class Page:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        # HTTP header names are case-insensitive, and proxied answers keep the upstream's case.
        self.headers = {name.title(): value for name, value in headers.items()}
        self.body = body


def get(settings: Settings, path: str, data: bytes | None = None) -> Page:
    request = urllib.request.Request(f"http://127.0.0.1:{settings.http_port}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "text/xml; charset=utf-8")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return Page(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Page(error.code, dict(error.headers), error.read())


@contextlib.contextmanager
def api_running(settings: Settings, layout: RunLayout) -> Iterator[None]:
    """The `roadwatch api` service behind Apache, for the duration."""
    service = PythonService("api", settings, layout, service_probe(settings, "api"))
    service.start()
    try:
        yield
    finally:
        service.stop()


@pytest.fixture(scope="module")
def api(test_settings: Settings, layout: RunLayout, mariadb: object) -> Iterator[None]:
    with api_running(test_settings, layout):
        yield


def test_home_page_is_served_with_security_headers(test_settings: Settings, apache: Apache) -> None:
    page = get(test_settings, "/")
    assert page.status == 200
    assert b"RoadWatch" in page.body
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Server"] == "Apache"  # no version


def test_an_http_0_9_request_gets_no_page(test_settings: Settings, apache: Apache) -> None:
    """HTTP/0.9 has no headers: Apache must not serve a page without its security headers."""
    with socket.create_connection(("127.0.0.1", test_settings.http_port), timeout=5) as sock:
        sock.sendall(b"GET /\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


@pytest.mark.parametrize("path", ["/history", "/stats", "/zones", "/live/"])
def test_clean_urls_serve_the_app(test_settings: Settings, apache: Apache, path: str) -> None:
    page = get(test_settings, path)
    assert page.status == 200
    assert b"RoadWatch" in page.body


def test_browser_libraries_come_from_our_server(test_settings: Settings, apache: Apache) -> None:
    page = get(test_settings, "/vendor/strophe.umd.min.js")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/",
        "/vendor/swagger-ui/",
        "/vendor/leaflet/",
        "/node_modules/",
        "/node_modules/strophe.js/package.json",
        "/package.json",
    ],
)
def test_no_listing_and_no_build_files(test_settings: Settings, apache: Apache, path: str) -> None:
    page = get(test_settings, path)
    assert page.status in (403, 404)
    assert b"Index of" not in page.body


def test_api_is_proxied(test_settings: Settings, apache: Apache, api: None) -> None:
    page = get(test_settings, "/api/health")
    assert page.status == 200
    assert b'"database":"ok"' in page.body


def test_api_docs_load_swagger_ui_from_our_server(
    test_settings: Settings, apache: Apache, api: None
) -> None:
    page = get(test_settings, "/api/docs")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for path, media_type in (
        ("/vendor/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
        ("/vendor/swagger-ui/swagger-ui.css", "text/css"),
        ("/api/docs/init.js", "text/javascript"),
    ):
        assert path.encode() in page.body
        asset = get(test_settings, path)
        assert asset.status == 200, path
        assert asset.headers["Content-Type"].startswith(media_type), path


def open_bosh(settings: Settings, domain: str, rid: int) -> Page:
    """Open a BOSH session to `domain` through Apache; return the answer (stream features)."""
    body = (
        f"<body xmlns='http://jabber.org/protocol/httpbind' rid='{rid}' "
        f"to='{domain}' wait='5' hold='1' ver='1.6' "
        "xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>"
    ).encode()
    page = get(settings, "/http-bind", data=body)
    assert page.status == 200
    assert b"sid=" in page.body
    return page


def test_service_accounts_cannot_log_in_over_bosh(
    test_settings: Settings, apache: Apache, prosody: Prosody
) -> None:
    """Through Apache, as a browser would: the services' host offers and accepts no login."""
    page = open_bosh(test_settings, test_settings.xmpp_domain, rid=10)
    assert b"mechanism" not in page.body  # no SASL mechanism offered, PLAIN least of all
    sid = page.body.split(b"sid='")[1].split(b"'")[0].decode()
    password = test_settings.xmpp_gateway_password.get_secret_value()
    plain = base64.b64encode(f"\0gateway\0{password}".encode()).decode()
    attempt = (
        f"<body xmlns='http://jabber.org/protocol/httpbind' rid='11' sid='{sid}'>"
        f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
        "</body>"
    ).encode()
    answer = get(test_settings, "/http-bind", data=attempt)
    assert b"<success" not in answer.body
    assert b"not-authorized" in answer.body


def test_bosh_is_proxied_to_prosody(
    test_settings: Settings, apache: Apache, prosody: Prosody
) -> None:
    page = open_bosh(test_settings, test_settings.anonymous_domain, rid=1)
    assert b"ANONYMOUS" in page.body
