"""The detection core does no I/O and never reads the wall clock (so replays are exact)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import roadwatch.domain

DOMAIN_DIR = Path(roadwatch.domain.__file__).parent

# Modules that talk to the network, disks, processes, threads, the clock or randomness.
FORBIDDEN_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "fastapi",
        "http",
        "httpx",
        "io",
        "logging.config",
        "logging.handlers",
        "multiprocessing",
        "os",
        "paho",
        "pathlib",
        "pydantic_settings",
        "pymysql",
        "random",
        "requests",
        "roadwatch.adapters",
        "roadwatch.runner",
        "roadwatch.services",
        "roadwatch.settings",
        "secrets",
        "select",
        "selectors",
        "shutil",
        "signal",
        "slixmpp",
        "socket",
        "sqlite3",
        "ssl",
        "starlette",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
        "urllib",
        "uvicorn",
    }
)
# Calls that read the wall clock or touch files or the terminal.
FORBIDDEN_CALLS = frozenset({"now", "utcnow", "today", "open", "input", "print", "breakpoint"})


def _is_forbidden(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:n]) in FORBIDDEN_MODULES for n in range(1, len(parts) + 1))


def impurities(source: str) -> list[str]:
    """Return what in `source` does I/O or reads the clock, as `line: what` strings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: calls {name}()")
            continue
        else:
            continue
        found.extend(f"{node.lineno}: imports {m}" for m in modules if _is_forbidden(m))
    return found


DOMAIN_MODULES = sorted(DOMAIN_DIR.rglob("*.py"))


def test_the_domain_package_has_the_detection_modules() -> None:
    names = {path.stem for path in DOMAIN_MODULES}
    assert {"events", "geo", "messages", "accident", "detector"} <= names


@pytest.mark.parametrize("path", DOMAIN_MODULES, ids=lambda p: p.name)
def test_domain_module_does_no_io_and_reads_no_clock(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import socket",
        "import os.path",
        "from time import monotonic",
        "from logging.handlers import SysLogHandler",
        "from logging import handlers",
        "import paho.mqtt.client as mqtt",
        "from roadwatch.adapters import mqtt",
        "from roadwatch.settings import Settings",
        "from datetime import datetime\nstamp = datetime.now()",
        "data = open('zones.geojson').read()",
    ],
)
def test_the_purity_check_catches_io_and_clock_reads(snippet: str) -> None:
    assert impurities(snippet) != []


def test_the_purity_check_allows_pure_helpers() -> None:
    source = "import math\nimport heapq\nfrom datetime import UTC, datetime\nimport orjson\n"
    assert impurities(source) == []
