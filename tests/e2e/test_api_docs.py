"""The interactive API documentation in a real browser, through Apache and its CSP
(docs/contract/rest-api.md §1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.conftest import RunningSystem

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.e2e

WAIT_MS = 15_000


def test_docs_page_lists_the_operations_from_local_files_under_the_csp(
    running_system: RunningSystem,
    browser: Browser,
    screenshot: Callable[[Page, str], Path],
) -> None:
    origin = f"http://127.0.0.1:{running_system.settings.http_port}"
    page = browser.new_page()
    problems: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "request",
        lambda request: None if request.url.startswith(origin) else foreign.append(request.url),
    )
    try:
        response = page.goto(f"{origin}/api/docs")
        assert response is not None
        assert response.status == 200
        # Served under the site's strict policy: no inline script, scripts from here only.
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]

        page.locator(".opblock").first.wait_for(timeout=WAIT_MS)
        summaries = page.locator(".opblock-summary-path").all_inner_texts()
        paths = {text.replace("\u200b", "").strip() for text in summaries}
        assert {
            "/api/events",
            "/api/events/{event_id}",
            "/api/stations/{station_id}/events",
            "/api/zones",
            "/api/zones/{zone_id}",
        } <= paths
        assert page.locator(".info .title").inner_text().startswith("RoadWatch API")
        # The bearer scheme of the writes is offered by the "Authorize" button.
        assert page.locator("button.authorize").is_visible()
        # Swagger UI's stylesheet applied (served by Apache from web/vendor).
        assert page.locator(".swagger-ui .opblock-get").first.evaluate(
            "el => getComputedStyle(el).borderColor"
        ) not in ("", "rgb(0, 0, 0)")

        # One operation opens with its parameters, the `format` choice among them.
        page.locator("#operations-events-list_events_api_events_get .opblock-summary").click()
        operation = page.locator("#operations-events-list_events_api_events_get")
        operation.locator("tr[data-param-name='format']").wait_for(timeout=WAIT_MS)
        # "Try it out" calls the API from the page, as the CSP's connect-src allows.
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        live = operation.locator(".live-responses-table tbody .response-col_status").first
        live.wait_for(timeout=WAIT_MS)
        assert live.inner_text().strip() == "200"
        assert '"next_cursor"' in operation.locator(".live-responses-table").inner_text()
        screenshot(page, "api-docs")
        assert foreign == []
        assert [text for text in problems if "Content Security Policy" in text] == []
        assert problems == []
    finally:
        page.close()
