"""Run metrics-hub's benchmarks one after another and print a summary of their figures.

    python -m bench [--only codec,publisher] [--quick] [--redis-url URL] [--json FILE]

Benchmarks are the modules of this package; one that is not there yet is reported and
skipped. The exit status is 1 if a benchmark failed, else 0 (a missed goal is a figure,
not a failure).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path

import msgpack

import bench

# Run first and in this order; any other module of the package runs after them.
KNOWN = ("codec", "publisher")
# Modules of the package that are tools the benchmarks drive, not benchmarks themselves.
TOOLS = frozenset({"loadgen", "baseline_server"})


def discover() -> list[str]:
    """The benchmarks to run by default: KNOWN first, then any other module here."""
    found = {info.name for info in pkgutil.iter_modules(bench.__path__)
             if not info.name.startswith("_") and info.name not in TOOLS}
    return [*KNOWN, *sorted(found - set(KNOWN))]


def run(name: str, args: argparse.Namespace) -> dict[str, float] | None:
    """Import ``bench.<name>`` lazily and run its ``main``; None if the module is absent."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{name}":
            raise  # the benchmark exists but needs something missing: that is a failure
        print(f"{name}: skipped: bench/{name}.py is not there (yet)")
        return None
    main = module.main
    accepted = inspect.signature(main).parameters
    options: dict[str, object] = {}
    if "quick" in accepted:
        options["quick"] = args.quick
    if "long" in accepted:
        options["long"] = args.long
    if "redis_url" in accepted and args.redis_url is not None:
        options["redis_url"] = args.redis_url
    figures = main(**options)
    return figures if isinstance(figures, dict) else {}  # a benchmark that only prints


def format_figure(key: str, value: float) -> str:
    """A figure with the unit its name implies (see bench/__init__.py)."""
    if key.endswith("_us"):
        return f"{value:.2f} µs"
    if key.endswith("_bytes"):
        return f"{value:.0f} B"
    if key.endswith(("speedup", "_ratio")):
        return f"{value:.2f}x"
    if key.endswith("_per_s"):
        return f"{value:,.0f}/s"
    return f"{value:g}"


def summary(results: dict[str, dict[str, float] | None], failed: dict[str, str]) -> str:
    lines = ["", "== summary =="]
    for name, figures in results.items():
        if name in failed:
            lines.append(f"{name}: FAILED: {failed[name]}")
        elif figures is None:
            lines.append(f"{name}: skipped (not there)")
        else:
            ratios = [f"{key} {format_figure(key, value)}" for key, value in figures.items()
                      if key.endswith(("speedup", "_ratio")) and not key.startswith("goal_")]
            lines.append(f"{name}: " + (", ".join(ratios) if ratios else "no ratios returned"))
            if "speedup" in figures and "goal_speedup" in figures:
                met = figures["speedup"] >= figures["goal_speedup"]
                lines.append(f"{'':{len(name)}}  goal speedup >= {figures['goal_speedup']:g}x: "
                             + ("met" if met else "NOT met"))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated benchmarks to run (default: all: "
                        + ", ".join(discover()) + ")")
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke test of the harness, noisy figures")
    parser.add_argument("--long", action="store_true",
                        help="also the long runs (make soak): 10,000 connections for 60 s")
    parser.add_argument("--redis-url", help="a Redis for the benchmarks that need one (they "
                        "write under their own key prefix); default: a private redis-server")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    if args.only:
        args.names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.names if name not in discover()]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)}; known: "
                         + ", ".join(discover()))
    else:
        args.names = discover()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"metrics-hub benchmarks, {datetime.datetime.now().isoformat(timespec='seconds')}: "
          f"Python {platform.python_version()}, msgpack {msgpack.version}, "
          f"{platform.machine()}, {platform.system()}" + (", quick" if args.quick else ""))
    results: dict[str, dict[str, float] | None] = {}
    failed: dict[str, str] = {}
    for name in args.names:
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        try:
            results[name] = run(name, args)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            results[name] = None
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED: {failed[name]}")
        else:
            print(f"({time.perf_counter() - started:.1f} s)")
    print(summary(results, failed))
    if args.json is not None:
        args.json.write_text(json.dumps(
            {name: figures for name, figures in results.items() if figures is not None},
            indent=2, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
