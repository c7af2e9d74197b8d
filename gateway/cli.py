"""Command line: ``gateway run | check | schema | explain | demo-upstream``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gateway.config.loader import LoadedConfig, load_file
from gateway.errors import ConfigError


def _load_and_build(path: str) -> LoadedConfig:
    """Load ``path`` and build its snapshot exactly as ``run`` would, binding nothing."""
    from gateway.runtime import Runtime

    loaded = load_file(path)
    try:
        Runtime(loaded)
    except (ValueError, OSError) as exc:  # a resource that cannot be built from this file
        from gateway.errors import ConfigIssue

        raise ConfigError([ConfigIssue(path, 1, 1, str(exc))]) from exc
    return loaded


def cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            _load_and_build(path)
        except ConfigError as exc:
            failed += 1
            for issue in exc.issues:
                print(issue, file=sys.stderr)
        else:
            if not args.quiet:
                print(f"{path}: ok")
    return 1 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.schema import policy_file_schema

    json.dump(policy_file_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain

    try:
        loaded = load_file(args.config)
        report = explain(loaded, args.method, args.path, args.header or [], args.client)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"gateway explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from gateway.explain import render

        sys.stdout.write(render(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.observability.logs import setup_logging
    from gateway.server import run

    try:
        loaded = _load_and_build(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    logging = loaded.config.logging
    setup_logging(logging.level, logging.format)
    try:
        return run(loaded)
    except OSError as exc:
        print(f"gateway run: {exc}", file=sys.stderr)
        return 1


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo_upstream

    return run_demo_upstream(args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the proxy and the admin server")
    p.add_argument("-c", "--config", required=True, help="policy file (YAML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate policy files; errors as FILE:LINE:COL: message")
    p.add_argument("files", nargs="+")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("schema", help="print the JSON Schema of the policy file")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("explain", help="show the route and the policies a request would meet")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("method")
    p.add_argument("path", help="path with optional ?query")
    p.add_argument("-H", "--header", action="append", help="'Name: value' (repeatable)")
    p.add_argument("--client", default="127.0.0.1", help="client address (default 127.0.0.1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo-upstream", help="run the built-in demo upstream service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_demo_upstream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
