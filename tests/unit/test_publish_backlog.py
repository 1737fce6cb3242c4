"""The collector's publish retry bookkeeping, and the archive guard's answer, without servers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from roadwatch.adapters.xmpp import Backoff
from roadwatch.adapters.xmpp.receiver import ARCHIVE_GUARD_NS, archive_health_from
from roadwatch.domain.events import Event, EventStatus, EventType, new_event_id
from roadwatch.services.collector import PublishAttempt, PublishBacklog

# No jitter: delays are exact, so the schedule can be checked to the second.
BACKOFF = Backoff(initial_s=1.0, factor=2.0, maximum_s=8.0, jitter=0.0)


def event(n: int = 0, version: int = 1) -> Event:
    started = 1_700_000_000_000 + n * 1_000
    return Event(
        id=new_event_id(started, f"{n:016x}"),
        type=EventType.ACCIDENT,
        status=EventStatus.ACTIVE,
        version=version,
        started_ms=started,
        updated_ms=started + version,
        ended_ms=None,
        lat=49.25,
        lon=4.03,
        cause_code=2,
        station_ids=("car-1", "car-2"),
        details={},
    )


def versions(attempts: list[PublishAttempt]) -> list[tuple[str, int]]:
    return [(attempt.event.id, attempt.event.version) for attempt in attempts]


def test_a_newer_version_replaces_the_waiting_one_and_an_older_never_does() -> None:
    backlog = PublishBacklog(BACKOFF)
    v1, v2, v3 = (event(version=v) for v in (1, 2, 3))
    backlog.add(v2, committed=0.0, now=0.0)
    backlog.add(v1, committed=0.1, now=0.1)
    assert versions(backlog.take_due(1.0, 10)) == [(v2.id, 2)]
    backlog.add(v3, committed=0.2, now=0.2)
    backlog.add(v1, committed=0.3, now=0.3)
    assert len(backlog) == 1  # one entry per event id, whatever the versions
    assert backlog.take_due(1.0, 10) == []  # v2 still in flight: never two at once
    assert backlog.succeeded(v2, now=1.1) is None  # v3 arrived meanwhile: it stays
    assert versions(backlog.take_due(1.1, 10)) == [(v3.id, 3)]
    assert backlog.succeeded(v3, now=1.2) == 0.2  # the commit time of the version published
    assert len(backlog) == 0


def test_a_failed_publish_is_retried_after_a_growing_delay_until_it_succeeds() -> None:
    backlog = PublishBacklog(BACKOFF)
    first = event()
    backlog.add(first, committed=0.0, now=0.0)
    now = 0.0
    delays = []
    for _ in range(5):
        [attempt] = backlog.take_due(now, 10)
        delays.append(backlog.failed(attempt.event, now))
        assert backlog.failing == 1
        assert backlog.take_due(now + delays[-1] - 0.01, 10) == []
        now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    [attempt] = backlog.take_due(now, 10)
    assert attempt.retry
    assert backlog.succeeded(attempt.event, now) == 0.0
    assert (len(backlog), backlog.failing) == (0, 0)


def test_a_newer_version_of_a_failing_event_waits_for_the_retry_and_is_the_one_sent() -> None:
    backlog = PublishBacklog(BACKOFF)
    v1, v2 = event(version=1), event(version=2)
    backlog.add(v1, committed=0.0, now=0.0)
    [attempt] = backlog.take_due(0.0, 10)
    assert backlog.failed(attempt.event, 0.0) == 1.0
    backlog.add(v2, committed=0.5, now=0.5)
    assert backlog.take_due(0.5, 10) == []
    assert versions(backlog.take_due(1.0, 10)) == [(v2.id, 2)]


def test_a_new_session_makes_every_waiting_publish_due_at_once() -> None:
    backlog = PublishBacklog(BACKOFF)
    events = [event(n) for n in range(3)]
    for item in events:
        backlog.add(item, committed=0.0, now=0.0)
    now = 0.0
    for _ in range(4):  # each round of failures pushes the next attempts further away
        now = backlog.next_due() or now
        for attempt in backlog.take_due(now, 10):
            backlog.failed(attempt.event, now)
    assert backlog.next_due() == now + 8.0
    assert backlog.take_due(now + 0.5, 10) == []
    backlog.retry_now(now + 0.5)
    assert {a.event.id for a in backlog.take_due(now + 0.5, 10)} == {e.id for e in events}


def test_due_publishes_come_out_in_commit_order_and_at_most_as_many_as_asked() -> None:
    backlog = PublishBacklog(BACKOFF)
    events = [event(n) for n in range(5)]
    for n, item in enumerate(events):
        backlog.add(item, committed=float(n), now=float(n))
    assert backlog.next_due() == 0.0
    first = backlog.take_due(10.0, 2)
    rest = backlog.take_due(10.0, 10)
    assert [a.event.id for a in first + rest] == [e.id for e in events]
    assert not any(a.retry for a in first + rest)
    assert backlog.next_due() is None  # everything is in flight


def test_an_outcome_for_an_event_not_in_flight_changes_nothing() -> None:
    backlog = PublishBacklog(BACKOFF)
    item = event()
    assert backlog.succeeded(item, 0.0) is None
    assert backlog.failed(item, 0.0) == 0.0
    backlog.add(item, committed=0.0, now=0.0)
    assert backlog.failed(item, 0.0) == 0.0  # not taken yet
    assert (len(backlog), backlog.failing) == (1, 0)


def guard_answer(**figures: str) -> ET.Element:
    query = ET.Element(f"{{{ARCHIVE_GUARD_NS}}}query")
    archive = ET.SubElement(query, f"{{{ARCHIVE_GUARD_NS}}}archive", figures)
    ET.SubElement(archive, f"{{{ARCHIVE_GUARD_NS}}}error").text = "Failed to connect"
    return query


def test_the_archive_guard_answer_is_read_with_its_age_and_reason() -> None:
    health = archive_health_from(
        guard_answer(
            failures="71",
            recovered="70",
            dropped="0",
            pending="1",
            **{"seconds-since-failure": "12"},
        )
    )
    assert (health.failures, health.recovered, health.dropped, health.pending) == (71, 70, 0, 1)
    assert health.seconds_since_failure == 12
    assert health.error == "Failed to connect"


@pytest.mark.parametrize(
    "figures",
    [
        {},
        {"failures": "x", "recovered": "0", "dropped": "0", "pending": "0"},
        {"failures": "-1", "recovered": "0", "dropped": "0", "pending": "0"},
    ],
)
def test_a_malformed_archive_guard_answer_is_refused(figures: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        archive_health_from(guard_answer(**figures))
    with pytest.raises(ValueError):
        archive_health_from(ET.Element(f"{{{ARCHIVE_GUARD_NS}}}query"))
