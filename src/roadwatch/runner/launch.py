"""Start one supervised program: end its previous run's leftovers, then exec it in place.

supervisord runs `python -m roadwatch.runner.launch --env FILE --pidfile FILE -- ARGV...` for
every program. The launcher reads the program's environment from FILE (mode 0600, secrets
included, so none is on a command line), ends any process still tagged as this program — Apache's
workers survive a `kill -9` of their parent and keep its port — records its own pid, and
replaces itself with ARGV: the pid supervisord watches is the program's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from roadwatch.runner import procs

log = logging.getLogger(__name__)

EXIT_LEFTOVERS = 70


def read_environment(path: Path) -> dict[str, str]:
    """Read a program's environment file: one JSON object of strings."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in data.items()
    ):
        raise ValueError(f"{path} is not a JSON object of strings")
    return data


def write_environment(path: Path, env: dict[str, str]) -> None:
    """Write a program's environment file, readable by its owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(env, out, indent=1, sort_keys=True)
    temporary.replace(path)


def starts_file(pidfile: Path) -> Path:
    """Where the launcher counts the starts of the program whose pid goes to `pidfile`."""
    return pidfile.with_suffix(".starts")


def read_starts(pidfile: Path) -> int:
    """Return how often the program was launched since the runner last started it."""
    try:
        return int(starts_file(pidfile).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the launcher (see the module docstring); only returns on failure."""
    parser = argparse.ArgumentParser(prog="roadwatch.runner.launch")
    parser.add_argument("--env", type=Path, required=True, help="the environment, as JSON")
    parser.add_argument("--pidfile", type=Path, required=True)
    parser.add_argument(
        "--leftover-grace",
        type=float,
        default=2.0,
        help="seconds leftovers get between SIGTERM and SIGKILL (0: SIGKILL at once)",
    )
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="launch: %(message)s", stream=sys.stderr)

    env = read_environment(args.env)
    tag = env.get(procs.MARKER)
    if tag:
        leftovers = procs.tagged(tag)
        if leftovers:
            log.warning(
                "ending %d leftover process(es) of the previous run: %s",
                len(leftovers),
                ", ".join(process.describe() for process in leftovers),
            )
            survivors = procs.end(leftovers, args.leftover_grace)
            if survivors:
                log.error("leftover processes survive SIGKILL: %s", survivors)
                return EXIT_LEFTOVERS
    args.pidfile.parent.mkdir(parents=True, exist_ok=True)
    args.pidfile.write_text(f"{os.getpid()}\n")
    starts_file(args.pidfile).write_text(f"{read_starts(args.pidfile) + 1}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(args.command[0], args.command, env)


if __name__ == "__main__":
    sys.exit(main())
