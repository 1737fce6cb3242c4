"""A native run under supervisord heals itself, `status` tells the truth, `down` leaves nothing.

A private system (MariaDB, Mosquitto, the api and Apache, on free ports under a temporary
folder) is started with `up`, as `make up` does. Its programs are then killed with SIGKILL one
by one: each must be serving again within seconds, from a new process that supervisord
started. The tests run in order and share the system; the last one takes it down.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from roadwatch.runner import procs, stack
from roadwatch.runner.apache import Apache
from roadwatch.runner.mariadb import MariaDB
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout, port_open
from roadwatch.runner.supervisor import Supervisor
from roadwatch.settings import Settings

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

PARTS = ("mariadb", "mosquitto", "api", "apache")
# From kill -9 to serving again from the new process.
BACK_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def system() -> Iterator[Settings]:
    """A private supervised system; taken down (again) and deleted at the end."""
    root = Path(tempfile.mkdtemp(prefix="rw-supervised-"))
    root.chmod(0o755)  # the servers run as their own users
    settings = private_settings(root)
    try:
        Supervisor(settings).up(only=PARTS)
        yield settings
    finally:
        Supervisor(settings).down()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = BACK_WITHIN_S) -> float:
    """Poll `check` until true; return the seconds it took."""
    began = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - began
        except OSError:
            pass
        if time.monotonic() - began > timeout_s:
            pytest.fail(f"{what} not within {timeout_s} s")
        time.sleep(0.02)


def http_status(url: str, timeout_s: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def held_only_by_group(port: int, leader: int) -> bool:
    """True when something listens on `port` and every holder is in `leader`'s process group."""
    holders = procs.listeners([port]).get(port, set())
    infos = [procs.info(pid) for pid in holders]
    return bool(holders) and all(info is not None and info.pgid == leader for info in infos)


def report(settings: Settings, name: str) -> stack.PartReport:
    return next(r for r in stack.inspect(settings) if r.name == name)


def secrets_of(settings: Settings) -> list[str]:
    return [
        value.get_secret_value()
        for _, value in settings
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]


def test_up_runs_each_part_under_supervisord_with_no_secret_on_a_command_line(
    system: Settings,
) -> None:
    supervisor = Supervisor(system)
    for name in PARTS:
        assert supervisor.status(name).running
        assert report(system, name).ok
    config = supervisor.paths.config
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert supervisor.paths.socket.parent == system.run_dir / "supervisor"
    for env_file in (supervisor.paths.folder / "env").iterdir():
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    processes = procs.of_run(system.run_dir)
    assert len(processes) > len(PARTS)  # Apache's workers too
    for secret in secrets_of(system):
        assert secret not in config.read_text()
        for process in processes:
            assert secret not in process.cmdline


def test_up_again_leaves_the_running_programs_alone(system: Settings) -> None:
    supervisor = Supervisor(system)
    before = {name: supervisor.pid(name) for name in PARTS}
    stack.up(system, only=PARTS)
    assert {name: supervisor.pid(name) for name in PARTS} == before


@pytest.mark.parametrize("name", ["mosquitto", "mariadb"])
def test_a_server_killed_with_sigkill_is_serving_again_within_seconds(
    system: Settings, name: str
) -> None:
    supervisor = Supervisor(system)
    layout = RunLayout(system.run_dir)
    server = Mosquitto(system, layout) if name == "mosquitto" else MariaDB(system, layout)
    port = system.mqtt_port if name == "mosquitto" else system.mysql_port
    old = supervisor.pid(name)
    assert old is not None

    os.kill(old, signal.SIGKILL)
    took = wait_for(
        f"{name} back",
        lambda: (
            server.pid() not in (None, old)
            and server.healthy()
            and held_only_by_group(port, server.pid() or 0)
        ),
    )
    new = supervisor.wait_running(name, BACK_WITHIN_S, replacing=old)
    assert new == server.pid()
    assert supervisor.status(name).restarts == 1
    log.info("%s serving again %.2f s after kill -9", name, took)


def test_a_python_service_killed_with_sigkill_is_serving_again_within_seconds(
    system: Settings,
) -> None:
    supervisor = Supervisor(system)
    old = supervisor.pid("api")
    assert old is not None
    health = f"http://127.0.0.1:{system.http_port}/api/health"

    os.kill(old, signal.SIGKILL)
    took = wait_for(
        "the api back behind Apache",
        lambda: (
            http_status(health, 1.0) == 200
            and held_only_by_group(system.api_port, supervisor.pid("api") or 0)
            and supervisor.pid("api") != old
        ),
    )
    supervisor.wait_running("api", BACK_WITHIN_S, replacing=old)
    log.info("api serving again %.2f s after kill -9", took)


def test_apache_killed_with_sigkill_serves_again_from_its_new_process(system: Settings) -> None:
    supervisor = Supervisor(system)
    old = supervisor.pid("apache")
    assert old is not None
    workers = [p.pid for p in procs.of_run(system.run_dir) if p.pgid == old and p.pid != old]
    assert workers, "Apache runs workers"
    apache_log = system.run_dir / "logs" / "apache.log"
    log_before = apache_log.stat().st_size

    # The parent alone: its workers ignore SIGTERM and keep the port.
    os.kill(old, signal.SIGKILL)
    took = wait_for(
        "Apache back",
        lambda: (
            (new := supervisor.pid("apache")) not in (None, old)
            and http_status(f"http://127.0.0.1:{system.http_port}/", 1.0) == 200
            and held_only_by_group(system.http_port, new)
        ),
    )
    new = supervisor.wait_running("apache", BACK_WITHIN_S, replacing=old)
    assert not any(procs.alive(pid) for pid in workers), "the old workers are gone"
    assert held_only_by_group(system.http_port, new)
    assert b"Address already in use" not in apache_log.read_bytes()[log_before:]
    assert report(system, "apache").ok
    log.info("apache serving again %.2f s after kill -9 of its parent", took)


def test_status_reports_a_stopped_program_as_not_ok(system: Settings) -> None:
    supervisor = Supervisor(system)
    supervisor.stop("api")
    try:
        api = report(system, "api")
        assert not api.ok
        assert "STOPPED" in api.detail
        assert not stack.status(system)
    finally:
        supervisor.start("api")
        supervisor.wait_running("api", 15)
    wait_for("api ok again", lambda: report(system, "api").ok, 15)


def test_status_reports_a_port_served_outside_supervision_as_not_ok(system: Settings) -> None:
    supervisor = Supervisor(system)
    supervisor.stop("apache")
    stray = Apache(system, RunLayout(system.run_dir))
    stray.start()  # unsupervised: its pages answer, but supervisord does not watch it
    try:
        assert http_status(f"http://127.0.0.1:{system.http_port}/") == 200
        apache = report(system, "apache")
        assert not apache.ok
        assert "unsupervised" in apache.detail
    finally:
        stray.stop()
        supervisor.start("apache")
        supervisor.wait_running("apache", 15)
    wait_for("apache ok again", lambda: report(system, "apache").ok, 15)


def test_a_whole_process_group_can_be_paused_and_resumed(system: Settings) -> None:
    supervisor = Supervisor(system)
    leader = supervisor.pid("apache")
    assert leader is not None
    group = [p.pid for p in procs.of_run(system.run_dir) if p.pgid == leader]
    url = f"http://127.0.0.1:{system.http_port}/"
    supervisor.signal("apache", signal.SIGSTOP)
    try:
        wait_for(
            "every Apache process stopped",
            lambda: all(
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                for pid in group
            ),
        )
        with pytest.raises(OSError):
            http_status(url, 0.5)
    finally:
        supervisor.signal("apache", signal.SIGCONT)
    wait_for("Apache answering again", lambda: http_status(url, 1.0) == 200)
    assert supervisor.pid("apache") == leader


def test_up_after_supervisord_was_killed_puts_every_part_back_under_supervision(
    system: Settings,
) -> None:
    supervisor = Supervisor(system)
    supervisord = supervisor.supervisord_pid()
    assert supervisord is not None
    os.kill(supervisord, signal.SIGKILL)
    wait_for("supervisord gone", lambda: not supervisor.running())
    # Its programs outlive it, unwatched: status must not call them ok.
    assert not any(report(system, name).ok for name in PARTS)

    supervisor.up(only=PARTS)
    assert supervisor.supervisord_pid() not in (None, supervisord)
    for name in PARTS:
        assert report(system, name).ok


def test_down_leaves_no_process_of_the_run(system: Settings) -> None:
    supervisor = Supervisor(system)
    supervisord = supervisor.supervisord_pid()
    assert supervisord is not None
    stack.down(system)
    ports = [system.mysql_port, system.mqtt_port, system.api_port, system.http_port]
    assert procs.of_run(system.run_dir) == []
    assert procs.mentioning(system.run_dir) == []
    assert procs.listeners(ports) == {}
    assert not procs.alive(supervisord)
    assert not any(port_open("127.0.0.1", port) for port in ports)
    assert not supervisor.running()
