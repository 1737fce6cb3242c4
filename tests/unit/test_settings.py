"""Every detection threshold is a setting read from the environment
(docs/contract/detection.md §10)."""

from __future__ import annotations

import pytest

from roadwatch.settings import Settings


def test_defaults_are_the_spec_thresholds() -> None:
    rules = Settings(_env_file=None).detection_rules  # type: ignore[call-arg]
    assert rules.accident.radius_m == 200
    assert rules.accident.window_ms == 600_000
    assert rules.accident.expiry_ms == 1_800_000
    assert rules.traffic_jam.min_stations == 3
    assert rules.traffic_jam.slow_speed_kmh == 30
    assert rules.traffic_jam.free_speed_kmh == 50
    assert rules.traffic_jam.clear_after_ms == 120_000
    assert rules.traffic_jam.update_interval_ms == 30_000
    assert rules.zones.timeout_ms == 600_000
    assert rules.zones.hysteresis_m == 0


def test_thresholds_change_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROADWATCH_ACCIDENT_RADIUS_M", "150")
    monkeypatch.setenv("ROADWATCH_JAM_MIN_STATIONS", "5")
    monkeypatch.setenv("ROADWATCH_JAM_SLOW_SPEED_KMH", "20")
    monkeypatch.setenv("ROADWATCH_ZONE_TIMEOUT_S", "300")
    monkeypatch.setenv("ROADWATCH_ZONE_HYSTERESIS_M", "25")
    rules = Settings(_env_file=None).detection_rules  # type: ignore[call-arg]
    assert rules.accident.radius_m == 150
    assert rules.traffic_jam.min_stations == 5
    assert rules.traffic_jam.slow_speed_kmh == 20
    assert rules.zones.timeout_ms == 300_000
    assert rules.zones.hysteresis_m == 25


def test_inconsistent_thresholds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROADWATCH_JAM_SLOW_SPEED_KMH", "60")  # above the free-flow speed
    with pytest.raises(ValueError):
        _ = Settings(_env_file=None).detection_rules  # type: ignore[call-arg]
