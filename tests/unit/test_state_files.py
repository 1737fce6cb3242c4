"""The gateway's state files: atomic snapshot, journal append and replay, damaged files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from roadwatch.adapters.state import (
    SNAPSHOT_NAME,
    Journal,
    StateError,
    StateStore,
    decode_record,
    encode_message,
    encode_zones,
    segment_name,
)
from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.domain.messages import Cam, Denm, Termination
from roadwatch.domain.zones import Zone

T0 = 1_700_000_000_000
RING = ((4.0, 49.0), (4.01, 49.0), (4.01, 49.01), (4.0, 49.01), (4.0, 49.0))
ZONE = Zone("centre", "Centre « ville »", ((RING,),), hysteresis_m=5.0)
CAM = Cam("car-1", 5, T0, 49.2536123456789, 4.034, 42.5, 359.9)
DENM = Denm("rsu_7", 15, T0 + 1, -33.9, 151.2, 3, 4, Termination.NEGATION)
EVENT = Event(
    id="01HF7YAT00C9XWPHQSJ0220S3D",
    type=EventType.HAZARD,
    status=EventStatus.ACTIVE,
    version=2,
    started_ms=T0,
    updated_ms=T0 + 5,
    ended_ms=None,
    lat=49.27,
    lon=4.05,
    cause_code=3,
    station_ids=("a", "b"),
    details={"cause_name": "roadworks", "sub_cause_code": None, "reporter_count": 2},
)


def write_journal(directory: Path, segment: int, *records: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / segment_name(segment)).open("ab") as out:
        for record in records:
            out.write(record)


# -- records ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [CAM, DENM, Denm("x", 5, T0, 0.0, -180.0, 2, None, None), Cam("o-p", 5, 0, 90, 180, 0, 0)],
    ids=repr,
)
def test_a_message_comes_back_from_the_journal_unchanged(message: Cam | Denm) -> None:
    line = encode_message(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line[:-1]) == message


def test_zones_come_back_from_the_journal_unchanged() -> None:
    [zone] = decode_record(encode_zones([ZONE])[:-1])  # type: ignore[misc]
    assert zone == ZONE
    assert decode_record(encode_zones([])[:-1]) == []


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"{}",
        b"[]",
        b'["x", 1]',
        b'["c", "car", 5, 1, 2.0]',
        b'["c", "car", "5", 1, 2.0, 3.0, 4.0, 5.0]',
        b'["c", "car", 5, 1.5, 2.0, 3.0, 4.0, 5.0]',
        b'["d", "car", 5, 1, 2.0, 3.0, 2, null, "maybe"]',
        b'["z", {"type": "FeatureCollection", "features": [{}]}]',
        b'["c", "car", 5, 1, 2.0, 3.0, 4.0, 5.0',
    ],
)
def test_a_bad_record_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="journal record"):
        decode_record(line)


# -- the journal ------------------------------------------------------------------------------


def test_records_reach_the_file_only_when_flushed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 0)
    journal.append(encode_message(CAM))
    journal.append(encode_message(DENM))
    assert journal.pending == 2
    assert (tmp_path / segment_name(0)).read_bytes() == b""
    journal.flush()
    assert journal.pending == 0
    assert (tmp_path / segment_name(0)).read_bytes().count(b"\n") == 2
    assert (journal.stats.records, journal.stats.writes) == (2, 1)
    journal.flush()
    assert journal.stats.writes == 1
    journal.close()


def test_rotation_flushes_and_continues_in_the_next_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 4)
    journal.append(encode_message(CAM))
    assert journal.rotate() == 5
    journal.append(encode_message(DENM))
    journal.close()
    assert StateStore(tmp_path).segments() == [4, 5]
    assert (tmp_path / segment_name(4)).read_bytes() == encode_message(CAM)
    assert (tmp_path / segment_name(5)).read_bytes() == encode_message(DENM)


def test_written_records_survive_a_kill_of_the_writer(tmp_path: Path) -> None:
    script = f"""
import os, signal
from pathlib import Path
from roadwatch.adapters.state import Journal, encode_message
from roadwatch.domain.messages import Cam
journal = Journal(Path({str(tmp_path)!r}), 0)
for i in range(1000):
    journal.append(encode_message(Cam("car", 5, {T0} + i, 49.0, 4.0, 50.0, 90.0)))
journal.flush()
journal.append(encode_message(Cam("car", 5, {T0 + 5000}, 49.0, 4.0, 50.0, 90.0)))
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert result.returncode == -9
    loaded = StateStore(tmp_path).load()
    assert len(loaded.records) == 1000  # written ones kept, the unflushed one lost
    assert loaded.problems == []


# -- the store --------------------------------------------------------------------------------


def test_an_empty_folder_loads_as_nothing(tmp_path: Path) -> None:
    loaded = StateStore(tmp_path / "gateway").load()
    assert loaded.detector is None
    assert loaded.records == []
    assert loaded.next_segment == 0
    assert (tmp_path / "gateway").is_dir()


def test_a_snapshot_round_trips_with_its_outbox(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    size = store.save_snapshot({"clock_ms": T0, "nested": [1, 2.5, None]}, [EVENT], 3, 1000.0)
    assert size == (tmp_path / SNAPSHOT_NAME).stat().st_size
    assert not list(tmp_path.glob("*.tmp"))
    loaded = store.load(now_s=1012.5)
    assert loaded.detector == {"clock_ms": T0, "nested": [1, 2.5, None]}
    assert loaded.outbox == [EVENT]
    assert loaded.snapshot_age_s == 12.5
    assert loaded.next_segment == 3
    assert (tmp_path / SNAPSHOT_NAME).stat().st_mode & 0o777 == 0o600


def test_the_journal_after_the_snapshot_is_replayed_in_order(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    write_journal(tmp_path, 1, encode_message(Cam("old", 5, T0, 0, 0, 0, 0)))
    store.save_snapshot({}, [], 2, 0.0)
    write_journal(tmp_path, 2, encode_message(CAM), encode_zones([ZONE]))
    write_journal(tmp_path, 3, encode_message(DENM))
    loaded = store.load()
    assert loaded.records == [CAM, [ZONE], DENM]
    assert loaded.next_segment == 4
    store.remove_segments_before(3)
    assert store.segments() == [3]


def test_a_torn_last_line_ends_the_replay_there(tmp_path: Path) -> None:
    line = encode_message(DENM)
    write_journal(tmp_path, 0, encode_message(CAM), line[: len(line) // 2])
    loaded = StateStore(tmp_path).load()
    assert loaded.records == [CAM]
    assert any("partial line" in problem for problem in loaded.problems)


def test_a_bad_line_ends_the_replay_even_across_segments(tmp_path: Path) -> None:
    write_journal(tmp_path, 0, encode_message(CAM), b"garbage\n", encode_message(DENM))
    write_journal(tmp_path, 1, encode_message(DENM))
    loaded = StateStore(tmp_path).load()
    assert loaded.records == [CAM]
    assert any("line 2 is bad" in problem for problem in loaded.problems)
    assert loaded.next_segment == 2  # a new journal never appends to a damaged one


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"format": 99}',
        b'{"format": 1, "journal_segment": -1, "detector": {}, "outbox": []}',
        b'{"format": 1, "journal_segment": 0, "detector": [], "outbox": []}',
        b'{"format": 1, "journal_segment": 0, "detector": {}, "outbox": [{"id": 1}]}',
        b'{"format": 1, "journal_segment": 0, "detector": {}}',
    ],
)
def test_a_damaged_snapshot_is_ignored_and_the_journal_still_read(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / SNAPSHOT_NAME).write_bytes(content)
    write_journal(tmp_path, 0, encode_message(CAM))
    loaded = StateStore(tmp_path).load()
    assert loaded.detector is None
    assert loaded.outbox == []
    assert loaded.records == [CAM]
    assert any("snapshot" in problem for problem in loaded.problems)


def test_a_leftover_temporary_snapshot_is_ignored(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_snapshot({"good": True}, [], 0, 0.0)
    (tmp_path / (SNAPSHOT_NAME + ".tmp")).write_bytes(b'{"half": ')
    assert store.load().detector == {"good": True}
    store.save_snapshot({"good": 2}, [], 1, 0.0)
    assert store.load().detector == {"good": 2}


def test_a_snapshot_that_cannot_be_written_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(StateError, match="cannot write"):
        StateStore(blocker).save_snapshot({}, [], 0, 0.0)


def test_an_unreadable_journal_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / segment_name(0)).mkdir()  # a folder where a segment should be
    loaded = StateStore(tmp_path).load()
    assert loaded.records == []
    assert any("unreadable" in problem for problem in loaded.problems)


def test_journal_files_are_private(tmp_path: Path) -> None:
    Journal(tmp_path, 0).close()
    assert os.stat(tmp_path / segment_name(0)).st_mode & 0o777 == 0o600
    assert orjson.loads(encode_message(CAM))[0] == "c"
