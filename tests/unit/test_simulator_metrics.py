"""The simulator answers GET /metrics and GET /health like every other service."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from roadwatch.runner.process import free_port
from roadwatch.services.simulator_metrics import SimulatorMetrics


def get(port: int, path: str) -> tuple[int, bytes]:
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return answer.status, bytes(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, bytes(exc.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_figures_and_the_health_follow_the_run() -> None:
    connected = [True]
    port = free_port()
    metrics = SimulatorMetrics.serve(port, lambda: connected[0])
    metrics.update(
        {"vehicles": 40, "published": 1234, "msg_per_s": 40, "dropped": 0}, {"accident": 2}
    )
    status, body = get(port, "/metrics")
    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples[("roadwatch_simulator_published_total", ())] == 1234
    assert samples[("roadwatch_simulator_staged_events_total", (("kind", "accident"),))] == 2
    assert samples[("roadwatch_simulator_mqtt_connected", ())] == 1
    status, body = get(port, "/health")
    assert (status, orjson.loads(body)["status"]) == (200, "ok")
    connected[0] = False
    status, body = get(port, "/health")
    assert status == 503
    assert orjson.loads(body)["problems"] == ["MQTT disconnected"]
