"""`roadwatch replay FILE`: publish a recorded trace over MQTT, paced by its own timestamps.

A trace is JSON Lines, one publication per line: `{"topic": str, "qos": 0|1, "payload": {...}}`
with the payload's absolute timestamps (`timestamp` in ms for CAM/DENM, `tst` in s for
OwnTracks). A payload given as a string is published as is (bad-input traces), unpaced.

Timestamps are shifted by one offset so that the trace ends "now" while lines are published
at the pace of their own time deltas divided by the speed-up: with speed-up s ≥ 1,
`ts' = ts + (start + duration / s - last)`, which keeps every timestamp at or before its
publication (docs/contract/mqtt.md §6 refuses timestamps more than 5 minutes ahead) and every
delta, hence the detected events, unchanged. Below 1 the trace starts "now" instead, for the same
guarantee.

The broker may go away mid-replay (a restart): the pacing goes on, QoS 1 publications are kept
and sent again until acknowledged, QoS 0 ones are kept up to a generous limit (beyond it they
are dropped, counted and logged), and the replay ends only once the broker has everything, or
fails after `ack_timeout_s` saying what it does not have. MQTT has no QoS 2 here: such lines
are published at QoS 1 (at least once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from roadwatch.adapters.mqtt import BlockingPublisher, MqttEndpoint, MqttError
from roadwatch.settings import Settings

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0
# Sleeping shorter than this costs more than it paces.
MIN_SLEEP_S = 0.001
# How long the end of the replay (and each checkpoint) waits for the broker to have
# everything: QoS 1 acknowledged, QoS 0 kept during an outage sent.
ACK_TIMEOUT_S = 60.0
# QoS 0 publications kept while the broker is away: about 50 MB, minutes of a typical trace.
OFFLINE_LIMIT = 200_000
# QoS 1 publications awaiting acknowledgement beyond which the replay waits for the broker.
MAX_UNACKNOWLEDGED = 100_000
# After a successful final flush the connection only has to say goodbye.
STOP_TIMEOUT_S = 2.0
MAX_LOGGED_BAD_LINES = 5


class ReplayError(Exception):
    """The trace cannot be replayed (unreadable, empty, or a bad speed-up)."""


class Publisher(Protocol):
    """What the replay publishes through (a BlockingPublisher, or a fake in tests)."""

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> object: ...

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has everything published so far; raise MqttError if not."""

    @property
    def dropped(self) -> int:
        """QoS 0 publications dropped while the broker was away."""


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """What a first pass over the trace found."""

    lines: int
    first_ms: int
    last_ms: int
    skipped: int

    @property
    def duration_ms(self) -> int:
        return self.last_ms - self.first_ms


@dataclass(slots=True)
class ReplayStats:
    """Progress of a replay."""

    total: int
    offset_ms: int
    published: int = 0
    skipped: int = 0
    dropped: int = 0  # QoS 0, beyond what is kept while the broker is away
    started_at: float = field(default_factory=time.monotonic)
    paused_s: float = 0.0

    @property
    def fraction(self) -> float:
        return self.published / self.total if self.total else 1.0

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at


class ReplayControl:
    """Pause, resume or stop a replay running in another thread."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stopped = threading.Event()
        self._paused_at = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stopped.set()
        self._running.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait_paused(self, timeout_s: float | None = None) -> bool:
        """Wait until the replay has actually stopped publishing after `pause`."""
        return self._paused_at.wait(timeout_s)

    def hold(self) -> float:
        """Block while paused (called by the replay); return the seconds spent."""
        if self._running.is_set():
            return 0.0
        started = time.monotonic()
        self._paused_at.set()
        self._running.wait()
        self._paused_at.clear()
        return time.monotonic() - started


def rebase_offset(info: TraceInfo, start_ms: int, speedup: float) -> int:
    """Return the shift that makes the trace end at `start_ms + duration / speedup`."""
    if speedup >= 1:
        return start_ms + math.floor(info.duration_ms / speedup) - info.last_ms
    # Slower than real time: starting now keeps every timestamp behind its publication.
    return start_ms - info.first_ms


def rebase_payload(payload: dict[str, Any], offset_ms: int) -> dict[str, Any]:
    """Return the payload with its timestamps shifted by `offset_ms`."""
    shifted = dict(payload)
    timestamp = payload.get("timestamp")
    if type(timestamp) is int:
        shifted["timestamp"] = timestamp + offset_ms
    tst = payload.get("tst")
    if type(tst) is int:
        # Whole seconds, rounded down so the shifted time is never later than intended.
        shifted["tst"] = (tst * 1000 + offset_ms) // 1000
    return shifted


def trace_time_ms(payload: Any) -> int | None:
    """Return a payload's own time, or None when it has none."""
    if not isinstance(payload, dict):
        return None
    timestamp = payload.get("timestamp")
    if type(timestamp) is int:
        return timestamp
    tst = payload.get("tst")
    if type(tst) is int:
        return tst * 1000
    return None


@dataclass(frozen=True, slots=True)
class _Line:
    topic: str
    qos: int
    payload: dict[str, Any] | bytes
    time_ms: int | None


def _read_lines(path: Path) -> Iterator[_Line | None]:
    """Yield each line of the trace, None for one that is not a publication."""
    with path.open("rb") as trace:
        for raw in trace:
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield None
                continue
            if not isinstance(item, dict):
                yield None
                continue
            topic, qos, payload = item.get("topic"), item.get("qos", 0), item.get("payload")
            if not isinstance(topic, str) or not topic or qos not in (0, 1, 2):
                yield None
            elif isinstance(payload, dict):
                yield _Line(topic, qos, payload, trace_time_ms(payload))
            elif isinstance(payload, str):
                yield _Line(topic, qos, payload.encode(), None)
            else:
                yield None


def scan_trace(path: Path) -> TraceInfo:
    """Read the trace once: its length and time span; raise ReplayError if unusable."""
    lines = skipped = 0
    first = last = None
    try:
        for line in _read_lines(path):
            if line is None:
                skipped += 1
                continue
            lines += 1
            if line.time_ms is not None:
                first = line.time_ms if first is None else min(first, line.time_ms)
                last = line.time_ms if last is None else max(last, line.time_ms)
    except OSError as exc:
        raise ReplayError(f"cannot read the trace {path}: {exc}") from exc
    if not lines:
        raise ReplayError(f"{path} holds no publication")
    if first is None or last is None:
        first = last = 0
    return TraceInfo(lines, first, last, skipped)


def replay(
    settings: Settings,
    path: Path,
    speedup: float = 1.0,
    *,
    control: ReplayControl | None = None,
    checkpoints: Mapping[float, Callable[[ReplayStats], None]] | None = None,
    offset_ms: int | None = None,
    publisher: Publisher | None = None,
    offline_limit: int = OFFLINE_LIMIT,
    ack_timeout_s: float = ACK_TIMEOUT_S,
) -> ReplayStats:
    """Publish the trace with the fleet account; blocks until done, returns the figures.

    `checkpoints` maps fractions of the trace (0 to 1) to callbacks, called in the replay's
    thread once that share is published and handed to the broker; time spent in them (or
    paused through `control`) does not count for the pacing. `offset_ms` fixes the time shift
    (by default the trace ends "now"); `publisher` replaces the MQTT connection. Raises
    ReplayError when the broker has not taken everything `ack_timeout_s` after the end.
    """
    if not speedup > 0:
        raise ReplayError("the speed-up must be positive")
    info = scan_trace(path)
    own: BlockingPublisher | None = None
    if publisher is None:
        own = BlockingPublisher(
            MqttEndpoint.fleet(settings),
            name="replay",
            offline_limit=offline_limit,
            max_unacknowledged=MAX_UNACKNOWLEDGED,
        )
        own.start()
        publisher = own
    try:
        return _Replay(
            info,
            publisher,
            speedup,
            control=control,
            checkpoints=checkpoints,
            offset_ms=offset_ms,
            ack_timeout_s=ack_timeout_s,
        ).run(path)
    finally:
        if own is not None:
            own.stop(STOP_TIMEOUT_S)


class _Replay:
    def __init__(
        self,
        info: TraceInfo,
        publisher: Publisher,
        speedup: float,
        *,
        control: ReplayControl | None,
        checkpoints: Mapping[float, Callable[[ReplayStats], None]] | None,
        offset_ms: int | None,
        ack_timeout_s: float,
    ) -> None:
        self.info = info
        self.publisher = publisher
        self.speedup = speedup
        self.control = control or ReplayControl()
        self.checkpoints = sorted((checkpoints or {}).items())
        start_ms = round(time.time() * 1000)
        offset = rebase_offset(info, start_ms, speedup) if offset_ms is None else offset_ms
        self.stats = ReplayStats(total=info.lines, offset_ms=offset)
        self.ack_timeout_s = ack_timeout_s

    def run(self, path: Path) -> ReplayStats:
        info, stats = self.info, self.stats
        log.info(
            "replaying %s: %d publications over %.1f s of trace time, speed-up %g",
            path,
            info.lines,
            info.duration_ms / 1000,
            self.speedup,
        )
        origin = time.monotonic()
        next_progress = origin + PROGRESS_INTERVAL_S
        time_ms = info.first_ms
        bad = 0
        for line in _read_lines(path):
            if line is None:
                bad += 1
                stats.skipped += 1
                if bad <= MAX_LOGGED_BAD_LINES:
                    log.warning("replay: skipped a line that is not a publication")
                continue
            held = self.control.hold()
            if self.control.stopped:
                break
            stats.paused_s += held
            if line.time_ms is not None:
                time_ms = line.time_ms
            due = origin + stats.paused_s + (time_ms - info.first_ms) / 1000 / self.speedup
            delay = due - time.monotonic()
            if delay > MIN_SLEEP_S:
                time.sleep(delay)
            self._publish(line)
            stats.published += 1
            while self.checkpoints and stats.fraction >= self.checkpoints[0][0]:
                _, callback = self.checkpoints.pop(0)
                started = time.monotonic()
                self.wait_published()
                callback(stats)
                stats.paused_s += time.monotonic() - started
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_INTERVAL_S
                stats.dropped = self.publisher.dropped
                log.info(
                    "replay: %d / %d publications (%.1f %%), %.0f msg/s%s",
                    stats.published,
                    info.lines,
                    100 * stats.fraction,
                    stats.published / max(1e-9, now - origin - stats.paused_s),
                    f", {stats.dropped} dropped while the broker was away" if stats.dropped else "",
                )
        try:
            self.wait_published()
        finally:
            stats.dropped = self.publisher.dropped
        active_s = max(1e-9, stats.elapsed_s - stats.paused_s)
        log.info(
            "replay done: %d publications in %.1f s (%.0f msg/s), %d lines skipped",
            stats.published,
            active_s,
            stats.published / active_s,
            stats.skipped,
        )
        if stats.dropped:
            log.warning(
                "replay: %d QoS 0 publications were dropped while the broker was away",
                stats.dropped,
            )
        return stats

    def _publish(self, line: _Line) -> None:
        payload = line.payload
        data = (
            payload
            if isinstance(payload, bytes)
            else orjson.dumps(rebase_payload(payload, self.stats.offset_ms))
        )
        self.publisher.publish(line.topic, data, min(line.qos, 1))

    def wait_published(self) -> None:
        """Wait until the broker has everything published so far (QoS 1 acknowledged)."""
        try:
            self.publisher.flush(self.ack_timeout_s)
        except MqttError as exc:
            raise ReplayError(f"the broker did not take the whole replay: {exc}") from exc


def main(settings: Settings, path: Path, speedup: float) -> int:
    """Entry point of `roadwatch replay`; return the exit status."""
    try:
        replay(settings, path, speedup)
    except (ReplayError, MqttError) as exc:
        log.error("%s", exc)
        return 1
    return 0
