"""`roadwatch replay` and the simulator across a restart of their broker: nothing lost, no exit.

Each test has a broker of its own, stopped and started again while the publisher runs. The
broker goes away between two publications: QoS 0 messages written in the instant it dies are
lost by definition (at most once), and the tests are about what is published while it is away.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
from roadwatch.services.simulator import DemoSimulation, FleetSink, Pacer, Summary, run
from tests.integration.mqtt_inbox import Inbox, gateway_endpoint

pytestmark = pytest.mark.integration

T0 = 1_780_000_000_000
LINES_PER_S = 20
# The trace: lines for BEFORE_S, nothing for GAP_S (the broker is stopped then), then lines
# until TRACE_S; the broker stays away for OUTAGE_S.
BEFORE_S, GAP_S, TRACE_S = 2.0, 2.5, 10.0
OUTAGE_S = 4.0
DENM_EVERY = 3  # every third line is a DENM, at QoS 1


@pytest.fixture
def private_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own, which it may stop and restart."""
    root = Path(tempfile.mkdtemp(prefix="rw-broker-"))
    root.chmod(0o755)  # the broker runs as its own user
    broker = Mosquitto(private_settings(root), RunLayout(root))
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(root, ignore_errors=True)


def trace_line(n: int, t_ms: int) -> dict[str, Any]:
    station = f"rp-{n % 7}"
    extra: dict[str, Any]
    if n % DENM_EVERY == 0:
        kind, qos, extra = "denm", 1, {"causeCode": 94}
    else:
        kind, qos, extra = "cam", 0, {"speed": 30.0, "heading": 90.0}
    payload = {
        "stationId": station,
        "stationType": 5,
        "timestamp": t_ms,
        "lat": 49.25,
        "lon": 4.03,
        "line": n,
        **extra,
    }
    return {"topic": f"vehicles/{station}/{kind}", "qos": qos, "payload": payload}


def write_trace(path: Path) -> tuple[int, int]:
    """Write the trace; return how many lines it has, and how many come before the gap."""
    times = [t / LINES_PER_S for t in range(round(BEFORE_S * LINES_PER_S))]
    before = len(times)
    after_s = BEFORE_S + GAP_S
    times += [after_s + t / LINES_PER_S for t in range(round((TRACE_S - after_s) * LINES_PER_S))]
    lines = [trace_line(n, T0 + round(t * 1000)) for n, t in enumerate(times)]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return len(lines), before


def line_numbers(inbox: Inbox) -> Counter[int]:
    return Counter(orjson.loads(payload)["line"] for _topic, payload, _qos in inbox.received)


def test_replay_goes_on_through_a_broker_restart_and_every_line_arrives(
    private_broker: Mosquitto, tmp_path: Path
) -> None:
    settings = private_broker.settings
    trace = tmp_path / "trace.jsonl"
    total, before = write_trace(trace)
    # A persistent session: the broker keeps what arrives for it while it reconnects.
    with Inbox(
        gateway_endpoint(settings, f"replay-{secrets.token_hex(3)}"), persistent=True
    ) as inbox:
        replay = subprocess.Popen(
            [sys.executable, "-m", "roadwatch", "replay", str(trace), "--speedup", "1"],
            env={**os.environ, **settings.as_environment(), "ROADWATCH_ENV_FILE": ""},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert len(inbox.wait_for(1, 15)) == 1
            first_at = time.monotonic()
            assert len(inbox.wait_for(before, 10)) == before
            private_broker.stop()  # in the trace's gap
            time.sleep(OUTAGE_S)
            private_broker.start()
            _out, log = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.communicate()
        took_s = time.monotonic() - first_at
        assert replay.returncode == 0, log
        deadline = time.monotonic() + 10
        while len(line_numbers(inbox)) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = line_numbers(inbox)
    assert f"replay done: {total} publications" in log
    assert "dropped" not in log
    # Every line arrived; QoS 0 ones exactly once, DENMs at least once (resent after the outage).
    assert set(counts) == set(range(total))
    assert all(counts[n] == 1 for n in range(total) if n % DENM_EVERY)
    # The pacing went on while the broker was away: the outage did not lengthen the replay.
    assert took_s < TRACE_S + OUTAGE_S / 2, log


def test_the_simulator_keeps_publishing_through_a_broker_restart(
    private_broker: Mosquitto,
) -> None:
    settings = private_broker.settings
    vehicles, seconds = 20, 8
    sink = FleetSink(settings, 2, secrets.token_hex(3), offline_limit=100)
    with Inbox(gateway_endpoint(settings, f"sim-{secrets.token_hex(3)}"), persistent=True) as inbox:
        sink.start()
        now_ms = round(time.time() * 1000)
        summaries: list[Summary] = []
        stop = threading.Event()

        def simulate() -> None:
            summaries.append(
                run(
                    DemoSimulation(vehicles, 7, now_ms),
                    sink,
                    vehicles=vehicles,
                    duration_s=seconds,
                    pacer=Pacer(now_ms, now_ms, 1.0),
                    stop=stop,
                )
            )

        worker = threading.Thread(target=simulate)
        worker.start()
        try:
            # Between two ticks of 1 Hz publications, once the second tick has arrived.
            assert len(inbox.wait_for(2 * vehicles, 10)) >= 2 * vehicles
            private_broker.stop()
            time.sleep(2.5)
            private_broker.start()
            worker.join(seconds + 10)
            assert not worker.is_alive()
        finally:
            stop.set()
            worker.join()
            sink.close()
        [summary] = summaries
        received = inbox.wait_for(summary.messages, 10)
    assert summary.ticks == seconds
    assert summary.messages >= vehicles * seconds
    assert sum(publisher.reconnects for publisher in sink.publishers) == len(sink.publishers)
    assert sink.dropped == 0
    # Every CAM arrived, those published while the broker was away included.
    cams = Counter(topic for topic, _payload, qos in received if topic.endswith("/cam"))
    assert sum(cams.values()) == vehicles * seconds
    assert set(cams.values()) == {seconds}
