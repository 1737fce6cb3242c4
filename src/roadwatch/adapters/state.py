"""The gateway's detection state on disk: an atomic snapshot plus a journal of what came since.

Layout under `run_dir/gateway/`:

- `state.json`: the last snapshot, replaced atomically (temporary file, fsync, rename, fsync of
  the folder). It names the first journal segment that follows it.
- `journal-NNNNNNNNNNNN.jsonl`: append-only segments, one JSON array per line, holding every
  input the detector accepted after that snapshot: messages (`c` CAM, `d` DENM) and zone
  changes (`z`). They are written with plain `os.write`: once written, the operating system
  keeps them across a kill of the process (no fsync; a machine crash may lose the last ones).

- `archive/`: with `keep_journal` (the setting ROADWATCH_GATEWAY_KEEP_JOURNAL, for audits),
  the segments a snapshot made useless are moved here instead of being deleted.

A snapshot switches to a new segment at the very point it captures, so replaying the snapshot's
segments after it rebuilds the state exactly. Unreadable files are logged and skipped, never
fatal: a bad snapshot is ignored, a journal is read up to its first bad line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from roadwatch.domain.events import Event, InvalidEvent
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.zones import InvalidZone, Zone, zones_from_geojson, zones_to_geojson

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "state.json"
ARCHIVE_NAME = "archive"
SNAPSHOT_FORMAT = 1
_SEGMENT = re.compile(r"journal-(\d{12})\.jsonl")
_FILE_MODE = 0o600

# Journal record kinds.
CAM = "c"
DENM = "d"
ZONES = "z"

Record = Cam | Denm | list[Zone]


class StateError(Exception):
    """State cannot be written (the caller logs it and carries on)."""


def segment_name(segment: int) -> str:
    return f"journal-{segment:012d}.jsonl"


# -- journal records --------------------------------------------------------------------------


def encode_message(message: Cam | Denm) -> bytes:
    """Return one journal line for an accepted message."""
    if isinstance(message, Cam):
        record: list[Any] = [
            CAM,
            message.station_id,
            message.station_type,
            message.timestamp_ms,
            message.lat,
            message.lon,
            message.speed_kmh,
            message.heading_deg,
        ]
    else:
        record = [
            DENM,
            message.station_id,
            message.station_type,
            message.timestamp_ms,
            message.lat,
            message.lon,
            message.cause_code,
            message.sub_cause_code,
            None if message.termination is None else message.termination.value,
        ]
    return orjson.dumps(record) + b"\n"


def encode_zones(zones: Sequence[Zone]) -> bytes:
    """Return one journal line for a change of the zones in force."""
    return orjson.dumps([ZONES, zones_to_geojson(zones)]) + b"\n"


def decode_record(line: bytes) -> Record:
    """Read one journal line back; raise ValueError if it is not one."""
    try:
        item = orjson.loads(line)
        kind = item[0]
        if kind == CAM:
            _, station, station_type, t, lat, lon, speed, heading = item
            return Cam(
                _text(station), _int(station_type), _int(t), *_floats(lat, lon, speed, heading)
            )
        if kind == DENM:
            _, station, station_type, t, lat, lon, cause, sub, termination = item
            lat, lon = _floats(lat, lon)
            return Denm(
                _text(station),
                _int(station_type),
                _int(t),
                lat,
                lon,
                _int(cause),
                None if sub is None else _int(sub),
                None if termination is None else Termination(termination),
            )
        if kind == ZONES:
            return zones_from_geojson(item[1])
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"not a journal record: {exc}") from exc
    raise ValueError("not a journal record: unknown kind")


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("expected a string")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


def _floats(*values: Any) -> tuple[float, ...]:
    for value in values:
        if type(value) not in (int, float):
            raise TypeError("expected a number")
    return tuple(float(value) for value in values)


# -- the journal ------------------------------------------------------------------------------


@dataclass(slots=True)
class JournalStats:
    """Counters of the journal writer (they only grow)."""

    records: int = 0
    writes: int = 0
    bytes: int = 0
    errors: int = 0
    segments: int = 0


class Journal:
    """Appends records to the current segment; `flush` writes what was appended so far.

    Not thread-safe: the gateway calls it under its detector lock.
    """

    def __init__(self, directory: Path, segment: int) -> None:
        self.directory = directory
        self.segment = segment
        self.stats = JournalStats()
        self._buffer: list[bytes] = []
        self._fd = self._open(segment)

    @property
    def pending(self) -> int:
        """Count the records appended but not yet written."""
        return len(self._buffer)

    def append(self, record: bytes) -> None:
        self._buffer.append(record)

    def flush(self) -> None:
        """Write the appended records to the segment (kept by the OS if the process dies)."""
        buffer = self._buffer
        if not buffer:
            return
        data = b"".join(buffer) if len(buffer) > 1 else buffer[0]
        self.stats.records += len(buffer)
        buffer.clear()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.stats.errors += 1
            # Detection goes on: losing the journal only weakens crash recovery.
            if self.stats.errors == 1 or self.stats.errors % 1000 == 0:
                log.error(
                    "journal %s: write failed (%d so far): %s", self.path, self.stats.errors, exc
                )
            return
        self.stats.writes += 1
        self.stats.bytes += len(data)

    def rotate(self) -> int:
        """Flush, then continue in a new segment; return its number."""
        self.flush()
        os.close(self._fd)
        self.segment += 1
        self._fd = self._open(self.segment)
        return self.segment

    def close(self) -> None:
        self.flush()
        os.close(self._fd)
        self._fd = -1

    @property
    def path(self) -> Path:
        return self.directory / segment_name(self.segment)

    def _open(self, segment: int) -> int:
        self.stats.segments += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        return os.open(self.directory / segment_name(segment), flags, _FILE_MODE)


# -- the store --------------------------------------------------------------------------------


@dataclass(slots=True)
class LoadedState:
    """What a start finds on disk."""

    detector: dict[str, Any] | None = None
    # Events produced but not acknowledged by the XMPP server when the snapshot was taken.
    outbox: list[Event] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    # The segment that follows everything found: where the next journal starts.
    next_segment: int = 0
    snapshot_age_s: float | None = None
    problems: list[str] = field(default_factory=list)


class StateStore:
    """Reads and writes the snapshot and the journal segments in one folder."""

    def __init__(self, directory: Path, keep_journal: bool = False) -> None:
        self.directory = directory
        self.snapshot_path = directory / SNAPSHOT_NAME
        # Audits (the fault tests) keep every segment under archive/ instead of deleting it:
        # together they are exactly what the detector was fed, in order.
        self.keep_journal = keep_journal

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_NAME

    def load(self, now_s: float | None = None) -> LoadedState:
        """Read the snapshot and the journal after it; log and skip whatever is unreadable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        loaded = LoadedState()
        first_segment = 0
        try:
            raw = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raw = None
            loaded.problems.append(f"snapshot unreadable: {exc}")
        if raw is not None:
            try:
                first_segment = self._parse_snapshot(raw, loaded, now_s)
            except (orjson.JSONDecodeError, InvalidEvent, TypeError, ValueError, KeyError) as exc:
                loaded.problems.append(f"snapshot {self.snapshot_path} ignored: {exc}")
                loaded.detector = None
                loaded.outbox = []
        segments = self.segments()
        for segment in segments:
            if segment < first_segment:
                continue
            if not self._read_segment(segment, loaded):
                break
        loaded.next_segment = max([first_segment - 1, *segments], default=-1) + 1
        for problem in loaded.problems:
            log.warning("gateway state: %s", problem)
        return loaded

    def segments(self) -> list[int]:
        """Return the numbers of the journal segments present, in order."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_SEGMENT.fullmatch, names) if m is not None)

    def open_journal(self, segment: int) -> Journal:
        self.directory.mkdir(parents=True, exist_ok=True)
        return Journal(self.directory, segment)

    def save_snapshot(
        self, detector: dict[str, Any], outbox: Sequence[Event], segment: int, now_s: float
    ) -> int:
        """Replace the snapshot atomically; `segment` is the journal after it. Return its size."""
        data = orjson.dumps(
            {
                "format": SNAPSHOT_FORMAT,
                "saved_at": now_s,
                "journal_segment": segment,
                "outbox": [event.to_dict() for event in outbox],
                "detector": detector,
            }
        )
        tmp = self.snapshot_path.with_name(SNAPSHOT_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.snapshot_path)
            self._sync_directory()
        except OSError as exc:
            raise StateError(f"cannot write {self.snapshot_path}: {exc}") from exc
        return len(data)

    def remove_segments_before(self, segment: int) -> None:
        """Delete journal segments the snapshot already holds."""
        for old in self.segments():
            if old >= segment:
                break
            path = self.directory / segment_name(old)
            try:
                if self.keep_journal:
                    self.archive.mkdir(exist_ok=True)
                    path.replace(self.archive / path.name)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("cannot delete journal segment %d: %s", old, exc)

    def _parse_snapshot(self, raw: bytes, loaded: LoadedState, now_s: float | None) -> int:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("unknown format")
        segment = data["journal_segment"]
        if type(segment) is not int or segment < 0:
            raise ValueError("journal_segment must be a natural number")
        detector = data["detector"]
        if not isinstance(detector, dict):
            raise ValueError("detector state must be an object")
        loaded.outbox = [Event.from_dict(item) for item in data["outbox"]]
        loaded.detector = detector
        saved_at = data.get("saved_at")
        if now_s is not None and isinstance(saved_at, int | float):
            loaded.snapshot_age_s = max(0.0, now_s - float(saved_at))
        return segment

    def _read_segment(self, segment: int, loaded: LoadedState) -> bool:
        """Append the segment's records; return False at a bad line (nothing after is used)."""
        path = self.directory / segment_name(segment)
        try:
            data = path.read_bytes()
        except OSError as exc:
            loaded.problems.append(f"journal {path} unreadable, replay stops: {exc}")
            return False
        lines = data.split(b"\n")
        # Everything ends with a newline; a last piece without one was cut by a crash.
        torn = lines.pop()
        for number, line in enumerate(lines, start=1):
            try:
                loaded.records.append(decode_record(line))
            except (ValueError, InvalidZone) as exc:
                loaded.problems.append(f"journal {path} line {number} is bad, replay stops: {exc}")
                return False
        if torn:
            loaded.problems.append(f"journal {path} ends with a partial line, replay stops there")
            return False
        return True

    def _sync_directory(self) -> None:
        # The rename itself must reach the disk, or a machine crash could bring back the old file.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
