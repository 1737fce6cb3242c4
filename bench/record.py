"""docs/PERFORMANCE.md, written by the benchmarks themselves: never typed by hand.

Each benchmark's printed figures are kept as they were printed, under a heading with the
date, the machine's load average before and after, and the command that gives them again.
Running one benchmark replaces its own section and keeps the others.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

PERFORMANCE = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
_HEADER = """# Performance figures

Written by `make bench` (`.venv/bin/python -m bench [NAME...]`); each section is what one
benchmark printed, with when it ran and the load average of the machine (1, 5 and 15 minutes)
before and after. What each benchmark measures is described at the top of its module in
bench/. The targets on a 2-core machine: the whole pipeline sustains 30,000 CAM/s with every
rule on and no loss; at 15,000 CAM/s, publish → MySQL p99 < 100 ms and publish → browser
p99 < 500 ms; the detection core alone ≥ 100,000 messages/s on one core; REST queries p95 <
100 ms over 1,000,000 events; one simulator process ≥ 10,000 vehicles at 1 Hz. The machines
here are 2 shared cores: compare side by side when it matters.
"""
_SECTION = re.compile(r"<!-- bench:(?P<name>[a-z_-]+) -->\n(?P<body>.*?)<!-- /bench -->\n", re.S)


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        self.out.flush()
        return self.kept.write(text)

    def flush(self) -> None:
        self.out.flush()


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@contextlib.contextmanager
def _captured() -> Iterator[_Tee]:
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee


def run_and_record(name: str, benchmark: Callable[[], None], path: Path = PERFORMANCE) -> None:
    """Run one benchmark, printing as usual, then put its figures in docs/PERFORMANCE.md."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = _load()
    began = time.monotonic()
    with _captured() as tee:
        benchmark()
    took = time.monotonic() - began
    body = (
        f"## {name}\n\n"
        f"{started}, {took:.0f} s; load average {load_before} before, {_load()} after;"
        f" `.venv/bin/python -m bench {name}`\n\n"
        "```\n" + tee.kept.getvalue().rstrip() + "\n```\n\n"
    )
    sections = _read(path)
    sections[name] = body
    _write(path, sections)


def _read(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return {match["name"]: match["body"] for match in _SECTION.finditer(text)}


def _write(path: Path, sections: dict[str, str]) -> None:
    parts = [_HEADER, "\n"]
    for name, body in sections.items():
        parts.append(f"<!-- bench:{name} -->\n{body}<!-- /bench -->\n")
    path.write_text("".join(parts))
