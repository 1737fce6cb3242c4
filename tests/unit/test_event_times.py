"""Event times as RFC 3339 text and back: exact to the millisecond, over every storable date."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.adapters.mysql.store import DATETIME_MAX_MS, DATETIME_MIN_MS
from roadwatch.domain.events import InvalidEvent, ms_to_rfc3339, rfc3339_to_ms


@given(st.integers(DATETIME_MIN_MS, DATETIME_MAX_MS))
def test_a_time_written_then_read_is_the_same_millisecond(ms: int) -> None:
    assert rfc3339_to_ms(ms_to_rfc3339(ms)) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("9999-12-31T23:59:59.999Z", DATETIME_MAX_MS),
        ("1000-01-01T00:00:00Z", DATETIME_MIN_MS),
        ("1970-01-01T00:00:00.0004Z", 0),
        ("1970-01-01T00:00:00.0005Z", 1),
        ("1970-01-01T02:00:00+02:00", 0),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_times_read_exactly_at_the_edges(text: str, ms: int) -> None:
    assert rfc3339_to_ms(text) == ms


def test_the_edges_are_written_as_they_are_read() -> None:
    assert ms_to_rfc3339(DATETIME_MAX_MS) == "9999-12-31T23:59:59.999Z"
    assert ms_to_rfc3339(-1) == "1969-12-31T23:59:59.999Z"


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(InvalidEvent):
        rfc3339_to_ms("2026-12-06T08:00:00")
