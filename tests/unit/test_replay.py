"""`roadwatch replay`: pacing, timestamp rebasing, checkpoints and control, without a broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.adapters.mqtt import MqttError
from roadwatch.cli import build_parser
from roadwatch.services.replay import (
    ReplayControl,
    ReplayError,
    ReplayStats,
    TraceInfo,
    rebase_offset,
    rebase_payload,
    replay,
    scan_trace,
)
from roadwatch.settings import Settings

T0 = 1_780_000_000_000
SETTINGS = Settings(_env_file=None, environment="development")  # type: ignore[call-arg]


class FakePublisher:
    """Keeps what was published, with the wall-clock time of each publication.

    `flushes` counts how often the replay waited for the broker; `missing` makes that fail.
    """

    def __init__(self, dropped: int = 0, missing: str = "") -> None:
        self.published: list[tuple[float, str, bytes, int]] = []
        self.flushes: list[int] = []
        self.dropped = dropped
        self.missing = missing

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.published.append((time.time(), topic, payload, qos))

    def flush(self, timeout_s: float) -> None:
        self.flushes.append(len(self.published))
        if self.missing:
            raise MqttError(self.missing)

    def payloads(self) -> list[dict[str, Any]]:
        return [orjson.loads(payload) for _, _, payload, _ in self.published]


def cam_line(station: str, t_ms: int) -> dict[str, Any]:
    payload = {
        "stationId": station,
        "stationType": 5,
        "timestamp": t_ms,
        "lat": 49.25,
        "lon": 4.03,
        "speed": 50.0,
        "heading": 90.0,
    }
    return {"topic": f"vehicles/{station}/cam", "qos": 0, "payload": payload}


def write_trace(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(
        b"".join(
            (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
        )
    )
    return path


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """Two seconds of trace: 21 CAMs, 100 ms apart, then a DENM at QoS 1."""
    lines: list[Any] = [cam_line(f"car-{i % 3}", T0 + i * 100) for i in range(21)]
    denm = {
        "stationId": "rsu",
        "stationType": 15,
        "timestamp": T0 + 2000,
        "lat": 49.25,
        "lon": 4.03,
        "causeCode": 3,
    }
    lines.append({"topic": "vehicles/rsu/denm", "qos": 1, "payload": denm})
    return write_trace(tmp_path / "trace.jsonl", lines)


def test_the_scan_finds_the_span_and_skips_what_is_not_a_publication(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path / "t.jsonl",
        [
            cam_line("a", T0 + 500),
            b"not json",
            b"[1, 2]",
            {"topic": "", "payload": {}},
            {"topic": "x", "qos": 5, "payload": {}},
            {"topic": "vehicles/a/cam", "payload": 3},
            {
                "topic": "owntracks/u/d",
                "qos": 1,
                "payload": {"_type": "location", "tst": 1_780_000_001},
            },
            {"topic": "vehicles/a/cam", "payload": "raw bytes"},
            cam_line("b", T0),
        ],
    )
    assert scan_trace(path) == TraceInfo(lines=4, first_ms=T0, last_ms=T0 + 1000, skipped=5)


def test_an_unusable_trace_is_a_replay_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="cannot read"):
        scan_trace(tmp_path / "missing.jsonl")
    with pytest.raises(ReplayError, match="no publication"):
        scan_trace(write_trace(tmp_path / "empty.jsonl", [b"junk"]))
    with pytest.raises(ReplayError, match="speed-up"):
        replay(SETTINGS, tmp_path / "missing.jsonl", 0.0, publisher=FakePublisher())


@pytest.mark.parametrize("speedup", [1.0, 4.0, 1000.0, float("inf")])
def test_the_offset_makes_the_trace_end_at_start_plus_its_paced_duration(speedup: float) -> None:
    info = TraceInfo(lines=2, first_ms=T0, last_ms=T0 + 60_000, skipped=0)
    start = 1_800_000_000_000
    offset = rebase_offset(info, start, speedup)
    assert info.last_ms + offset == start + int(60_000 / speedup)
    # Every line is due at start + (ts - first) / speedup and is never dated after that.
    for ts in range(info.first_ms, info.last_ms + 1, 7_000):
        assert ts + offset <= start + (ts - info.first_ms) / speedup + 1


def test_slower_than_real_time_starts_now() -> None:
    info = TraceInfo(lines=2, first_ms=T0, last_ms=T0 + 60_000, skipped=0)
    assert rebase_offset(info, 1_800_000_000_000, 0.5) == 1_800_000_000_000 - T0


def test_rebasing_shifts_vehicle_and_owntracks_times_only() -> None:
    payload = {"timestamp": T0, "lat": 1.0, "nested": {"timestamp": 3}}
    assert rebase_payload(payload, 1234) == {**payload, "timestamp": T0 + 1234}
    assert rebase_payload({"tst": 1_780_000_000, "vel": 3}, 1999) == {
        "tst": 1_780_000_001,
        "vel": 3,
    }
    assert rebase_payload({"timestamp": "soon"}, 5) == {"timestamp": "soon"}


def test_a_replay_is_paced_and_dated_up_to_now(trace: Path) -> None:
    publisher = FakePublisher()
    started = time.time()
    stats = replay(SETTINGS, trace, 10.0, publisher=publisher)
    elapsed = time.time() - started
    assert stats.published == 22
    assert 0.19 <= elapsed < 2.0  # two seconds of trace, ten times faster
    payloads = publisher.payloads()
    times = [p["timestamp"] for p in payloads]
    # Deltas are kept exactly, so detection sees the same trace.
    assert [t - times[0] for t in times] == [i * 100 for i in range(21)] + [2000]
    for (published_at, _, _, _), t in zip(publisher.published, times, strict=True):
        assert t <= published_at * 1000 + 1
    assert abs(times[-1] - publisher.published[-1][0] * 1000) < 150
    assert publisher.published[-1][1:] == ("vehicles/rsu/denm", publisher.published[-1][2], 1)


def test_the_replay_ends_once_the_broker_has_everything(trace: Path) -> None:
    publisher = FakePublisher(dropped=3)
    stats = replay(SETTINGS, trace, float("inf"), publisher=publisher)
    assert publisher.flushes == [22]
    assert stats.dropped == 3  # QoS 0 beyond what was kept while the broker was away


def test_a_broker_that_never_takes_everything_fails_the_replay_clearly(trace: Path) -> None:
    publisher = FakePublisher(missing="after 60 s, 1 QoS 1 publications are still unacknowledged")
    with pytest.raises(ReplayError, match="did not take the whole replay: after 60 s, 1 QoS 1"):
        replay(SETTINGS, trace, float("inf"), publisher=publisher)


def test_qos_2_lines_are_published_at_least_once(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "q2.jsonl", [{**cam_line("a", T0), "qos": 2}])
    publisher = FakePublisher()
    replay(SETTINGS, path, float("inf"), publisher=publisher)
    assert [qos for _, _, _, qos in publisher.published] == [1]


def test_a_fixed_offset_is_used_as_given(trace: Path) -> None:
    publisher = FakePublisher()
    replay(SETTINGS, trace, float("inf"), publisher=publisher, offset_ms=-T0)
    assert [p["timestamp"] for p in publisher.payloads()][:3] == [0, 100, 200]


def test_raw_payloads_are_published_untouched(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path / "bad.jsonl",
        [cam_line("a", T0), {"topic": "vehicles/a/cam", "payload": "{oops"}],
    )
    publisher = FakePublisher()
    stats = replay(SETTINGS, path, float("inf"), publisher=publisher)
    assert stats.published == 2
    assert publisher.published[1][2] == b"{oops"


def test_checkpoints_run_in_order_and_do_not_count_for_pacing(trace: Path) -> None:
    publisher = FakePublisher()
    seen: list[tuple[float, int]] = []

    def at(fraction: float) -> Any:
        def callback(stats: ReplayStats) -> None:
            seen.append((fraction, stats.published))
            time.sleep(0.3)

        return callback

    started = time.monotonic()
    stats = replay(
        SETTINGS, trace, 20.0, publisher=publisher, checkpoints={0.5: at(0.5), 0.0: at(0.0)}
    )
    elapsed = time.monotonic() - started
    assert seen == [(0.0, 1), (0.5, 11)]
    # Each checkpoint sees what was published so far in the broker's hands.
    assert publisher.flushes[:2] == [1, 11]
    assert stats.paused_s >= 0.6
    # Paused time shifts the schedule instead of being caught up at full speed afterwards.
    assert elapsed >= 0.6 + 0.09


def test_a_replay_can_be_paused_resumed_and_stopped(trace: Path) -> None:
    publisher = FakePublisher()
    control = ReplayControl()
    result: list[ReplayStats] = []
    control.pause()
    worker = threading.Thread(
        target=lambda: result.append(
            replay(SETTINGS, trace, 5.0, publisher=publisher, control=control)
        )
    )
    worker.start()
    assert control.wait_paused(5.0)
    time.sleep(0.2)
    assert publisher.published == []
    control.resume()
    time.sleep(0.15)
    control.stop()
    worker.join(5.0)
    [stats] = result
    assert 0 < stats.published < 22
    assert stats.paused_s >= 0.2


def test_the_command_line_takes_a_file_and_a_positive_speedup(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["replay", str(tmp_path / "t.jsonl"), "--speedup", "25"])
    assert (args.file, args.speedup) == (tmp_path / "t.jsonl", 25.0)
    assert parser.parse_args(["replay", "t.jsonl"]).speedup == 1.0
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "t.jsonl", "--speedup", "0"])
