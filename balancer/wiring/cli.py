"""`warmfront` command line: run | check | schema | forecast | simulate | demo | demo-backend."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    p = argparse.ArgumentParser(prog="warmfront", description="A reverse proxy that sees load coming.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy, the admin listener and the pools")
    run.add_argument("--config", metavar="DIR", help="directory with routing.yaml and pools.yaml "
                     "(default: the embedded default config)")
    run.add_argument("--to", metavar="HOST:PORT", action="append", type=_hostport, default=[],
                     help="proxy to these servers with no config files (repeatable)")
    run.add_argument("--listen", metavar="HOST:PORT", type=_hostport, help="proxy listen address")
    run.add_argument("--admin", metavar="HOST:PORT", type=_hostport, help="admin listen address")
    run.add_argument("--state-dir", metavar="DIR", help="history database and member logs")
    run.add_argument("--workers", metavar="N", type=_workers,
                     help="data-plane worker processes (default: routing.yaml's workers, else one per CPU)")
    run.add_argument("--log-level", default="info")

    check = sub.add_parser("check", help="validate a config directory (exit 2 when invalid)")
    check.add_argument("--config", metavar="DIR", help="directory with routing.yaml and pools.yaml")

    sub.add_parser("schema", help="print the JSON Schema of routing.yaml and pools.yaml")

    sub.add_parser("forecast", help="backtest the forecasters on a trace (see: warmfront forecast --help)",
                   add_help=False)
    sub.add_parser("simulate", help="replay a trace through static, reactive, predictive and oracle policies",
                   add_help=False)
    sub.add_parser("demo", help="a compressed day of traffic through warmfront, shown live", add_help=False)
    demo = sub.add_parser("demo-backend", help="run the demo backend service", add_help=False)
    demo.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo-backend"]:
        from balancer.demo import backend as demo_backend
        return demo_backend.main(argv[1:]) or 0
    if argv[:1] == ["forecast"]:
        from predictor import forecast_cli
        return forecast_cli.main(argv[1:])
    if argv[:1] == ["simulate"]:
        from pools import simulate_cli
        return simulate_cli.main(argv[1:])
    if argv[:1] == ["demo"]:
        from balancer.demo import run as demo
        return demo.main(argv[1:])
    args = _parser().parse_args(argv)
    from config import ConfigError, default_config_dir, json_schema, load_config

    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
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
        from balancer.wiring.app import run_forever, static_config
        try:
            if args.to:
                if args.config:
                    print("--to and --config are exclusive", file=sys.stderr)
                    return 2
                cfg = static_config(args.to)
            else:
                cfg = load_config(Path(args.config) if args.config else default_config_dir())
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return 2
        return run_forever(cfg, listen=args.listen, admin=args.admin, state_dir=args.state_dir,
                           log_level=args.log_level, workers=args.workers)
    return 2


if __name__ == "__main__":
    sys.exit(main())
