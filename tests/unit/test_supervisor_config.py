"""supervisord.conf as the runner renders it: every program restartable, no secret in it."""

from __future__ import annotations

import configparser
import shlex
import stat
from pathlib import Path

import pytest

from roadwatch.runner import launch
from roadwatch.runner.process import Program, RunLayout, RunnerError
from roadwatch.runner.supervisor import SupervisorPaths, launcher_argv, render_config

SECRET = "s3cret%(here)s value"


def program(name: str = "apache", *argv: str) -> Program:
    return Program(
        name,
        argv or ("/usr/sbin/apache2", "-f", "/etc/with space/httpd.conf", "-DFOREGROUND"),
        {"ROADWATCH_API_TOKEN": SECRET, "PATH": "/usr/bin"},
        Path("/srv/run 100%/apache"),
        stop_grace_s=60.0,
        leftover_grace_s=0.0,
    )


def rendered(root: Path, *programs: Program) -> configparser.RawConfigParser:
    text = render_config(SupervisorPaths(root), RunLayout(root), programs)
    # As supervisord reads it (supervisor.options.UnhosedConfigParser).
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(text)
    return parser


def unescape(value: str) -> str:
    """Undo the `%%` supervisord's own parser turns back into `%`."""
    return value.replace("%%", "%")


def test_every_program_restarts_and_stops_as_a_whole_group(tmp_path: Path) -> None:
    config = rendered(tmp_path, program("apache"), program("mariadb", "/usr/sbin/mariadbd"))
    for name in ("apache", "mariadb"):
        section = config[f"program:{name}"]
        assert section["autorestart"] == "true"
        assert section["autostart"] == "false"
        assert int(section["startsecs"]) <= 2
        assert section["stopasgroup"] == "true"
        assert section["killasgroup"] == "true"
        assert section["stopwaitsecs"] == "60"
        assert section["stdout_logfile"] == str(tmp_path / "logs" / f"{name}.log")


def test_the_command_runs_the_launcher_then_the_program_with_its_arguments_intact(
    tmp_path: Path,
) -> None:
    config = rendered(tmp_path, program())
    section = config["program:apache"]
    argv = shlex.split(unescape(section["command"]))
    assert argv == launcher_argv(SupervisorPaths(tmp_path), RunLayout(tmp_path), program())
    assert argv[argv.index("--") + 1 :] == list(program().argv)
    assert unescape(section["directory"]) == "/srv/run 100%/apache"


def test_no_secret_is_written_into_the_configuration(tmp_path: Path) -> None:
    text = render_config(SupervisorPaths(tmp_path), RunLayout(tmp_path), [program()])
    assert "s3cret" not in text


def test_a_changed_environment_changes_the_program_section(tmp_path: Path) -> None:
    before = rendered(tmp_path, program())["program:apache"]["environment"]
    changed = Program("apache", program().argv, {"ROADWATCH_API_TOKEN": "other"}, Path("/srv"))
    after = rendered(tmp_path, changed)["program:apache"]["environment"]
    assert before != after


def test_supervisord_listens_on_a_private_unix_socket_only(tmp_path: Path) -> None:
    config = rendered(tmp_path, program())
    assert config["unix_http_server"]["file"] == str(tmp_path / "supervisor" / "supervisord.sock")
    assert config["unix_http_server"]["chmod"] == "0700"
    assert "inet_http_server" not in config
    assert config["supervisorctl"]["serverurl"].startswith("unix://")


def test_a_deep_run_folder_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    socket = SupervisorPaths(deep).socket
    assert len(str(socket)) < 108
    assert socket != SupervisorPaths(tmp_path / "other").socket


@pytest.mark.parametrize("folder", ["/srv/a\nb", "/srv/a ;b", "/srv/a #b"])
def test_a_path_supervisord_would_cut_short_is_refused(tmp_path: Path, folder: str) -> None:
    broken = Program("apache", ("/bin/true",), {}, Path(folder))
    with pytest.raises(RunnerError, match=r"line break|cut"):
        render_config(SupervisorPaths(tmp_path), RunLayout(tmp_path), [broken])


def test_the_environment_file_is_private_and_keeps_every_value_exactly(tmp_path: Path) -> None:
    env = {"A": "quoted \"'` $HOME %s", "B": "=leading equals", "C": "", "D": "ünïcode\ttab"}
    path = tmp_path / "env" / "apache.json"
    launch.write_environment(path, env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert launch.read_environment(path) == env
