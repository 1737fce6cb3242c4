"""Range arithmetic of the statistics and the position grid: pure functions, any input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from roadwatch.adapters.mysql.stats import (
    DAY_MS,
    HOUR_MS,
    TimeRange,
    bucket_starts,
    split_range,
)
from roadwatch.adapters.mysql.store import (
    DATETIME_MAX_MS,
    DATETIME_MIN_MS,
    cells_covering,
    grid_cell,
    grid_cell_bounds,
)

times = st.integers(-(10**14), 10**14)
units = st.sampled_from([HOUR_MS, DAY_MS])
lats = st.floats(-90, 90)
lons = st.floats(-180, 180)


@given(
    since=st.none() | st.integers(DATETIME_MIN_MS, DATETIME_MAX_MS),
    until=st.none() | st.integers(DATETIME_MIN_MS, DATETIME_MAX_MS),
    unit=units,
)
def test_the_pieces_of_a_storable_range_are_storable(
    since: int | None, until: int | None, unit: int
) -> None:
    """Up to the last millisecond of year 9999: nothing to convert past what DATETIME holds."""
    split = split_range(TimeRange(since, until), unit)
    for piece in [split.whole, *split.edges]:
        if piece is not None:
            for bound in (piece.since_ms, piece.until_ms):
                assert bound is None or DATETIME_MIN_MS <= bound <= DATETIME_MAX_MS


def test_a_range_from_the_last_hour_of_year_9999_is_one_raw_edge() -> None:
    since = DATETIME_MAX_MS - 1_000  # 9999-12-31T23:59:58.999Z
    assert split_range(TimeRange(since, None), HOUR_MS).whole is None
    assert split_range(TimeRange(since, None), DAY_MS).edges == (TimeRange(since, None),)


@given(since=st.none() | times, until=st.none() | times, unit=units, probe=times)
def test_a_split_range_covers_the_range_exactly_once(
    since: int | None, until: int | None, unit: int, probe: int
) -> None:
    span = TimeRange(since, until)
    split = split_range(span, unit)
    pieces = ([split.whole] if split.whole is not None else []) + list(split.edges)

    def inside(piece: TimeRange, ms: int) -> bool:
        return (piece.since_ms is None or piece.since_ms <= ms) and (
            piece.until_ms is None or ms < piece.until_ms
        )

    assert sum(inside(piece, probe) for piece in pieces) == (1 if inside(span, probe) else 0)
    if split.whole is not None:
        for bound in (split.whole.since_ms, split.whole.until_ms):
            assert bound is None or bound % unit == 0
    for edge in split.edges:
        assert edge.since_ms is not None
        assert edge.until_ms is not None
        assert 0 < edge.until_ms - edge.since_ms < 2 * unit


@given(since=times, length=st.integers(0, 1000 * DAY_MS), unit=units)
def test_buckets_are_aligned_contiguous_and_cover_the_range(
    since: int, length: int, unit: int
) -> None:
    until = since + length
    starts = bucket_starts(TimeRange(since, until), unit)
    if length == 0:
        assert len(starts) == 0
        return
    assert starts[0] <= since < starts[0] + unit
    assert starts[-1] < until <= starts[-1] + unit
    assert starts.step == unit
    assert all(start % unit == 0 for start in (starts[0], starts[-1]))


@given(lat=lats, lon=lons)
def test_a_position_lies_in_the_bounds_of_its_grid_cell(lat: float, lon: float) -> None:
    min_lon, min_lat, max_lon, max_lat = grid_cell_bounds(grid_cell(lat, lon))
    assert min_lat - 1e-9 <= lat <= max_lat + 1e-9
    assert min_lon - 1e-9 <= lon <= max_lon + 1e-9


@given(
    corner=st.tuples(lons, lats),
    size=st.tuples(st.floats(0, 0.05), st.floats(0, 0.05)),
    at=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_the_cells_of_a_box_hold_every_position_in_it(
    corner: tuple[float, float], size: tuple[float, float], at: tuple[float, float]
) -> None:
    min_lon, min_lat = corner
    max_lon, max_lat = min(min_lon + size[0], 180.0), min(min_lat + size[1], 90.0)
    cells = cells_covering((min_lon, min_lat, max_lon, max_lat), 10_000)
    assert cells is not None
    lon = min(min_lon + (max_lon - min_lon) * at[0], max_lon)
    lat = min(min_lat + (max_lat - min_lat) * at[1], max_lat)
    assert grid_cell(lat, lon) in cells


def test_a_box_across_the_antimeridian_takes_cells_from_both_sides() -> None:
    cells = cells_covering((179.999, 10.0, -179.999, 10.001), 100)
    assert cells is not None
    assert grid_cell(10.0005, 179.9995) in cells
    assert grid_cell(10.0005, -179.9995) in cells
    assert grid_cell(10.0005, 0.0) not in cells


def test_a_large_box_is_not_cut_into_cells() -> None:
    assert cells_covering((3.9, 49.1, 4.2, 49.4), 64) is None
