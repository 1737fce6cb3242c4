"""Rejected messages are counted per reason and logged at a limited rate
(docs/contract/mqtt.md §6)."""

from __future__ import annotations

import logging

import pytest

from roadwatch.domain.messages import Rejected, RejectReason
from roadwatch.services.gateway.detection import RejectionLog


def test_every_rejection_is_counted_but_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejections = RejectionLog(interval_s=60)
    with caplog.at_level(logging.WARNING, logger="roadwatch.services.gateway.detection"):
        for second in range(100):
            rejections.record(Rejected(RejectReason.NOT_JSON, "bad"), "vehicles/x/cam", second)
        rejections.record(Rejected(RejectReason.TOO_LARGE, "5000 bytes"), "vehicles/x/cam", 100)
    assert rejections.counts == {"not_json": 100, "too_large": 1}
    lines = [record.getMessage() for record in caplog.records]
    assert len([line for line in lines if "not_json" in line]) == 2  # at 0 s and at 60 s
    assert any("59 more since the last report" in line for line in lines)
    assert len([line for line in lines if "too_large" in line]) == 1
