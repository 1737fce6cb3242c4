"""Invariants every stream of detected events keeps (docs/contract/events.md §4), shared by the
property tests."""

from __future__ import annotations

from roadwatch.domain.events import Event, EventStatus


def assert_next_version(previous: Event | None, event: Event) -> None:
    """Check that `event` may follow `previous`, the last version sent with the same id.

    A new id starts active at version 1; each update counts up by one from an active version,
    keeps the start time and never goes back in time.
    """
    if previous is None:
        assert event.version == 1
        assert event.status is EventStatus.ACTIVE
        return
    assert previous.status is EventStatus.ACTIVE, "an update after the clear"
    assert event.version == previous.version + 1
    assert event.started_ms == previous.started_ms
    assert event.updated_ms >= previous.updated_ms
