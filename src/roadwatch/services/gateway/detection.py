"""Detection stage: MQTT payloads validated into messages, and the detector's events counted."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from roadwatch.adapters.accounts import REGISTRY_FILE, TrustRegistry
from roadwatch.domain.accounts import TRUSTED_STATION_TYPES, effective_station_type
from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event
from roadwatch.domain.messages import Cam, Denm, Rejected, RejectReason, parse_message
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

# One log line per rejection reason at most this often; the counters keep the full story.
REJECTION_LOG_INTERVAL_S = 60.0


class RejectionLog:
    """Counts rejected messages per reason and logs each reason at a limited rate."""

    def __init__(self, interval_s: float = REJECTION_LOG_INTERVAL_S) -> None:
        self.counts: Counter[str] = Counter()
        self._interval_s = interval_s
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def record(self, rejected: Rejected, topic: str, now: float) -> None:
        reason = rejected.reason.value
        self.counts[reason] += 1
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval_s:
            self._unlogged[reason] += 1
            return
        suppressed = self._unlogged.pop(reason, 0)
        self._last_logged[reason] = now
        log.warning(
            "rejected message on %.80s: %s (%s)%s",
            topic,
            reason,
            rejected.detail[:120],
            f"; {suppressed} more since the last report" if suppressed else "",
        )


class Detection:
    """The detector with what surrounds it: validation, rejections and event counts."""

    def __init__(self, settings: Settings) -> None:
        self.detector = Detector(settings.detection_rules)
        self.rejections = RejectionLog()
        self.received = 0
        self.ignored = 0
        self.events: Counter[tuple[str, str]] = Counter()
        self._future_tolerance_ms = round(settings.future_tolerance_s * 1000)
        self.accounts = TrustRegistry(settings.account_folder / REGISTRY_FILE)
        self._believe_fleet = settings.fleet_declared_trust
        # Messages declaring a trusted stationType their account may not claim
        # (docs/contract/mqtt.md §9).
        self.trust_refused = 0

    def parse(self, topic: str, payload: bytes, now: float) -> Cam | Denm | None:
        """Count one received message and validate it; None when it is ignored or rejected.

        The stationType the detector sees is the account's trust level, not the declared one.
        """
        self.received += 1
        try:
            message = parse_message(topic, payload, round(now * 1000), self._future_tolerance_ms)
        except Rejected as rejected:
            if rejected.reason is RejectReason.IGNORED_TYPE:
                self.ignored += 1
            else:
                self.rejections.record(rejected, topic, now)
            return None
        declared = message.station_type
        used = effective_station_type(
            declared,
            self.accounts.trust_of(message.station_id, now),
            believe_declared=self._believe_fleet,
        )
        if used == declared:
            return message
        if declared in TRUSTED_STATION_TYPES:
            self.trust_refused += 1
        return replace(message, station_type=used)

    def count(self, events: Iterable[Event]) -> None:
        for event in events:
            self.events[(event.type.value, event.status.value)] += 1
