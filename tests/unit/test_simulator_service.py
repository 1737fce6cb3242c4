"""The simulator service's pacing, clock rebasing and trace format, without a broker."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.services.replay import scan_trace
from roadwatch.services.simulator import (
    CIRCLES_SCENARIO,
    DEFAULT_HORIZON_S,
    DemoSimulation,
    NullSink,
    Pacer,
    SimulatorError,
    VehicleSink,
    clock_lead_ms,
    main,
    make_simulation,
    run,
    station_of,
    trace_line,
)
from roadwatch.settings import Settings
from roadwatch.simulation.network import REIMS_NETWORK_PATH

START_MS = 1_790_000_000_000
# docs/contract/mqtt.md §6: a timestamp more than this far ahead of the receiver's clock is refused.
FUTURE_TOLERANCE_MS = 300_000


def record(seed: int, vehicles: int = 30, duration_s: float = 20.0) -> bytes:
    out = io.BytesIO()
    run(
        DemoSimulation(vehicles, seed, START_MS),
        NullSink(),
        vehicles=vehicles,
        duration_s=duration_s,
        pacer=None,
        stop=threading.Event(),
        record=out,
    )
    return out.getvalue()


def test_real_time_run_starts_now() -> None:
    assert clock_lead_ms(60.0, 1.0) == 0
    assert clock_lead_ms(None, 1.0) == 0


def test_fast_run_starts_as_far_back_as_it_gains() -> None:
    # 100 simulated seconds at x10 take 10 wall seconds and gain 90.
    assert clock_lead_ms(100.0, 10.0) == 90_000
    assert clock_lead_ms(None, 2.0) == DEFAULT_HORIZON_S * 500


@pytest.mark.parametrize("speedup", [1.0, 1.5, 10.0, 60.0, 1000.0])
@pytest.mark.parametrize("duration_s", [10.0, 600.0, 3600.0])
def test_no_timestamp_is_ever_ahead_of_the_wall_clock(speedup: float, duration_s: float) -> None:
    wall_start = START_MS
    sim_start = wall_start - clock_lead_ms(duration_s, speedup)
    pacer = Pacer(sim_start, wall_start, speedup)
    for tick in range(1, int(duration_s) + 1):
        sim_ms = sim_start + tick * 1000
        assert pacer.due_ms(sim_ms) >= sim_ms


@pytest.mark.parametrize("speedup", [2.0, 10.0])
def test_fast_run_keeps_its_speedup_until_the_end(speedup: float) -> None:
    duration_s = 600.0
    sim_start = START_MS - clock_lead_ms(duration_s, speedup)
    pacer = Pacer(sim_start, START_MS, speedup)
    end = sim_start + int(duration_s * 1000)
    assert pacer.due_ms(end) - START_MS == pytest.approx(duration_s * 1000 / speedup, abs=1)
    halfway = sim_start + int(duration_s * 500)
    assert pacer.due_ms(halfway) - START_MS == pytest.approx(duration_s * 500 / speedup, abs=1)


def test_endless_fast_run_falls_back_to_real_time_once_caught_up() -> None:
    sim_start = START_MS - clock_lead_ms(None, 10.0)
    pacer = Pacer(sim_start, START_MS, 10.0)
    later = START_MS + 3 * int(DEFAULT_HORIZON_S * 1000)
    assert pacer.due_ms(later) == later
    assert pacer.due_ms(later + 1000) - pacer.due_ms(later) == 1000


def test_unlimited_speedup_is_paced_by_the_timestamps_alone() -> None:
    pacer = Pacer(START_MS - 10_000, START_MS, float("inf"))
    assert pacer.due_ms(START_MS - 5_000) == START_MS - 5_000


def test_same_seed_records_the_same_trace() -> None:
    first, second = record(seed=7), record(seed=7)
    assert first == second
    assert first != record(seed=8)


def test_recorded_lines_are_in_the_replay_format(tmp_path: Path) -> None:
    data = record(seed=3, vehicles=10, duration_s=5.0)
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert len(lines) >= 50
    for line in lines:
        assert set(line) == {"topic", "qos", "payload"}
        assert line["qos"] in (0, 1)
        assert station_of(line["topic"]) == line["payload"]["stationId"]
    path = tmp_path / "trace.jsonl"
    path.write_bytes(data)
    info = scan_trace(path)
    assert info.duration_ms == 4000


def test_recorded_timestamps_follow_the_simulated_clock() -> None:
    lines = [orjson.loads(line) for line in record(seed=1, duration_s=5.0).splitlines()]
    stamps = sorted(
        {line["payload"]["timestamp"] for line in lines if line["topic"].endswith("cam")}
    )
    assert stamps == [START_MS + n * 1000 for n in range(1, 6)]


def test_trace_line_escapes_the_topic() -> None:
    line = trace_line('vehicles/a"b/cam', 1, b'{"x":1}')
    assert orjson.loads(line) == {"topic": 'vehicles/a"b/cam', "qos": 1, "payload": {"x": 1}}


def test_duration_bounds_the_run() -> None:
    out = io.BytesIO()
    summary = run(
        DemoSimulation(25, 1, START_MS),
        NullSink(),
        vehicles=25,
        duration_s=12.0,
        pacer=None,
        stop=threading.Event(),
        record=out,
    )
    assert summary.ticks == 12
    assert summary.messages == len(out.getvalue().splitlines()) >= 25 * 12
    assert summary.rate > 0
    assert "accidents" in summary.events


def test_stop_ends_an_endless_run() -> None:
    stop = threading.Event()
    stop.set()
    summary = run(
        DemoSimulation(5, 1, START_MS),
        NullSink(),
        vehicles=5,
        duration_s=None,
        pacer=Pacer(START_MS, START_MS, 1.0),
        stop=stop,
    )
    assert summary.messages == 0


def test_vehicle_mode_mutes_vehicles_beyond_its_cap() -> None:
    provisioned: list[dict[str, str]] = []

    def provision(accounts: Any) -> None:
        provisioned.append(dict(accounts))

    sink = VehicleSink(Settings(_env_file=None), provision, limit=0)  # type: ignore[call-arg]
    sink.prepare(["a", "b"])
    sink.publish("vehicles/a/cam", b"{}", 0)
    assert provisioned == []
    assert sink.skipped == {"a", "b"}


def test_station_of_reads_the_vehicle_topic() -> None:
    assert station_of("vehicles/car-1/cam") == "car-1"
    assert station_of("owntracks/u") == ""


def test_circles_scenario_needs_no_road_network() -> None:
    assert isinstance(make_simulation(3, 1, START_MS, CIRCLES_SCENARIO), DemoSimulation)


def test_unknown_scenario_is_refused() -> None:
    pytest.importorskip("roadwatch.simulation.city")
    with pytest.raises(SimulatorError, match="unknown scenario"):
        make_simulation(3, 1, START_MS, "no-such-scenario")


def test_same_seed_records_the_same_city_trace() -> None:
    pytest.importorskip("roadwatch.simulation.city")

    def city_trace(seed: int) -> bytes:
        out = io.BytesIO()
        run(
            make_simulation(20, seed, START_MS),
            NullSink(),
            vehicles=20,
            duration_s=30.0,
            pacer=None,
            stop=threading.Event(),
            record=out,
        )
        return out.getvalue()

    assert city_trace(5) == city_trace(5)
    assert city_trace(5) != city_trace(6)


def dry_run_settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(environment="development", run_dir=tmp_path / "run", **changes)


def test_a_dry_run_writes_its_ground_truth_as_a_json_list(tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    code = main(
        dry_run_settings(tmp_path),
        vehicles=20,
        seed=3,
        duration_s=400.0,
        dry_run=True,
        scenario="zones",
        ground_truth=truth,
    )
    assert code == 0
    expected = orjson.loads(truth.read_bytes())
    assert isinstance(expected, list)
    assert {event["type"] for event in expected} == {"zone_enter", "zone_exit"}
    for event in expected:
        assert event["status"] == "instant"
        assert event["exact_stations"] is True
        assert event["zone_id"]
        assert event["station_ids"][0].startswith("zone0-")


def test_ctrl_c_still_writes_the_ground_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    command = [
        sys.executable,
        "-m",
        "roadwatch",
        "simulate",
        "--dry-run",
        "--scenario",
        "zones",
        "--vehicles",
        "300",
        "--duration",
        "1000000",
        "--ground-truth",
        str(truth),
    ]
    env = {**os.environ, "ROADWATCH_ENVIRONMENT": "development", "ROADWATCH_RUN_DIR": str(tmp_path)}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        # Interrupted once it is simulating, as a user would press Ctrl-C.
        for line in process.stderr:
            if "simulating 300 vehicles" in line:
                break
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert isinstance(orjson.loads(truth.read_bytes()), list)
    assert "ground truth:" in errors


# Two roads closing a square near Paris, far from the Reims network.
TINY_NETWORK = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"id": name, "road_class": "primary"},
            "geometry": {"type": "LineString", "coordinates": coordinates},
        }
        for name, coordinates in (
            ("south-east", [[2.0, 48.0], [2.01, 48.0], [2.01, 48.01]]),
            ("north-west", [[2.01, 48.01], [2.0, 48.01], [2.0, 48.0]]),
        )
    ],
}


def test_the_network_comes_from_the_settings_unless_given(tmp_path: Path) -> None:
    network = tmp_path / "tiny.geojson"
    network.write_bytes(orjson.dumps(TINY_NETWORK))
    trace = tmp_path / "trace.jsonl"
    settings = dry_run_settings(tmp_path, network_file=network)
    code = main(
        settings, vehicles=5, duration_s=20.0, dry_run=True, scenario="traffic", record=trace
    )
    assert code == 0
    payloads = [orjson.loads(line)["payload"] for line in trace.read_bytes().splitlines()]
    assert payloads
    assert all(47.99 <= p["lat"] <= 48.02 and 1.99 <= p["lon"] <= 2.02 for p in payloads)
    # An explicit --network wins over the setting.
    code = main(
        settings,
        vehicles=5,
        duration_s=20.0,
        dry_run=True,
        scenario="traffic",
        record=trace,
        network=REIMS_NETWORK_PATH,
    )
    assert code == 0
    payload = orjson.loads(trace.read_bytes().splitlines()[0])["payload"]
    assert 49.1 <= payload["lat"] <= 49.4
