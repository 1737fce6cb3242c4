"""One candidate on one workload, in a process of its own: its CPU time is its stack's alone.

The parent talks to it over a pipe: the child says ("ready", None) once connected (and
subscribed), waits for "go" when it publishes, and ends with ("done", Outcome),
("skipped", why) or ("failed", why).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from itertools import cycle, islice
from multiprocessing.connection import Connection

import orjson

from bench.mqtt_stacks.broker import RECEIVE_MAXIMUM
from bench.mqtt_stacks.candidates import Candidate, Unavailable, by_key
from bench.mqtt_stacks.wire import QUIET_S, cam_messages

# Publishing goes in batches of this many messages; the candidate's pace() runs in between.
BATCH = 50
# QoS 1 messages a publisher keeps unacknowledged: one below the broker's Receive Maximum,
# because gmqtt 0.8 only uses packet ids 1 … Receive Maximum - 1 (and raises beyond).
PUBLISH_WINDOW = RECEIVE_MAXIMUM - 1
POLL_S = 0.01
FIRST_MESSAGE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Workload:
    name: str
    receive: bool  # else publish
    qos: int
    count: int


@dataclass(frozen=True)
class Outcome:
    """Messages received or published, over how long, and the process's CPU time meanwhile."""

    handled: int
    elapsed_s: float
    cpu_s: float


class _Tally:
    """The callback every candidate is given: decode the CAM, count it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_end = 0.0

    def on_message(self, topic: str, payload: bytes) -> None:
        orjson.loads(payload)
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
        if self.count == self.expected:
            self.last = time.perf_counter()
            self.cpu_end = time.process_time()


async def _receive(
    candidate: Candidate, workload: Workload, port: int, pipe: Connection
) -> Outcome:
    tally = _Tally(workload.count)
    client_id = f"bench-{candidate.key}-{os.getpid()}"
    await candidate.start(port, client_id, tally.on_message, workload.qos)
    cpu_began = time.process_time()
    pipe.send(("ready", None))
    began = moved_at = time.perf_counter()
    seen = 0
    while not tally.last:
        await asyncio.sleep(POLL_S)
        now = time.perf_counter()
        if tally.count != seen:
            seen = tally.count
            moved_at = now
        elif (seen and now - moved_at > QUIET_S) or (
            not seen and now - began > FIRST_MESSAGE_TIMEOUT_S
        ):
            # Some never came: the run ended when the last one did.
            tally.last = moved_at
            tally.cpu_end = time.process_time()
    await candidate.close()
    elapsed = tally.last - tally.first if tally.count else 0.0
    return Outcome(tally.count, elapsed, tally.cpu_end - cpu_began)


async def _publish(
    candidate: Candidate, workload: Workload, port: int, pipe: Connection
) -> Outcome:
    count, qos = workload.count, workload.qos
    messages = list(islice(cycle(cam_messages()), count))
    await candidate.start(port, f"bench-{candidate.key}-{os.getpid()}", None, qos)
    pipe.send(("ready", None))
    pipe.recv()  # go
    publish = candidate.publish
    cpu_began = time.process_time()
    began = time.perf_counter()
    for start in range(0, count, BATCH):
        if qos and start + BATCH > PUBLISH_WINDOW:
            await candidate.wait_finished(start + BATCH - PUBLISH_WINDOW)
        await candidate.pace()
        for topic, payload in messages[start : start + BATCH]:
            publish(topic, payload, qos)
    await candidate.flush(count, qos)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    await candidate.close()
    return Outcome(count, elapsed, cpu)


def child_main(key: str, workload: Workload, port: int, pipe: Connection) -> None:
    """Run candidate `key` on `workload` against the broker on `port`; report on `pipe`."""
    # Ctrl-C reaches the whole process group: the parent decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    candidate = by_key(key)()
    measure = _receive if workload.receive else _publish
    try:
        outcome = asyncio.run(measure(candidate, workload, port, pipe))
    except Unavailable as exc:
        pipe.send(("skipped", str(exc)))
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
    else:
        pipe.send(("done", outcome))
