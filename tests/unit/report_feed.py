"""Drive a DENM-report detector the way Detector does: the clock is the newest timestamp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from roadwatch.domain.events import Event
from roadwatch.domain.messages import Denm


class ReportDetector(Protocol):
    def expire(self, now_ms: int) -> list[Event]: ...


D = TypeVar("D", bound=ReportDetector)


class Feed(Generic[D]):
    """Feed DENMs and clock ticks to `detector`, keeping every event it emits."""

    def __init__(self, detector: D, handle: Callable[[D, Denm, int], list[Event]]) -> None:
        self.detector = detector
        self._handle = handle
        self.clock = 0
        self.events: list[Event] = []

    def send(self, message: Denm) -> list[Event]:
        self.clock = max(self.clock, message.timestamp_ms)
        produced = self._handle(self.detector, message, self.clock)
        self.events.extend(produced)
        return produced

    def tick(self, t: int) -> list[Event]:
        self.clock = max(self.clock, t)
        produced = self.detector.expire(self.clock)
        self.events.extend(produced)
        return produced
