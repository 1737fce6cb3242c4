"""`roadwatch`: one command line for every service and for running the whole system."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from roadwatch import __version__

if TYPE_CHECKING:
    from roadwatch.settings import Settings

log = logging.getLogger(__name__)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # slixmpp logs every stanza at DEBUG and some routine events at WARNING.
    logging.getLogger("slixmpp").setLevel(max(logging.getLogger().level, logging.ERROR))


def _settings(args: argparse.Namespace) -> Settings:
    from roadwatch.settings import load_settings  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if getattr(args, "no_demo", False):
        overrides["demo"] = False
    settings = load_settings(**overrides)
    if not settings.run_dir.is_absolute():
        settings = settings.model_copy(update={"run_dir": _repo_root() / settings.run_dir})
    return settings


def _repo_root() -> Path:
    from roadwatch.runner.templates import repo_dir  # noqa: PLC0415

    try:
        return repo_dir()
    except Exception:  # installed without the repository: state goes next to the caller
        return Path.cwd()


def _cmd_service(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.command == "gateway":
        from roadwatch.services import gateway  # noqa: PLC0415

        gateway.main(settings)
    elif args.command == "collector":
        from roadwatch.services import collector  # noqa: PLC0415

        collector.main(settings)
    elif args.command == "api":
        from roadwatch.services.api import app  # noqa: PLC0415

        app.main(settings)
    elif args.command == "simulate":
        from roadwatch.runner.accounts import vehicle_provisioner  # noqa: PLC0415
        from roadwatch.services import simulator  # noqa: PLC0415

        return simulator.main(
            settings,
            vehicles=args.vehicles,
            seed=args.seed,
            duration_s=args.duration,
            speedup=args.speedup,
            record=args.record,
            dry_run=args.dry_run,
            mode=args.mode,
            connections=args.connections,
            scenario=args.scenario,
            network=args.network,
            start_ms=args.start_ms,
            ground_truth=args.ground_truth,
            provision=vehicle_provisioner(settings) if args.mode == "vehicle" else None,
        )
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from roadwatch.services import replay  # noqa: PLC0415

    return replay.main(_settings(args), args.file, args.speedup)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number (or inf)")
    return value


def _cmd_migrate(args: argparse.Namespace) -> int:
    from roadwatch.adapters.mysql.connection import connect  # noqa: PLC0415
    from roadwatch.adapters.mysql.migrate import apply_migrations  # noqa: PLC0415

    settings = _settings(args)
    connection = connect(settings)
    try:
        applied = apply_migrations(connection)
    finally:
        connection.close()
    log.info("migrations applied: %s", ", ".join(applied) or "none (up to date)")
    return 0


def _cmd_seed_events(args: argparse.Namespace) -> int:
    from roadwatch.services import seed  # noqa: PLC0415

    if args.count < 0 or not args.days > 0:
        log.error("--count must be 0 or more and --days positive")
        return 2
    step = max(args.count // 20, 1)

    def progress(done: int, total: int) -> None:
        if done % step < seed.BATCH_SIZE or done == total:
            sys.stderr.write(f"\rseeded {done:,} / {total:,} events")
            if done == total:
                sys.stderr.write("\n")

    report = seed.main(
        _settings(args), args.count, seed=args.seed, days=args.days, progress=progress
    )
    sys.stdout.write(
        f"{report.inserted:,} events inserted ({report.requested - report.inserted:,} already "
        f"there) in {report.seconds:.1f} s\n"
    )
    return 0


def _cmd_stack(args: argparse.Namespace) -> int:
    from roadwatch.runner import stack  # noqa: PLC0415
    from roadwatch.runner.envfile import ensure_env_file  # noqa: PLC0415
    from roadwatch.runner.process import RunnerError  # noqa: PLC0415

    console = stack.Console()
    if args.command == "up":
        added = ensure_env_file(_repo_root() / ".env")
        if added:
            console.line(f"generated {len(added)} secrets into .env")
    settings = _settings(args)
    try:
        if args.command == "up":
            stack.up(settings, console)
        elif args.command == "down":
            stack.down(settings, console)
        elif args.command == "status":
            return 0 if stack.status(settings, console) else 1
        elif args.command == "reset":
            stack.reset(settings, console)
    except RunnerError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _cmd_supervisorctl(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from roadwatch.runner.supervisor import SupervisorPaths  # noqa: PLC0415

    config = SupervisorPaths(_settings(args).run_dir).config
    if not config.exists():
        log.error("no %s: start the system with `make up` first", config)
        return 1
    supervisorctl = shutil.which("supervisorctl") or "/usr/bin/supervisorctl"
    os.execv(supervisorctl, [supervisorctl, "-c", str(config), *args.arguments])


def _cmd_accounts(args: argparse.Namespace) -> int:
    from roadwatch.adapters.accounts import RegistryError  # noqa: PLC0415
    from roadwatch.domain.accounts import AccountKind, Trust  # noqa: PLC0415
    from roadwatch.runner.accounts import AccountManager  # noqa: PLC0415
    from roadwatch.runner.process import RunnerError  # noqa: PLC0415

    manager = AccountManager(_settings(args))
    out = sys.stdout
    try:
        if args.action == "list":
            accounts = manager.accounts()
            out.write(f"{'NAME':<24} {'KIND':<10} {'TRUST':<10} MAY PUBLISH\n")
            prefix = manager.settings.its_prefix
            for account in accounts:
                topics = ", ".join(account.may_publish(prefix)) or "(XMPP: reads the alerts)"
                out.write(f"{account.name:<24} {account.kind:<10} {account.trust:<10} {topics}\n")
            out.write(f"{len(accounts)} accounts\n")
            return 0
        if args.action == "remove":
            removed = manager.remove(args.name)
            out.write(f"{removed.kind} account {removed.name} removed\n")
            return 0
        if args.action == "add":
            trust = Trust(args.trust) if args.trust else None
            made = manager.add(AccountKind(args.kind), args.name, trust)
        else:
            made = manager.rotate(args.name)
    except (RegistryError, RunnerError) as exc:
        log.error("%s", exc)
        return 2
    account = made.account
    topics = ", ".join(account.may_publish(manager.settings.its_prefix))
    if account.kind.is_mqtt:
        out.write(
            f"{account.kind} account {account.name} ({account.trust}) may publish to {topics}\n"
        )
    else:
        out.write(
            f"XMPP account {account.name}@{manager.settings.xmpp_domain} follows the alerts\n"
        )
    # Shown once: it is kept nowhere but as a hash.
    out.write(f"password: {made.password}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roadwatch",
        description="RoadWatch: road events from connected vehicles.",
    )
    parser.add_argument("--version", action="version", version=f"roadwatch {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING or ERROR (default: INFO for services, WARNING otherwise)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, text in (
        ("gateway", "subscribe to vehicles over MQTT, detect events, send them over XMPP"),
        ("collector", "store events from XMPP in MySQL and publish them to PubSub"),
        ("api", "serve the REST API"),
    ):
        sub.add_parser(name, help=text).set_defaults(handler=_cmd_service)

    simulate = sub.add_parser("simulate", help="drive simulated vehicles on a road network")
    simulate.add_argument("--vehicles", type=int, default=40, help="number of vehicles")
    simulate.add_argument("--seed", type=int, default=1, help="random seed (same seed, same run)")
    simulate.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    simulate.add_argument(
        "--speedup", type=_positive_float, default=1.0, help="simulated seconds per second"
    )
    simulate.add_argument("--record", type=Path, default=None, help="write the trace as JSONL")
    simulate.add_argument(
        "--dry-run", action="store_true", help="no MQTT: simulate (and record) flat out"
    )
    simulate.add_argument(
        "--mode",
        choices=("fleet", "vehicle"),
        default="fleet",
        help="publish with the fleet account, or connect each vehicle as itself",
    )
    simulate.add_argument("--connections", type=int, default=2, help="fleet-mode MQTT connections")
    simulate.add_argument(
        "--scenario",
        default="demo",
        help="demo, traffic, accident, jam, zones or rush-hour on the road network; "
        "circles: the network-free demo",
    )
    simulate.add_argument(
        "--network",
        type=Path,
        default=None,
        help="GeoJSON road network (default: ROADWATCH_NETWORK_FILE, else the Reims network)",
    )
    simulate.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        metavar="FILE",
        help="at the end (Ctrl-C included), write the events the scenario staged as JSON",
    )
    simulate.add_argument(
        "--start-ms", type=int, default=None, help="simulated start time, epoch ms (reproducible)"
    )
    simulate.set_defaults(handler=_cmd_service)

    replay = sub.add_parser(
        "replay",
        help="publish a recorded JSONL trace over MQTT, its timestamps shifted to end now",
    )
    replay.add_argument("file", type=Path, help='JSON Lines of {"topic", "qos", "payload"}')
    replay.add_argument(
        "--speedup",
        type=_positive_float,
        default=1.0,
        help="trace seconds per second (default 1; inf: as fast as possible)",
    )
    replay.set_defaults(handler=_cmd_replay)

    sub.add_parser("migrate", help="apply the database migrations").set_defaults(
        handler=_cmd_migrate
    )

    seed_events = sub.add_parser(
        "seed-events",
        help="fill the database with realistic events (for measurements and demonstrations)",
    )
    seed_events.add_argument("--count", type=int, default=1_000_000, help="number of events")
    seed_events.add_argument(
        "--seed", type=int, default=1, help="random seed (same seed, same rows)"
    )
    seed_events.add_argument(
        "--days", type=float, default=30.0, help="spread the start times over the last N days"
    )
    seed_events.set_defaults(handler=_cmd_seed_events)

    for name, text in (
        ("up", "start the whole system natively and print its URL"),
        ("down", "stop everything `up` started"),
        ("status", "show each part of the running system"),
        ("reset", "stop everything and delete all local state"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.set_defaults(handler=_cmd_stack)
        if name == "up":
            cmd.add_argument("--no-demo", action="store_true", help="do not start the simulator")
    ctl = sub.add_parser(
        "supervisorctl",
        help="supervisorctl on the running system's supervisord (e.g. `restart gateway`)",
    )
    ctl.add_argument("arguments", nargs=argparse.REMAINDER, help="supervisorctl's own arguments")
    ctl.set_defaults(handler=_cmd_supervisorctl)

    accounts = sub.add_parser(
        "accounts", help="manage the accounts of vehicles, phones, ITS clients and followers"
    )
    accounts_sub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = accounts_sub.add_parser("add", help="create an account and print its password once")
    add.add_argument(
        "kind",
        choices=("vehicle", "emergency", "operator", "phone", "its", "follower"),
        help="what the account is: it alone decides what it may publish and its trust",
    )
    add.add_argument("name", help="the stationId, OwnTracks user, its-client uuid or XMPP name")
    add.add_argument(
        "--trust",
        choices=("ordinary", "emergency", "operator"),
        help="for an `its` account: the trust it is provisioned with (default ordinary)",
    )
    accounts_sub.add_parser("list", help="every account with its kind and topics")
    for action, text in (
        ("remove", "delete an account"),
        ("rotate", "give an account a new password and print it once"),
    ):
        cmd = accounts_sub.add_parser(action, help=text)
        cmd.add_argument("name")
    accounts.set_defaults(handler=_cmd_accounts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `roadwatch` command line."""
    args = build_parser().parse_args(argv)
    quiet = args.handler in (_cmd_stack, _cmd_accounts, _cmd_supervisorctl)
    _configure_logging(args.log_level or ("WARNING" if quiet else "INFO"))
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `roadwatch status | head`
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
