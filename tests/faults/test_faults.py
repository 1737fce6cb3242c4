"""No event lost, duplicated or invented through any fault, under load.

A rush hour with accidents, hazards and zone tours is replayed at thousands of messages a
second into a whole private system; during each run one fault strikes at a reproducible
random point. Once the system is whole again, what MySQL holds is compared with:

- the same trace replayed into a system that suffered nothing (`reference`): equal, event for
  event, whenever every published CAM reached the detector. Jams are the exception, for a
  reason the test measures: the gateway takes DENMs and CAMs over two sessions, each in
  publication order (asserted), and a DENM that outruns the CAM session moves the detection
  clock a jam is checked by. Jams are compared whenever no DENM outran the CAMs in either
  run (the test reports by how much they did);
- the detection core fed exactly what the gateway journaled across all its lives: always
  equal. This is the allowance for QoS 0: a CAM in a socket buffer when the gateway or the
  broker is killed is gone by contract, and may change a later event; the events must then
  be exactly those of the messages that did arrive, and the test says how many CAMs that was.

Every DENM of the trace (QoS 1: the replay resends it until the broker acknowledges it) must
be among the journaled inputs: none may be stranded in, or lost by, the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from roadwatch.domain.events import Event, EventType
from roadwatch.domain.messages import Cam, Denm
from tests.faults.conftest import Report
from tests.faults.harness import (
    FaultRun,
    MessageKey,
    Outcome,
    detect,
    message_key,
    messages_of,
    random_point,
    trace_messages,
)

pytestmark = pytest.mark.faults


def kill_and_wait(program: str) -> Callable[[FaultRun], None]:
    def fault(run: FaultRun) -> None:
        pid = run.kill(program)
        run.wait_back(program, pid)

    return fault


def terminate_gateway(run: FaultRun) -> None:
    pid = run.terminate("gateway")
    run.wait_back("gateway", pid)


def kill_gateway_twice(run: FaultRun) -> None:
    first_at = time.monotonic()
    pid = run.kill("gateway")
    run.wait_back("gateway", pid)
    # The second kill comes while the first restart is still catching up.
    time.sleep(max(0.0, min(3.0, 10.0 - (time.monotonic() - first_at))))
    pid = run.kill("gateway")
    assert time.monotonic() - first_at < 10.0
    run.wait_back("gateway", pid)


# Once Prosody runs again, the gateway's held events must flow within this: its resumed session
# is checked at once (adapters/xmpp/connection.py), not at the next regular ping.
THAWED_FLOW_LIMIT_S = 15.0


def freeze_prosody(run: FaultRun) -> None:
    run.freeze("prosody", 30.0)
    took = run.wait_gateway_drained()
    assert took <= THAWED_FLOW_LIMIT_S, (
        f"the gateway's events waited {took:.1f} s after Prosody was thawed"
        f" (limit {THAWED_FLOW_LIMIT_S:.0f} s)"
    )


def mariadb_down(run: FaultRun) -> None:
    run.down_for("mariadb", 60.0)


# name -> (fault, whether it may cost QoS 0 CAMs in flight)
FAULTS: dict[str, tuple[Callable[[FaultRun], None], bool]] = {
    "gateway-kill": (kill_and_wait("gateway"), True),
    # An orderly stop is lossless while the gateway keeps up; when it lags, the QoS 0 packets
    # Mosquitto has already prepared for its connection die with that connection.
    "gateway-sigterm": (terminate_gateway, True),
    "gateway-killed-twice": (kill_gateway_twice, True),
    "collector-kill": (kill_and_wait("collector"), False),
    "prosody-kill": (kill_and_wait("prosody"), False),
    "mosquitto-kill": (kill_and_wait("mosquitto"), True),
    "mariadb-kill": (kill_and_wait("mariadb"), False),
    "api-kill": (kill_and_wait("api"), False),
    "apache-kill": (kill_and_wait("apache"), False),
    "prosody-frozen-30s": (freeze_prosody, False),
    "mariadb-down-60s": (mariadb_down, False),
}


def describe(events: dict[str, Event]) -> str:
    kinds: dict[str, int] = {}
    for event in events.values():
        kinds[event.type.value] = kinds.get(event.type.value, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def differences(stored: dict[str, Event], expected: dict[str, Event]) -> list[tuple[str, str]]:
    """Readable differences, each with its event type: missing, unexpected, changed."""
    out = [
        (expected[i].type.value, f"missing {expected[i].summary()}")
        for i in sorted(expected.keys() - stored.keys())
    ]
    out += [
        (stored[i].type.value, f"unexpected {stored[i].summary()}")
        for i in sorted(stored.keys() - expected.keys())
    ]
    out += [
        (
            stored[i].type.value,
            f"changed {i}: stored v{stored[i].version}, expected v{expected[i].version}",
        )
        for i in sorted(stored.keys() & expected.keys())
        if stored[i].to_dict() != expected[i].to_dict()
    ]
    return out


def in_session_order(journaled: list[Cam | Denm], published: list[MessageKey]) -> bool:
    """Whether the CAMs, and the DENMs, reached the detector in the order they were published."""
    taken = list(map(message_key, journaled))
    arrived = set(taken)
    for kind in ("c", "d"):
        got = [key for key in taken if key[0] == kind]
        sent = [key for key in published if key[0] == kind and key in arrived]
        if got != sent:
            return False
    return True


def denm_lead_s(journaled: list[Cam | Denm]) -> float:
    """How far, in trace seconds, a DENM ran ahead of the newest CAM the detector had taken."""
    lead_ms = 0
    newest_cam_ms: int | None = None
    for message in journaled:
        if isinstance(message, Cam):
            if newest_cam_ms is None or message.timestamp_ms > newest_cam_ms:
                newest_cam_ms = message.timestamp_ms
        elif newest_cam_ms is not None:
            lead_ms = max(lead_ms, message.timestamp_ms - newest_cam_ms)
    return lead_ms / 1000


def test_the_fault_free_run_stores_what_the_detection_core_makes_of_the_trace(
    reference: Outcome,
    trace: Path,
    offset_ms: int,
    report: Report,
) -> None:
    journaled = messages_of(reference.journaled)
    published = trace_messages(trace, offset_ms)
    assert sorted(map(message_key, journaled)) == sorted(published)
    assert in_session_order(journaled, published)
    expected = detect(reference.journaled, reference.settings)
    assert differences(reference.stored, expected) == []
    assert reference.stored, "the trace raised no event at all"
    report.add(
        f"fault-free: {len(published)} publications ({sum(k[0] == 'd' for k in published)}"
        f" DENMs) replayed in {reference.replay.elapsed_s:.1f} s; stored"
        f" {describe(reference.stored)}"
    )


@pytest.mark.parametrize("name", list(FAULTS))
def test_no_event_is_lost_duplicated_or_invented(
    name: str, reference: Outcome, trace: Path, offset_ms: int, speedup: float, report: Report
) -> None:
    fault, lossy = FAULTS[name]
    at = random_point(name)
    run = FaultRun(name)
    try:
        run.up()
        outcome = run.run(trace, offset_ms, speedup, fault, at)
    finally:
        run.down()
    log = "\n  ".join(outcome.fault_log)
    published = trace_messages(trace, offset_ms)
    journaled = messages_of(outcome.journaled)
    arrived = set(map(message_key, journaled))
    missing_denms = [key for key in published if key[0] == "d" and key not in arrived]
    lost_cams = [key for key in published if key[0] == "c" and key not in arrived]
    duplicates = len(journaled) - len(arrived)
    # What the detection core makes of exactly what the gateway took, once each.
    own_inputs = detect(outcome.journaled, outcome.settings)
    wrong = differences(outcome.stored, own_inputs)
    changed = differences(outcome.stored, reference.stored)
    # Each session delivers in publication order; only where DENMs fall among CAMs may vary.
    ordered = in_session_order(journaled, published)
    # A DENM moves the detection clock; when the CAM session lags the DENM session (a restarted
    # gateway gets the queued DENMs before the CAM backlog; a loaded one lags), it moves it ahead
    # of CAMs still on their way, and a jam's check or clear then falls elsewhere among them.
    # Where a DENM outran the CAMs in either run, jams are held to the detection of the
    # journaled inputs in the order taken; otherwise to the fault-free run as well.
    lead_s = denm_lead_s(journaled)
    reference_lead_s = denm_lead_s(messages_of(reference.journaled))
    jams_changed = [text for kind, text in changed if kind == EventType.TRAFFIC_JAM.value]
    others_changed = [text for kind, text in changed if kind != EventType.TRAFFIC_JAM.value]
    restarted = {program: n for program, n in outcome.restarts.items() if n}
    report.add(
        f"{name} at {at:.0%} of the replay: {len(missing_denms)} DENMs missing,"
        f" {len(lost_cams)} CAMs lost in flight, {duplicates} messages detected twice,"
        f" {len(wrong)} events unlike the detection of the journaled inputs,"
        f" {len(others_changed)} accidents, hazards or zone crossings and {len(jams_changed)}"
        f" jam versions differ from the fault-free run (DENMs ran up to {lead_s:.1f} s of"
        f" trace time ahead of the CAMs, fault-free {reference_lead_s:.1f} s); restarts"
        f" {restarted}\n  {log}"
    )
    assert ordered, "a session delivered its messages out of publication order"
    assert missing_denms == [], f"DENMs acknowledged by the broker but never detected:\n  {log}"
    assert duplicates == 0, f"{duplicates} messages were detected twice"
    assert wrong == [], f"fault log:\n  {log}"
    if lossy and lost_cams:
        return  # the allowance of the module docstring, stated by the figures above
    assert lost_cams == [], f"{len(lost_cams)} CAMs lost although {name} should lose none"
    assert others_changed == [], f"fault log:\n  {log}"
    if lead_s == 0 and reference_lead_s == 0:
        assert jams_changed == [], f"jams differ though no DENM outran the CAMs:\n  {log}"
