"""Journal stage: every accepted input is written before its events leave; snapshots cut it short.

The on-disk format is adapters/state.py's. Policy here: CAMs are journaled in batches; a DENM,
a zone change, and anything that produced an event are written at once, so an event never
leaves (and a QoS 1 DENM is never acknowledged to the broker) before its inputs are in the
journal. A snapshot, taken at a point of the event loop, switches the journal to a new
segment; once written, the older segments are deleted.

The periodic snapshot is written by a forked child process: fork() gives it a frozen copy of
the state in a few milliseconds (pages are shared until the parent changes them), and the
child builds, serialises and writes it on the other core. Copying a city's state on the event
loop instead held the loop 35 to 70 ms at 15,000 stations, and serialising it in a thread held
the interpreter as long again: every 5 s, a DENM arriving then waited as long.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from roadwatch.adapters.state import (
    Journal,
    JournalStats,
    LoadedState,
    StateError,
    StateStore,
    encode_message,
    encode_zones,
)
from roadwatch.domain.events import Event
from roadwatch.domain.messages import Cam, Denm
from roadwatch.domain.zones import Zone

log = logging.getLogger(__name__)

# CAMs are written every this many, or within JOURNAL_FLUSH_S when the stream pauses.
JOURNAL_BATCH = 256
JOURNAL_FLUSH_S = 0.005


@dataclass(slots=True)
class SnapshotStats:
    """Figures of the snapshots (they only grow, apart from the last_* values)."""

    saved: int = 0
    failures: int = 0
    last_bytes: int = 0
    last_duration_s: float = 0.0
    # How long the last capture held the event loop.
    last_capture_s: float = 0.0
    last_saved_at: float | None = None
    restored: bool = False
    replayed_records: int = 0
    replayed_events: int = 0
    resent_events: int = 0


@dataclass(slots=True)
class Capture:
    """A snapshot taken on the loop, to be written in a worker thread."""

    detector: dict[str, Any]
    outbox: list[Event]
    segment: int


@dataclass(frozen=True, slots=True)
class ForkedSnapshot:
    """A snapshot a child process is writing: its pid, the journal segment after it."""

    pid: int
    segment: int
    started: float

    def wait(self) -> int | None:
        """Block until the child has ended; its exit code (None if someone else reaped it)."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)


class StateKeeper:
    """The journal and the snapshots of one gateway (no store: nothing is kept)."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store
        self.journal: Journal | None = None
        self._journal_stats: JournalStats | None = None
        self.stats = SnapshotStats()
        # Serialises snapshot writes, which run in worker threads.
        self._save_lock = threading.Lock()
        self._saved_segment = -1
        # Journal records and acknowledgements at the last capture: unchanged means nothing new.
        self._at_last_capture: tuple[int, int | None] = (-1, None)

    @property
    def journal_stats(self) -> JournalStats | None:
        """The journal's figures since it was opened (kept once it is closed)."""
        return self._journal_stats

    def load(self) -> LoadedState | None:
        """Read the saved snapshot and journal (None without a store)."""
        return None if self.store is None else self.store.load(time.time())

    def open(self, next_segment: int) -> None:
        if self.store is not None:
            self.journal = self.store.open_journal(next_segment)
            self._journal_stats = self.journal.stats

    def record(self, message: Cam | Denm, urgent: bool) -> None:
        """Journal an accepted message; `urgent` writes it (and what waits) at once."""
        journal = self.journal
        if journal is not None:
            journal.append(encode_message(message))
            if urgent or journal.pending >= JOURNAL_BATCH:
                journal.flush()

    def record_zones(self, zones: list[Zone]) -> None:
        journal = self.journal
        if journal is not None:
            journal.append(encode_zones(zones))
            journal.flush()

    def flush(self) -> None:
        """Write the batched records (called every few milliseconds)."""
        journal = self.journal
        if journal is not None and journal.pending:
            journal.flush()

    def capture(
        self,
        detector_state: Callable[[], dict[str, Any]],
        outbox: list[Event],
        acked: int | None,
        force: bool,
    ) -> Capture | None:
        """Snapshot the state now, switching the journal to a new segment.

        `detector_state` is called only when something changed since the last capture (or
        `force`); None is returned otherwise.
        """
        journal = self.journal
        if journal is None or not self._changed_since_last(journal, acked, force):
            return None
        started = time.perf_counter()
        # The copy allocates a lot at once: collections would multiply the time the loop is
        # held, for garbage that cannot exist yet.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            segment = journal.rotate()
            capture = Capture(detector_state(), outbox, segment)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.stats.last_capture_s = time.perf_counter() - started
        return capture

    def fork_snapshot(
        self,
        detector_state: Callable[[], dict[str, Any]],
        outbox: list[Event],
        acked: int | None,
    ) -> ForkedSnapshot | None:
        """Switch the journal to a new segment and fork a child that writes the snapshot.

        None when nothing changed since the last snapshot, or without a store. Call
        `forked_done` with `ForkedSnapshot.wait()`'s exit code once the child has ended.
        """
        journal, store = self.journal, self.store
        if journal is None or store is None or not self._changed_since_last(journal, acked):
            return None
        started = time.perf_counter()
        segment = journal.rotate()
        pid = os.fork()
        if pid == 0:
            _write_and_exit(store, detector_state, outbox, segment)
        self.stats.last_capture_s = time.perf_counter() - started
        return ForkedSnapshot(pid, segment, started)

    def forked_done(self, snapshot: ForkedSnapshot, exit_code: int | None) -> None:
        """Account for a forked snapshot that ended; drop the journal it makes useless."""
        store = self.store
        if store is None:
            return
        if exit_code != 0:
            self.stats.failures += 1
            log.error(
                "gateway state: the snapshot child %d ended with %s (the journal is kept)",
                snapshot.pid,
                exit_code,
            )
            return
        size = None
        with contextlib.suppress(OSError):
            size = store.snapshot_path.stat().st_size
        with self._save_lock:
            self._saved(store, snapshot.segment, size, snapshot.started)

    def write(self, capture: Capture | None) -> None:
        """Write a captured snapshot atomically, then drop the journal it makes useless."""
        store = self.store
        if capture is None or store is None:
            return
        with self._save_lock:
            if capture.segment <= self._saved_segment:
                return  # a newer snapshot is already on disk
            started = time.perf_counter()
            try:
                size = store.save_snapshot(
                    capture.detector, capture.outbox, capture.segment, time.time()
                )
            except StateError as exc:
                self.stats.failures += 1
                log.error("gateway state: %s (the journal is kept)", exc)
                return
            self._saved(store, capture.segment, size, started)

    def _changed_since_last(self, journal: Journal, acked: int | None, force: bool = False) -> bool:
        """Whether a snapshot is due: new records or acknowledgements since the last one."""
        mark = (journal.stats.records + journal.pending, acked)
        if not force and mark == self._at_last_capture:
            return False
        self._at_last_capture = mark
        return True

    def _saved(self, store: StateStore, segment: int, size: int | None, started: float) -> None:
        """A snapshot holding the journal before `segment` is on disk (under `_save_lock`)."""
        if segment <= self._saved_segment:
            return  # a newer snapshot is already on disk
        self._saved_segment = segment
        store.remove_segments_before(segment)
        stats = self.stats
        stats.saved += 1
        if size is not None:
            stats.last_bytes = size
        stats.last_duration_s = time.perf_counter() - started
        stats.last_saved_at = time.time()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None


def _write_and_exit(
    store: StateStore,
    detector_state: Callable[[], dict[str, Any]],
    outbox: list[Event],
    segment: int,
) -> NoReturn:
    """In the forked child: write the snapshot, then leave at once (exit code 0 when done).

    os._exit skips every handler inherited from the parent: nothing of the parent's (sockets,
    journal, threads) is touched here. No logging either: the parent reports the outcome.
    """
    code = 1
    try:
        gc.disable()  # a short-lived copy: collections would only cost time
        store.save_snapshot(detector_state(), outbox, segment, time.time())
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"gateway state: snapshot not written: {exc!r}\n".encode())
    finally:
        os._exit(code)
