"""`warmfront` command line: run | check | schema | forecast | simulate | demo | demo-backend."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from balancer.version import version

if TYPE_CHECKING:
    from pydantic import BaseModel

    from config import Config


# Commands with parsers of their own, given the arguments after their name untouched (so
# `warmfront forecast --help` is forecast's help): command -> (module with `main(argv)`, help).
PASSTHROUGH = {
    "forecast": ("predictor.forecast_cli", "backtest the forecasters on a trace (see: warmfront forecast --help)"),
    "simulate": ("pools.simulate_cli", "replay a trace through static, reactive, predictive and oracle policies"),
    "demo": ("balancer.demo.run", "a compressed day of traffic through warmfront, shown live"),
    "demo-backend": ("balancer.demo.backend", "run the demo backend service"),
}
SCHEMA_FILES = ("routing", "pools", "events")


def _hostport(value: str) -> tuple[str, int]:
    from pools.ports import parse_hostport
    try:
        return parse_hostport(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, not {value!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    from balancer.logs import LEVELS

    p = argparse.ArgumentParser(prog="warmfront", description="A reverse proxy that sees load coming.")
    p.add_argument("--version", action="version", version=f"warmfront {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the proxy, the admin listener and the pools")
    run.add_argument("--config", metavar="DIR", help="directory with routing.yaml and pools.yaml "
                     "(default: the embedded default config)")
    run.add_argument("--to", metavar="HOST:PORT", action="append", type=_hostport, default=[],
                     help="proxy to these servers with no config files (repeatable)")
    run.add_argument("--health-path", metavar="PATH",
                     help="with --to: check each server with GET PATH (healthy below 500) instead of a TCP connect")
    run.add_argument("--no-health-check", action="store_true",
                     help="with --to: no active checks; failing servers are only ejected passively")
    run.add_argument("--listen", metavar="HOST:PORT", type=_hostport, help="proxy listen address")
    run.add_argument("--admin", metavar="HOST:PORT", type=_hostport, help="admin listen address")
    run.add_argument("--state-dir", metavar="DIR", help="history database and member logs")
    run.add_argument("--access-log", metavar="PATH",
                     help="one JSON line per request to PATH, or - for stdout (default: routing.yaml's access_log, "
                          "else off)")
    run.add_argument("--workers", metavar="N", type=_workers,
                     help="data-plane worker processes (default: routing.yaml's workers, else one per CPU)")
    run.add_argument("--log-level", choices=list(LEVELS), default="info", type=str.lower,
                     help="least severe log events written (default: info)")
    run.add_argument("--log-format", choices=("json", "text"),
                     help="log lines as JSON, or as text for people (default: json unless stderr is a terminal)")

    check = sub.add_parser("check", help="validate a config directory (exit 2 when invalid)")
    check.add_argument("--config", metavar="DIR", help="directory with routing.yaml and pools.yaml")

    schema = sub.add_parser("schema", help="print the JSON Schema of routing.yaml and pools.yaml (or of one file)")
    schema.add_argument("--file", choices=SCHEMA_FILES,
                        help="print only this file's schema, a document an editor can use as it is")

    for name, (_, text) in PASSTHROUGH.items():
        # No option prefix (NUL cannot occur in argv), so argparse takes every argument as
        # the remainder: a leading `--help` or `--trace` would otherwise be parsed here.
        passthrough = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        passthrough.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _command(_parser().parse_args(argv))
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()   # a reader that left shows here, not as "Exception ignored" at exit
    except BrokenPipeError:
        # `warmfront schema | head -1`: the reader has what it wanted. Pointing stdout at
        # /dev/null keeps the interpreter's last flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _command(args: argparse.Namespace) -> int:
    if args.command in PASSTHROUGH:
        module, _ = PASSTHROUGH[args.command]
        return importlib.import_module(module).main(args.args) or 0

    from config import ConfigError, default_config_dir, file_json_schema, json_schema, load_config

    if args.command == "schema":
        document = json_schema() if args.file is None else file_json_schema(_schema_model(args.file))
        print(json.dumps(document, indent=2))
        return 0
    if args.command == "check":
        directory = Path(args.config) if args.config else default_config_dir()
        try:
            cfg = load_config(directory)
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return 2
        print(f"{directory}: ok ({len(cfg.routing.routes)} routes, {len(cfg.pools)} pools)")
        return 0
    if args.command == "run":
        from balancer.wiring.app import static_config
        if args.to and args.config:
            print("--to and --config are exclusive", file=sys.stderr)
            return 2
        try:
            if args.to:
                cfg = static_config(args.to, health_path=args.health_path, active=not args.no_health_check)
            else:
                cfg = load_config(Path(args.config) if args.config else default_config_dir())
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return 2
        return _run(cfg, args)
    return 2


def _run(cfg: Config, args: argparse.Namespace) -> int:
    from balancer.wiring.app import run_forever

    return run_forever(cfg, listen=args.listen, admin=args.admin, state_dir=args.state_dir,
                       log_level=args.log_level, workers=args.workers, access_log=args.access_log,
                       log_format=args.log_format)


def _schema_model(file: str) -> type[BaseModel]:
    from config import PoolsConfig, RoutingConfig
    from config.events import EventsConfig

    models: dict[str, type[BaseModel]] = {"routing": RoutingConfig, "pools": PoolsConfig, "events": EventsConfig}
    return models[file]


if __name__ == "__main__":
    sys.exit(main())
