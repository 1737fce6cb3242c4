"""MqttClient for synchronous code: a publisher driven from ordinary threads.

The simulator and `roadwatch replay` run in plain threads; `BlockingPublisher` gives them the
project's one MQTT client (client.py) running on an event loop in a background thread, with
the same behaviour: reconnection for ever, QoS 1 publishes kept and resent until acknowledged,
QoS 0 publishes kept while the broker is away (up to `offline_limit`).

Publishing is cheap at simulator rates (tens of thousands of messages per second): `publish`
appends to a deque and wakes the loop only when it is not already awake, so one wake-up (a
write to the loop's self-pipe) carries a whole batch. Several publishers may share one
`EventLoopThread` (vehicle mode connects hundreds of vehicles).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from roadwatch.adapters.mqtt.client import (
    ClientStats,
    MqttClient,
    MqttEndpoint,
    MqttError,
    MqttPublishRefused,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# QoS 0 publishes kept while the broker is away; the services choose their own.
DEFAULT_OFFLINE_LIMIT = 10_000
# QoS 1 publishes not yet acknowledged beyond which `publish` waits for the broker: memory
# stays bounded through a long outage, and nothing is dropped.
DEFAULT_MAX_UNACKNOWLEDGED = 100_000
# Messages handed to the loop but not yet taken by it beyond which `publish` waits (the loop
# or the socket cannot keep up with the caller).
MAX_QUEUED = 50_000
# The loop takes this many queued messages before letting the client write them out.
PUMP_BATCH = 2_000
# The client gets this long to end its connection loop once closed.
CLOSE_WAIT_S = 2.0
# Polling while the caller waits for the loop (acknowledgements, room in the queue).
POLL_MIN_S = 0.0005
POLL_MAX_S = 0.02
# Dropped QoS 0 publishes are logged at most this often while they last.
DROP_LOG_INTERVAL_S = 10.0
# Refused QoS 1 publishes remembered for their `Delivery.wait` (the ACL refuses rarely).
MAX_REMEMBERED_REFUSALS = 1_000


class EventLoopThread:
    """An asyncio event loop running in a daemon thread, until `stop()`."""

    def __init__(self, name: str = "mqtt-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; start it first."""
        if self._loop is None:
            raise MqttError(f"{self.name}: the event loop thread is not started")
        return self._loop

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the thread (once) and return its loop."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run, args=(loop,), name=self.name, daemon=True)
            self._loop, self._thread = loop, thread
            thread.start()
        return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
        """Run `coroutine` on the loop and return its result; TimeoutError cancels it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_WAIT_S + 1)
        self._loop = self._thread = None


class Delivery:
    """A QoS 1 publish: done once the broker acknowledged it (or refused it)."""

    __slots__ = ("_publisher", "seq")

    def __init__(self, publisher: BlockingPublisher, seq: int) -> None:
        self._publisher = publisher
        self.seq = seq

    def done(self) -> bool:
        """Tell whether the broker has answered this publish."""
        return self._publisher._settled >= self.seq

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the broker's answer; raise MqttPublishRefused, or MqttError on timeout.

        Answers count in publishing order: this returns once every earlier QoS 1 publish of
        the same publisher is answered too (the broker answers in order anyway).
        """
        publisher = self._publisher
        if not publisher._wait_settled(self.seq, timeout_s):
            raise MqttError(f"{publisher.name}: no acknowledgement in {timeout_s} s")
        refusal = publisher._refused.get(self.seq)
        if refusal is not None:
            raise refusal


class BlockingPublisher:
    """One MqttClient publishing for synchronous callers; start(), publish(), stop().

    `publish` may be called from any thread; waiting calls (`Delivery.wait`, `flush`,
    `stop`) must not be made on the loop's own thread.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        name: str = "publisher",
        offline_limit: int = DEFAULT_OFFLINE_LIMIT,
        max_unacknowledged: int = DEFAULT_MAX_UNACKNOWLEDGED,
        loop_thread: EventLoopThread | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.offline_limit = offline_limit
        self._max_unacknowledged = max(1, max_unacknowledged)
        self._client = MqttClient(endpoint, name=name, offline_limit=offline_limit)
        self._own_thread = loop_thread is None
        self._thread = loop_thread or EventLoopThread(f"{name}-loop")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Handed from the callers' threads to the loop: (topic, payload, qos, QoS 1 sequence).
        self._queue: deque[tuple[str, bytes, int, int]] = deque()
        self._wake_pending = False
        self._wakeup = asyncio.Event()
        self.wakeups = 0  # how many times callers woke the loop (a batch each)
        # QoS 1 publishes are numbered from 1; `_settled` is the highest number up to which
        # the broker answered every one.
        self._qos1_lock = threading.Lock()
        self._qos1_seq = 0
        self._settled = 0
        self._answered_early: set[int] = set()
        self._refused: dict[int, MqttError] = {}
        self.failed_publishes = 0  # messages the client could not encode (a bad topic)
        self._run_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._started = False
        self._stopped = False
        self._drops_logged = 0
        self._drop_logged_at = 0.0

    # -- figures ----------------------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        """The client's figures (connections, published, acknowledged, resent, dropped)."""
        return self._client.stats

    def is_connected(self) -> bool:
        """Tell whether the broker accepted the current connection."""
        return self._client.is_connected()

    @property
    def connects(self) -> int:
        """Connections the broker accepted so far."""
        return self._client.stats.connects

    @property
    def reconnects(self) -> int:
        """Connections after the first one."""
        return max(0, self._client.stats.connects - 1)

    @property
    def queued(self) -> int:
        """Publishes handed over but not yet taken by the loop."""
        return len(self._queue)

    @property
    def offline_backlog(self) -> int:
        """QoS 0 publishes kept until the broker is back."""
        return self._client.offline_backlog

    @property
    def unacknowledged(self) -> int:
        """QoS 1 publishes the broker has not answered yet."""
        return self._qos1_seq - self._settled

    @property
    def dropped(self) -> int:
        """QoS 0 publishes dropped while the broker was away, beyond `offline_limit`."""
        return self._client.stats.dropped_offline

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Connect; raise MqttAuthError at once on refused credentials, MqttError on timeout."""
        if self._started:
            raise MqttError(f"{self.name}: already started")
        self._started = True
        self._loop = self._thread.start()
        try:
            self._thread.call(self._open(timeout_s), timeout_s + CLOSE_WAIT_S + 1)
        except BaseException:
            self._stopped = True
            if self._own_thread:
                self._thread.stop()
            raise

    async def _open(self, timeout_s: float) -> None:
        client = self._client
        run = asyncio.ensure_future(client.run())
        run.add_done_callback(self._task_ended)
        self._run_task = run
        self._pump_task = asyncio.ensure_future(self._pump())
        self._pump_task.add_done_callback(self._task_ended)
        connected = asyncio.ensure_future(client.connected.wait())
        await asyncio.wait({connected, run}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if connected.done():
            return
        connected.cancel()
        await self._shutdown()
        if self._failed is not None:
            raise self._failed
        raise MqttError(
            f"{self.name}: no connection to MQTT {self.endpoint.host}:{self.endpoint.port}"
            f" in {timeout_s:.0f} s"
        )

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Refused credentials (the client logged why): publishing can only fail from now.
            self._failed = exc
            if self._client.stats.connects:
                log.error("%s: MQTT publishing stopped: %s", self.name, exc)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send what is left (QoS 1 acknowledged) within `timeout_s`, then disconnect."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        try:
            if self._failed is None:
                self._flush(timeout_s)
        except MqttError as exc:
            log.warning("%s: stopping anyway: %s", self.name, exc)
        finally:
            try:
                self._thread.call(self._shutdown(), CLOSE_WAIT_S + 5)
            except TimeoutError:
                log.warning("%s: the MQTT client did not close in time", self.name)
            finally:
                if self._own_thread:
                    self._thread.stop()

    async def _shutdown(self) -> None:
        await self._client.close()
        run = self._run_task
        if run is not None and not run.done():
            await asyncio.wait({run}, timeout=CLOSE_WAIT_S)
            if not run.done():
                run.cancel()  # still trying to reach the broker
                await asyncio.wait({run})
        pump = self._pump_task
        if pump is not None:
            pump.cancel()
            await asyncio.wait({pump})

    # -- publishing -------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> Delivery | None:
        """Publish one message; for QoS 1 return its Delivery.

        Returns at once, unless the loop is far behind or too many QoS 1 publishes wait for
        the broker: then it waits for them, for as long as the broker is away.
        """
        if self._failed is not None:
            raise MqttError(f"{self.name}: cannot publish: {self._failed}") from self._failed
        if not self._started or self._stopped:
            raise MqttError(f"{self.name}: not running")
        queue = self._queue
        delivery = None
        if qos == 0:
            queue.append((topic, payload, 0, 0))
        elif qos == 1:
            if self._qos1_seq - self._settled >= self._max_unacknowledged:
                self._wait_for_broker()
            with self._qos1_lock:
                self._qos1_seq += 1
                delivery = Delivery(self, self._qos1_seq)
                queue.append((topic, payload, 1, self._qos1_seq))
        else:
            raise ValueError("RoadWatch publishes at QoS 0 or 1")
        if not self._wake_pending:
            self._wake_pending = True
            self.wakeups += 1
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wakeup.set)
        if len(queue) >= MAX_QUEUED:
            self._wait_for_room()
        return delivery

    async def _pump(self) -> None:
        """Hand what the callers queued to the client, batch by batch, as the socket allows."""
        client = self._client
        queue = self._queue
        wakeup = self._wakeup
        settle = self._settle
        while True:
            await wakeup.wait()
            wakeup.clear()
            # Cleared before taking: a message queued from now on wakes the loop again.
            self._wake_pending = False
            while queue:
                for _ in range(min(len(queue), PUMP_BATCH)):
                    topic, payload, qos, seq = queue.popleft()
                    try:
                        done = client.publish(topic, payload, qos)
                    except (UnicodeError, ValueError, OverflowError) as exc:
                        self._unpublishable(topic, seq, exc)
                        continue
                    if done is not None:
                        done.add_done_callback(functools.partial(settle, seq))
                await client.drain()
                if queue:
                    await asyncio.sleep(0)  # the client writes this batch out
            if client.stats.dropped_offline > self._drops_logged:
                self._log_drops()

    def _unpublishable(self, topic: str, seq: int, exc: Exception) -> None:
        self.failed_publishes += 1
        if self.failed_publishes == 1 or self.failed_publishes % 1000 == 0:
            log.error("%s: cannot publish to %.80r: %s", self.name, topic, exc)
        if seq:
            self._refuse(seq, MqttError(f"cannot publish to {topic!r}: {exc}"))
            self._settle_seq(seq)

    def _refuse(self, seq: int, exc: MqttError) -> None:
        self._refused[seq] = exc
        if len(self._refused) > MAX_REMEMBERED_REFUSALS:
            del self._refused[next(iter(self._refused))]

    def _settle(self, seq: int, done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            exc = done.exception()
            if isinstance(exc, MqttPublishRefused):
                self._refuse(seq, exc)
        self._settle_seq(seq)

    def _settle_seq(self, seq: int) -> None:
        if seq != self._settled + 1:
            self._answered_early.add(seq)  # acknowledged out of order (after a resend)
            return
        settled = seq
        early = self._answered_early
        while settled + 1 in early:
            settled += 1
            early.remove(settled)
        self._settled = settled

    def _log_drops(self) -> None:
        now = time.monotonic()
        if now - self._drop_logged_at < DROP_LOG_INTERVAL_S:
            return
        self._drop_logged_at = now
        self._drops_logged = self._client.stats.dropped_offline
        log.warning(
            "%s: broker away: %d QoS 0 publications dropped so far, beyond the %d kept",
            self.name,
            self._drops_logged,
            self.offline_limit,
        )

    # -- waiting ----------------------------------------------------------------------------

    def _poll(self, condition: Callable[[], bool], timeout_s: float | None) -> bool:
        """Sleep until `condition()` holds, or the client failed; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = POLL_MIN_S
        while not condition():
            if self._failed is not None:
                raise MqttError(f"{self.name}: {self._failed}") from self._failed
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)
        return True

    def _wait_settled(self, seq: int, timeout_s: float | None) -> bool:
        return self._poll(lambda: self._settled >= seq, timeout_s)

    def _wait_for_room(self) -> None:
        self._poll(lambda: len(self._queue) < MAX_QUEUED // 2, None)

    def _wait_for_broker(self) -> None:
        log.warning(
            "%s: %d QoS 1 publications wait for the broker's acknowledgement; waiting",
            self.name,
            self.unacknowledged,
        )
        started = time.monotonic()
        self._poll(lambda: self.unacknowledged < self._max_unacknowledged // 2, None)
        log.info("%s: the broker caught up after %.1f s", self.name, time.monotonic() - started)

    def flush(self, timeout_s: float) -> None:
        """Wait until everything published so far has left: QoS 0 sent, QoS 1 acknowledged.

        Raise MqttError when that takes longer than `timeout_s` (the broker stays away).
        """
        if not self._started or self._stopped:
            raise MqttError(f"{self.name}: not running")
        self._flush(timeout_s)

    def _flush(self, timeout_s: float) -> None:
        target = self._qos1_seq
        try:
            self._thread.call(self._until_sent(target), timeout_s)
        except TimeoutError:
            raise MqttError(
                f"{self.name}: after {timeout_s:g} s, {self.unacknowledged} QoS 1 publications"
                f" are still unacknowledged and {self.offline_backlog + self.queued} QoS 0"
                f" ones unsent (MQTT {self.endpoint.host}:{self.endpoint.port}"
                f" {'connected' if self.is_connected() else 'unreachable'})"
            ) from None
        if self._failed is not None:
            raise MqttError(f"{self.name}: {self._failed}") from self._failed

    async def _until_sent(self, qos1_target: int) -> None:
        # On the loop, between two batches of the pump: what it took is in the client.
        client = self._client
        pause = POLL_MIN_S
        while self._queue or client.offline_backlog or self._settled < qos1_target:
            if self._failed is not None:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)
