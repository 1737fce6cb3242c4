"""Saved detector state: the one rule by which every detector writes and reads its snapshot.

A snapshot is a JSON object: a `format` number, then the detector's state as plain JSON values
(the whole detector's holds each sub-detector's own snapshot). Each detector says what its
state is in one place, `_state()` and `_from_state()` side by side, under its `SNAPSHOT`
format; `Snapshotting` does the rest the same way for all of them:

- `snapshot()` writes the state under the current format number;
- `restore()` refuses anything but a format it knows, upgrades an older one step by step
  through the format's migrations, builds a fresh detector from it, and only then takes that
  detector's state: a refused snapshot leaves the detector as it was.

Changing what a detector saves therefore means: raise its format number and add a migration
from the number before, so that state files written earlier still load after an upgrade
(tests/unit/test_snapshot_compatibility.py keeps such a file of format 1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

# Turns the state of one format into the state of the next one.
Migration = Callable[[dict[str, Any]], dict[str, Any]]
# What a damaged snapshot raises while it is read; anything else is a bug and propagates.
_DAMAGE = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class InvalidSnapshot(ValueError):
    """Saved detection state that cannot be restored; says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class SnapshotFormat:
    """The current format number of one detector's snapshot, and how older ones upgrade."""

    # What error messages call this kind of snapshot: "a zone detector".
    noun: str
    version: int = 1
    # Keyed by the format they upgrade from: {1: one_to_two} reads format 1 as format 2.
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [n for n in range(1, self.version) if n not in self.migrations]
        if missing:
            # Not a refusal found at restore time: a format without its upgrades is a bug.
            raise ValueError(f"{self.noun} snapshot: no migration from format {missing}")

    def write(self, state: dict[str, Any]) -> dict[str, Any]:
        """Return the state as a snapshot of the current format."""
        return {"format": self.version, **state}

    def read(self, data: Any) -> dict[str, Any]:
        """Return a snapshot's state in the current format; raise InvalidSnapshot if unknown."""
        version = data.get("format") if isinstance(data, dict) else None
        # `type(...) is int` refuses true, which JSON tells apart from 1.
        if type(version) is not int or not 1 <= version <= self.version:
            raise InvalidSnapshot(f"not {self.noun} snapshot of a known format")
        state: dict[str, Any] = data
        if version == self.version:
            return state
        while version < self.version:
            try:
                state = self.migrations[version](state)
            except _DAMAGE as exc:
                raise InvalidSnapshot(
                    f"not {self.noun} snapshot: cannot upgrade format {version}: {exc}"
                ) from exc
            version += 1
        return {**state, "format": version}


class Snapshotting(ABC):
    """A detector whose whole state `snapshot()` saves as JSON values and `restore()` puts back.

    Subclasses set `SNAPSHOT` and write `_state()` and `_from_state()`; every attribute they
    keep is in `__slots__`, so that `restore()` can take a fresh detector's state whole.
    """

    __slots__ = ()

    SNAPSHOT: ClassVar[SnapshotFormat]

    def snapshot(self) -> dict[str, Any]:
        """Return the whole detection state as JSON-ready data, sharing nothing mutable."""
        return self.SNAPSHOT.write(self._state())

    def restore(self, data: Any) -> None:
        """Replace the state with one from `snapshot()`; raise InvalidSnapshot if it is not one.

        Nothing changes when the snapshot is refused.
        """
        state = self.SNAPSHOT.read(data)
        try:
            fresh = self._from_state(state)
        except _DAMAGE as exc:
            raise InvalidSnapshot(f"not {self.SNAPSHOT.noun} snapshot: {exc}") from exc
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                setattr(self, name, getattr(fresh, name))

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """Return the detector's state as JSON-ready data (without the format number)."""

    @abstractmethod
    def _from_state(self, state: dict[str, Any]) -> Self:
        """Return a new detector with these rules and the state `_state()` returned.

        Raises KeyError, TypeError, ValueError (InvalidSnapshot among them) or IndexError on
        damaged state; `restore()` reports them all as InvalidSnapshot.
        """
