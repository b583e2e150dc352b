"""``python -m bench [NAME ...] [--quick] [--check] [--profile]``: run benchmarks, print the table, write
results/latest.json."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

from bench.common import Result, table, write_results
from bench.stack import ensure_services

NAMES = ("pipeline", "api", "live", "redeploy", "status", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(NAMES))
    parser.add_argument("--quick", action="store_true", help="every benchmark at reduced size (< 5 minutes)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the worker with py-spy where a benchmark supports it (pipeline): bench/profile.py",
    )
    args = parser.parse_args(argv)
    names = args.names or list(NAMES)
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; the names are {', '.join(NAMES)}")
    modules = {name: importlib.import_module(f"bench.{name}") for name in names}
    profiled = {
        name
        for name, m in modules.items()
        if args.profile and "profile" in inspect.signature(m.run).parameters
    }
    if args.profile and not profiled:
        parser.error("--profile: none of these benchmarks can be profiled (pipeline can)")
    ensure_services()
    results: dict[str, Result] = {}
    for name in names:
        started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        options = {"profile": True} if name in profiled else {}
        results[name] = modules[name].run(quick=args.quick, **options)
        shown = {k: v for k, v in results[name].details.items() if k != "plans"}
        print(
            f"== {name}: {time.monotonic() - started:.0f} s: {results[name].entry()} {shown}", file=sys.stderr
        )
    path = write_results(results, args.quick)
    print(table(results))
    print(f"\nwritten to {path}")
    missed = [name for name, r in results.items() if not r.met]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
