"""Event times as RFC 3339 text and back: exact to the millisecond, over every storable date."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.adapters.mysql.store import DATETIME_MAX_MS, DATETIME_MIN_MS
from roadwatch.domain.events import InvalidEvent, ms_to_rfc3339, rfc3339_ceil_ms, rfc3339_to_ms


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


# --- Time bounds of a query: exact, as the first millisecond at or after the time -------------

YEAR_1_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z
LEAP_MIDNIGHT_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z


@given(st.integers(DATETIME_MIN_MS, DATETIME_MAX_MS))
def test_a_written_time_is_its_own_bound(ms: int) -> None:
    assert rfc3339_ceil_ms(ms_to_rfc3339(ms)) == ms


@given(st.integers(YEAR_1_MS * 1000, YEAR_10000_MS * 1000 - 1), st.integers(0, 20))
def test_a_bound_is_the_first_millisecond_at_or_after_the_time(micros: int, zeros: int) -> None:
    whole, fraction = divmod(micros, 1_000_000)
    text = ms_to_rfc3339(whole * 1000).replace(".000Z", f".{fraction:06d}{'0' * zeros}Z")
    assert rfc3339_ceil_ms(text) == -(-micros // 1000)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01t00:00:00.0000000000000001z", 1),
        ("1970-01-01 02:00:00.001+02:00", 1),
        ("1969-12-31T23:59:59.9991Z", 0),
        ("0001-01-01T00:00:00Z", YEAR_1_MS),
        ("0000-01-01T00:00:00Z", YEAR_1_MS - 366 * 86_400_000),  # year 0 is a leap year
        ("0001-01-01T00:00:00+14:00", YEAR_1_MS - 14 * 3_600_000),
        ("9999-12-31T23:59:59.999999999Z", YEAR_10000_MS),
        ("9999-12-31T23:59:59-23:59", YEAR_10000_MS + 86_339_000),
        ("2016-12-31T23:59:60Z", LEAP_MIDNIGHT_MS),
        ("2016-12-31T23:59:60.5Z", LEAP_MIDNIGHT_MS + 500),
        ("2017-01-01T05:29:60+05:30", LEAP_MIDNIGHT_MS),
        ("2024-02-29T00:00:00-00:00", 1_709_164_800_000),
    ],
)
def test_bounds_are_exact_at_the_edges(text: str, ms: int) -> None:
    assert rfc3339_ceil_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-06-01",
        "2024-06-01T08:00:00",
        "2024-06-01T08:00Z",
        "20240601T080000Z",
        "2024-W22-6T08:00:00Z",
        "2024-06-01T08:00:00,5Z",
        "2024-06-01T08:00:00.Z",
        "2024-06-01T08:00:00+0200",
        "2024-06-01T08:00:00+24:00",
        "2024-06-01T08:00:00-00:60",
        "2024-06-31T08:00:00Z",
        "2023-02-29T08:00:00Z",
        "2024-06-01T24:00:00Z",
        "2024-06-01T08:60:00Z",
        "2024-06-01T08:00:61Z",
        "2024-06-01T08:00:60Z",
        "2016-12-31T23:59:60+01:00",
        "10000-01-01T00:00:00Z",
        "\u0662\u0660\u0662\u0664-06-01T08:00:00Z",
        " 2024-06-01T08:00:00Z",
        "2024-06-01T08:00:00Z\n",
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(InvalidEvent):
        rfc3339_ceil_ms(text)
