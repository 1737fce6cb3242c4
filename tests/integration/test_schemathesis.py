"""Every operation of our OpenAPI document, fuzzed by schemathesis against the real API and
MariaDB: no 5xx for any input, and every answer as documented (status, media type, schema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance

from roadwatch.adapters.mysql.store import EventStore
from roadwatch.runner.mariadb import MariaDB
from roadwatch.services.api.app import create_app
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events, reset_zones
from tests.integration.test_api import seed_events

pytestmark = pytest.mark.integration

# Enough to reach every parameter and a few combinations, few enough to stay within seconds.
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def base_url(mariadb: MariaDB, test_settings: Settings) -> Iterator[str]:
    clear_events(test_settings)
    reset_zones(test_settings)
    with EventStore.connect(test_settings) as store:
        store.upsert(seed_events())
    with serve(test_settings) as client:
        yield str(client.base_url)
    # The fuzzed writes leave odd zones behind; the next tests start from none.
    reset_zones(test_settings)
    clear_events(test_settings)


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document the API serves; building it opens no connection."""
    return create_app(Settings(_env_file=None, environment="test")).openapi()  # type: ignore[call-arg]


# Loaded when the tests are collected, before any server runs (schemathesis's fixture-based
# loader fails under pytest 9); the last test checks that the running API serves this document.
schema = schemathesis.openapi.from_dict(openapi_document())
# Repeated query parameters too (`limit=1&limit=2000`): the coverage phase sends each twice.
schema.config.phases.coverage.generate_duplicate_query_parameters = True


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_as_documented_and_never_5xx(
    case: Case[Any], base_url: str, test_settings: Settings
) -> None:
    token = test_settings.api_token.get_secret_value()
    case.call_and_validate(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        # Input can match the document's schema and still mean nothing (a cursor this API
        # never issued, `since` after `until`, an open polygon ring): a 400 saying so is the
        # right answer there, not the 2xx this check would demand.
        excluded_checks=[positive_data_acceptance],
    )


def test_the_fuzzed_document_is_the_served_one_and_the_api_still_answers(base_url: str) -> None:
    assert httpx.get(f"{base_url}/api/openapi.json", timeout=10).json() == openapi_document()
    # The fuzzing left the API healthy: no exhausted pool, no stuck session.
    response = httpx.get(f"{base_url}/api/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
