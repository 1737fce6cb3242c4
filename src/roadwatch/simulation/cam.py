"""When a simulated vehicle sends a CAM (ETSI EN 302 637-2 §6.1.3), and the CAM it sends."""

from __future__ import annotations

from typing import Any

from roadwatch.domain.geo import haversine_m

# ETSI EN 302 637-2 §6.1.3: T_GenCamMin and T_GenCamMax bound the CAM rate to 1..10 Hz.
T_GEN_CAM_MIN_MS = 100
T_GEN_CAM_MAX_MS = 1000
# ETSI EN 302 637-2 §6.1.3: the dynamics that trigger a CAM since the last one sent.
HEADING_THRESHOLD_DEG = 4.0
POSITION_THRESHOLD_M = 4.0
SPEED_THRESHOLD_MPS = 0.5
# docs/contract/mqtt.md §3: speed is carried in km/h and must stay within 0..400.
MAX_SPEED_KMH = 400.0


def heading_difference_deg(a_deg: float, b_deg: float) -> float:
    """Return the smaller angle between two headings, in [0, 180]."""
    diff = abs(a_deg - b_deg) % 360.0
    return 360.0 - diff if diff > 180.0 else diff


class CamTrigger:
    """Decides, at each simulation step, whether one vehicle sends a CAM now."""

    __slots__ = ("_heading", "_lat", "_lon", "_speed", "_t_ms")

    def __init__(self) -> None:
        self._t_ms: int | None = None
        self._lat = 0.0
        self._lon = 0.0
        self._speed = 0.0
        self._heading = 0.0

    @property
    def last_sent_ms(self) -> int | None:
        """Return the time of the last CAM sent, or None before the first."""
        return self._t_ms

    def should_send(
        self, t_ms: int, lat: float, lon: float, speed_mps: float, heading_deg: float
    ) -> bool:
        """Return whether a CAM is due now, remembering it as sent when it is."""
        last = self._t_ms
        if last is not None:
            elapsed = t_ms - last
            if elapsed < T_GEN_CAM_MIN_MS:
                return False
            if (
                elapsed < T_GEN_CAM_MAX_MS
                and heading_difference_deg(heading_deg, self._heading) <= HEADING_THRESHOLD_DEG
                and abs(speed_mps - self._speed) <= SPEED_THRESHOLD_MPS
                and haversine_m(self._lat, self._lon, lat, lon) <= POSITION_THRESHOLD_M
            ):
                return False
        self._t_ms = t_ms
        self._lat = lat
        self._lon = lon
        self._speed = speed_mps
        self._heading = heading_deg
        return True


# Positional, in the order of the fields of docs/contract/mqtt.md §3.
def cam_payload(  # noqa: PLR0917
    station_id: str,
    station_type: int,
    t_ms: int,
    lat: float,
    lon: float,
    speed_mps: float,
    heading_deg: float,
) -> dict[str, Any]:
    """Return the CAM (docs/contract/mqtt.md §3) for one vehicle state."""
    heading = round(heading_deg % 360.0, 1)
    return {
        "stationId": station_id,
        "stationType": station_type,
        "timestamp": t_ms,
        "lat": round(lat, 7),
        "lon": round(lon, 7),
        "speed": min(MAX_SPEED_KMH, round(max(0.0, speed_mps) * 3.6, 1)),
        # Rounding 359.96 gives 360.0; north is written as 0.
        "heading": 0.0 if heading >= 360.0 else heading,
    }


Publication = tuple[str, dict[str, Any], int]  # topic, payload, QoS


def denm_publication(
    station_id: str,
    station_type: int,
    t_ms: int,
    lat: float,
    lon: float,
    *,
    cause: int,
    termination: str | None = None,
) -> Publication:
    """Return a DENM on its topic, at QoS 1 (docs/contract/mqtt.md §2, §4)."""
    payload: dict[str, Any] = {
        "stationId": station_id,
        "stationType": station_type,
        "timestamp": t_ms,
        "lat": round(lat, 7),
        "lon": round(lon, 7),
        "causeCode": cause,
    }
    if termination is not None:
        payload["termination"] = termination
    return f"vehicles/{station_id}/denm", payload, 1
