"""Event statistics of docs/contract/rest-api.md §9 (summary, time series, hotspots), fast over a
million events.

Whole hours are read from `event_counts_hourly` and whole days of cells from
`event_cells_daily`, both kept equal to the events table by triggers (migration 0004); only the
partial hour or day at each end of a range is counted from `events` itself, over a covering
index. Counts are therefore exact for any range, at the cost of a few hundred summary rows.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pymysql.cursors import Cursor

from roadwatch.adapters.mysql.connection import SourceStore
from roadwatch.adapters.mysql.store import (
    DATETIME_MAX_MS,
    DATETIME_MIN_MS,
    datetime_to_ms,
    ms_to_datetime,
)
from roadwatch.domain.events import EventType

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_EPOCH_DAY = date(1970, 1, 1)

# The start of a row's bucket, as the triggers compute it.
_HOUR_OF_START = "DATE_FORMAT(started_at, '%%Y-%%m-%%d %%H:00:00')"
# The hours and days from the epoch to a summary row's hour, as integers. Exact also before
# 1970: hour_start is a whole hour (TIMESTAMPDIFF truncates a fraction towards zero), and
# DATEDIFF compares the dates alone.
_HOURS_SINCE_EPOCH = "TIMESTAMPDIFF(HOUR, '1970-01-01', hour_start)"
_DAYS_SINCE_EPOCH = "DATEDIFF(hour_start, '1970-01-01')"


@dataclass(frozen=True)
class TimeRange:
    """A half-open range [since_ms, until_ms) of start times; None is unbounded."""

    since_ms: int | None = None
    until_ms: int | None = None

    def clamped(self) -> TimeRange:
        """The same range within what DATETIME holds (years 1000 to 9999)."""
        return TimeRange(
            None if self.since_ms is None else _clamp(self.since_ms),
            None if self.until_ms is None else _clamp(self.until_ms),
        )

    @property
    def empty(self) -> bool:
        return (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms >= self.until_ms
        )


@dataclass(frozen=True)
class RangeSplit:
    """A range as whole units (read from a summary table) and partial edges (counted raw)."""

    whole: TimeRange | None
    edges: tuple[TimeRange, ...]


def _clamp(ms: int) -> int:
    return min(max(ms, DATETIME_MIN_MS), DATETIME_MAX_MS)


def floor_to(ms: int, unit_ms: int) -> int:
    """The start of the UTC unit (hour, day) holding `ms`."""
    return ms - ms % unit_ms


def ceil_to(ms: int, unit_ms: int) -> int:
    """The first UTC unit boundary at or after `ms`."""
    return -floor_to(-ms, unit_ms)


def split_range(span: TimeRange, unit_ms: int) -> RangeSplit:
    """Split `span` into the whole units it covers and the partial pieces at its ends."""
    if span.empty:
        return RangeSplit(None, ())
    first = None if span.since_ms is None else ceil_to(span.since_ms, unit_ms)
    last = None if span.until_ms is None else floor_to(span.until_ms, unit_ms)
    if first is not None and (first > DATETIME_MAX_MS or (last is not None and first >= last)):
        # No whole unit; in the last hour of year 9999 the next one is past what DATETIME holds.
        return RangeSplit(None, (span,))
    edges = []
    if span.since_ms is not None and first is not None and span.since_ms < first:
        edges.append(TimeRange(span.since_ms, first))
    if span.until_ms is not None and last is not None and last < span.until_ms:
        edges.append(TimeRange(last, span.until_ms))
    return RangeSplit(TimeRange(first, last), tuple(edges))


def bucket_starts(span: TimeRange, unit_ms: int) -> range:
    """The start of every UTC bucket that overlaps the bounded range `span`."""
    if span.since_ms is None or span.until_ms is None:
        raise ValueError("buckets need a bounded range")
    if span.empty:
        return range(0)
    return range(floor_to(span.since_ms, unit_ms), span.until_ms, unit_ms)


def _bounds(
    column: str, span: TimeRange, convert: Any = ms_to_datetime
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if span.since_ms is not None:
        where.append(f"{column} >= %s")
        params.append(convert(span.since_ms))
    if span.until_ms is not None:
        where.append(f"{column} < %s")
        params.append(convert(span.until_ms))
    return where, params


def _day_of(ms: int) -> date:
    return ms_to_datetime(ms).date()


def _type_filter(types: Collection[EventType] | None) -> tuple[list[str], list[str]]:
    if not types:
        return [], []
    kinds = sorted({EventType(kind).value for kind in types})
    return [f"type IN ({', '.join(['%s'] * len(kinds))})"], kinds


def _where(conditions: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def _date_to_ms(day: date) -> int:
    return (day - _EPOCH_DAY).days * DAY_MS


class StatsStore(SourceStore):
    """Aggregate counts of stored events; every method is one read-only unit of work."""

    _log = log

    def summary(self, span: TimeRange) -> dict[tuple[str, str], int]:
        """Count the events started in `span` per (type, status); absent pairs are zero."""
        split = split_range(span.clamped(), HOUR_MS)

        def work(cur: Cursor) -> dict[tuple[str, str], int]:
            counts: dict[tuple[str, str], int] = {}
            if split.whole is not None:
                where, params = _bounds("hour_start", split.whole)
                cur.execute(
                    "SELECT type, status, SUM(events) FROM event_counts_hourly"
                    f"{_where(where)} GROUP BY type, status",
                    params,
                )
                _add(counts, cur.fetchall())
            for edge in split.edges:
                where, params = _bounds("started_at", edge)
                cur.execute(
                    f"SELECT type, status, COUNT(*) FROM events{_where(where)} "
                    "GROUP BY type, status",
                    params,
                )
                _add(counts, cur.fetchall())
            return {key: value for key, value in counts.items() if value}

        return self._run(work, "stats summary", transaction=False)

    def timeseries(
        self, span: TimeRange, bucket_ms: int, types: Collection[EventType] | None = None
    ) -> dict[tuple[int, str], int]:
        """Count the events started in `span` per (bucket start, type); hour or day buckets."""
        if bucket_ms not in (HOUR_MS, DAY_MS):
            raise ValueError("buckets are hours or days")
        split = split_range(span.clamped(), HOUR_MS)
        type_where, type_params = _type_filter(types)
        kinds = type_params or [kind.value for kind in EventType]
        if bucket_ms == HOUR_MS:
            # Grouped by the key's own column, in key order: no temporary table.
            summary_bucket, summary_group = _HOURS_SINCE_EPOCH, "hour_start"
            raw_bucket = _HOUR_OF_START
        else:
            summary_bucket, summary_group = _DAYS_SINCE_EPOCH, "1"
            raw_bucket = "DATE(started_at)"
        # One row per bucket with a column per type, the bucket as a number: a month of hours
        # is then 744 rows of integers instead of one row per type with a date and a decimal,
        # which the driver decodes several times slower.
        per_type = ", ".join(["CAST(SUM(IF(type = %s, events, 0)) AS SIGNED)"] * len(kinds))

        def work(cur: Cursor) -> dict[tuple[int, str], int]:
            counts: dict[tuple[int, str], int] = {}
            if split.whole is not None:
                where, params = _bounds("hour_start", split.whole)
                cur.execute(
                    f"SELECT {summary_bucket}, {per_type} FROM event_counts_hourly"
                    f"{_where(where + type_where)} GROUP BY {summary_group}",
                    kinds + params + type_params,
                )
                for bucket, *values in cur.fetchall():
                    start = int(bucket) * bucket_ms
                    for kind, value in zip(kinds, values, strict=True):
                        counts[start, kind] = counts.get((start, kind), 0) + int(value)
            for edge in split.edges:
                where, params = _bounds("started_at", edge)
                cur.execute(
                    f"SELECT {raw_bucket}, type, COUNT(*) FROM events"
                    f"{_where(where + type_where)} GROUP BY 1, 2",
                    params + type_params,
                )
                _add_buckets(counts, cur.fetchall())
            return {key: value for key, value in counts.items() if value}

        return self._run(work, "stats timeseries", transaction=False)

    def hotspots(
        self, span: TimeRange, types: Collection[EventType] | None = None, limit: int = 20
    ) -> list[tuple[int, int]]:
        """Return the grid cells with the most events started in `span`: (cell, count)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        split = split_range(span.clamped(), DAY_MS)
        type_where, type_params = _type_filter(types)

        def work(cur: Cursor) -> dict[int, int]:
            counts: dict[int, int] = {}
            if split.whole is not None:
                where, params = _bounds("day", split.whole, _day_of)
                cur.execute(
                    "SELECT grid_cell, SUM(events) FROM event_cells_daily"
                    f"{_where(type_where + where)} GROUP BY grid_cell",
                    type_params + params,
                )
                _add_cells(counts, cur.fetchall())
            for edge in split.edges:
                where, params = _bounds("started_at", edge)
                cur.execute(
                    f"SELECT grid_cell, COUNT(*) FROM events{_where(where + type_where)} "
                    "GROUP BY grid_cell",
                    params + type_params,
                )
                _add_cells(counts, cur.fetchall())
            return counts

        counts = self._run(work, "stats hotspots", transaction=False)
        ranked = sorted(
            ((cell, count) for cell, count in counts.items() if count > 0),
            key=lambda item: (-item[1], item[0]),
        )
        return ranked[:limit]


def _add(counts: dict[tuple[str, str], int], rows: Sequence[Sequence[Any]]) -> None:
    for kind, status, count in rows:
        key = (str(kind), str(status))
        counts[key] = counts.get(key, 0) + int(count)


def _bucket_ms(value: Any) -> int:
    if isinstance(value, datetime):
        return datetime_to_ms(value)
    if isinstance(value, date):
        return _date_to_ms(value)
    # DATE_FORMAT() yields text.
    return datetime_to_ms(datetime.fromisoformat(str(value)))


def _add_buckets(counts: dict[tuple[int, str], int], rows: Sequence[Sequence[Any]]) -> None:
    for bucket, kind, count in rows:
        key = (_bucket_ms(bucket), str(kind))
        counts[key] = counts.get(key, 0) + int(count)


def _add_cells(counts: dict[int, int], rows: Sequence[Sequence[Any]]) -> None:
    for cell, count in rows:
        counts[int(cell)] = counts.get(int(cell), 0) + int(count)
