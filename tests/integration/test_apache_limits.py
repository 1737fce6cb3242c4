"""Oversized requests through Apache to the API: a 4xx from whoever refuses them, never a 5xx.

Apache's limits (8,190 bytes of request line and of each header field, 100 fields) answer
first; what passes them reaches the API, which refuses bodies over MAX_BODY_BYTES itself.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from roadwatch.runner.apache import Apache
from roadwatch.runner.process import RunLayout
from roadwatch.services.api.dependencies import MAX_BODY_BYTES
from roadwatch.settings import Settings
from tests.integration.test_apache import api_running

pytestmark = pytest.mark.integration

# Apache's LimitRequestLine and LimitRequestFieldSize, at their defaults.
APACHE_LINE_LIMIT = 8190
OVERSIZED_BODY = 2 * MAX_BODY_BYTES


@pytest.fixture(scope="module")
def api_behind_apache(
    test_settings: Settings, layout: RunLayout, mariadb: object, apache: Apache
) -> Iterator[None]:
    with api_running(test_settings, layout):
        yield


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }


def exchange(
    settings: Settings, request: bytes, body: bytes = b"", *, half_close: bool = False
) -> Answer:
    """Send raw bytes to Apache and read its whole answer (the connection is not kept)."""
    with socket.create_connection(("127.0.0.1", settings.http_port), timeout=20) as sock:
        try:
            sock.sendall(request + body)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read: the answer is still there to read
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return Answer(answer)


def get(settings: Settings, target: str, *headers: str) -> Answer:
    lines = [f"GET {target} HTTP/1.1", "Host: localhost", "Connection: close", *headers]
    return exchange(settings, ("\r\n".join(lines) + "\r\n\r\n").encode())


def post_zone(settings: Settings, size: int, *, token: bool, chunked: bool = False) -> Answer:
    body = b"x" * size
    headers = ["Host: localhost", "Connection: close", "Content-Type: application/json"]
    if token:
        headers.append(f"Authorization: Bearer {settings.api_token.get_secret_value()}")
    if chunked:
        headers.append("Transfer-Encoding: chunked")
        body = f"{size:x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    else:
        headers.append(f"Content-Length: {size}")
    head = "\r\n".join(["POST /api/zones HTTP/1.1", *headers]) + "\r\n\r\n"
    return exchange(settings, head.encode(), body)


def api_error(answer: Answer) -> str:
    """The code of the API's own JSON error."""
    assert answer.headers["content-type"].startswith("application/json"), answer.body[:200]
    return str(orjson.loads(answer.body)["error"])


def test_a_query_string_just_within_apaches_limit_reaches_the_api(
    test_settings: Settings, api_behind_apache: None
) -> None:
    target = "/api/events?limit=1"
    while len(f"GET {target}&type=accident HTTP/1.1") <= APACHE_LINE_LIMIT:
        target += "&type=accident"
    answer = get(test_settings, target)
    assert answer.status == 200, answer.body[:300]
    assert b'"items"' in answer.body


@pytest.mark.parametrize(
    "target",
    ["/api/events?station=" + "a" * APACHE_LINE_LIMIT, "/api/zones/" + "a" * APACHE_LINE_LIMIT],
)
def test_an_oversized_uri_is_414(
    test_settings: Settings, api_behind_apache: None, target: str
) -> None:
    assert get(test_settings, target).status == 414


@pytest.mark.parametrize(
    "headers",
    [
        ["X-Big: " + "a" * APACHE_LINE_LIMIT],  # one field over its limit
        [f"X-Field-{n}: 1" for n in range(101)],  # more fields than allowed
    ],
    ids=["long-field", "many-fields"],
)
def test_oversized_headers_are_400(
    test_settings: Settings, api_behind_apache: None, headers: list[str]
) -> None:
    assert get(test_settings, "/api/health", *headers).status == 400


def test_a_head_within_apaches_limits_but_huge_is_answered_or_400(
    test_settings: Settings, api_behind_apache: None
) -> None:
    # 400 KB of fields, each within Apache's limits: the API's HTTP parser refuses a head over
    # 16 KB only when it arrives in pieces, so either answer is right, but never a 5xx.
    headers = [f"X-Field-{n}: " + "a" * 8000 for n in range(50)]
    assert get(test_settings, "/api/health", *headers).status in (200, 400)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_the_apis_413_json(
    test_settings: Settings, api_behind_apache: None, chunked: bool
) -> None:
    answer = post_zone(test_settings, OVERSIZED_BODY, token=True, chunked=chunked)
    assert answer.status == 413
    assert api_error(answer) == "payload_too_large"
    # Without the token the body is never read: the answer is the 401.
    answer = post_zone(test_settings, OVERSIZED_BODY, token=False, chunked=chunked)
    assert answer.status == 401
    assert api_error(answer) == "unauthorized"


def test_a_body_cut_short_is_400(test_settings: Settings, api_behind_apache: None) -> None:
    token = test_settings.api_token.get_secret_value()
    head = (
        "POST /api/zones HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    answer = exchange(test_settings, head.encode(), b'{"type":', half_close=True)
    assert 400 <= answer.status < 500
