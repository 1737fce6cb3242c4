"""The API's Prometheus endpoint: on its own port, by route template, never behind Apache."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.process import RunLayout
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.settings import Settings
from tests.integration.api_server import serve

pytestmark = pytest.mark.integration

UNKNOWN_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"


def requests_by_labels(text: str) -> dict[tuple[str, str, str], float]:
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["roadwatch_api_requests"].type == "counter"
    assert families["roadwatch_api_request_seconds"].type == "histogram"
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["roadwatch_api_requests"].samples
        if s.name == "roadwatch_api_requests_total"
    }


def test_metrics_count_requests_by_route_template_and_status(
    test_settings: Settings, mariadb: MariaDB
) -> None:
    with serve(test_settings) as client:
        assert client.get("/api/health").status_code == 200
        for _ in range(2):
            assert client.get(f"/api/events/{UNKNOWN_ID}").status_code == 404
        assert client.get("/api/events", params={"limit": "0"}).status_code == 400
        assert client.get("/no/such/page").status_code == 404
        reply = client.get("/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        counts = requests_by_labels(reply.text)
        # Second scrape: the first one is counted under its own route.
        counts_after = requests_by_labels(client.get("/metrics").text)
        openapi = client.get("/api/openapi.json").json()
    assert counts[("GET", "/api/health", "200")] == 1
    assert counts[("GET", "/api/events/{event_id}", "404")] == 2
    assert counts[("GET", "/api/events", "400")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert counts_after[("GET", "/metrics", "200")] == 1
    assert not any(UNKNOWN_ID in route for _, route, _ in counts)  # templates, never raw paths
    assert "/metrics" not in openapi["paths"]


@contextlib.contextmanager
def api_process(settings: Settings, layout: RunLayout) -> Iterator[None]:
    """`roadwatch api` on the port Apache proxies /api/ to."""
    service = PythonService("api", settings, layout, service_probe(settings, "api"))
    service.start()
    try:
        yield
    finally:
        service.stop()


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_apache_never_serves_the_api_metrics(
    test_settings: Settings, layout: RunLayout, mariadb: MariaDB, apache: Apache
) -> None:
    public = f"http://127.0.0.1:{test_settings.http_port}"
    direct = f"http://{test_settings.api_host}:{test_settings.api_port}"
    with api_process(test_settings, layout):
        status, body = fetch(f"{direct}/metrics")
        assert status == 200 and b"roadwatch_api_requests_total" in body
        for path in ("/metrics", "/api/metrics", "/api/../metrics", "/api/%2e%2e/metrics"):
            status, body = fetch(public + path)
            assert status in {400, 404}, path
            assert b"roadwatch_api" not in body, path
