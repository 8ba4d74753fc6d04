"""The `metrics-hub` command: one entry point whose subcommands start each part of the hub."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module:function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collector": ("collectors.main:main", "run the collector daemon of this node"),
    "gateway": ("gateway.main:main", "run a WebSocket gateway (dashboard on /, protocol on /ws)"),
    "demo": ("hub.demo:main", "start Redis, collectors, simulated nodes and a gateway locally"),
    "status": ("hub.status:main", "print the hub's state: nodes, gateways, streams"),
    "tail": ("hub.status:tail_main", "print live updates of a topic pattern"),
}


def usage() -> str:
    lines = ["usage: metrics-hub COMMAND [options]   (metrics-hub COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def resolve(command: str) -> Callable[[list[str]], int] | None:
    """The main function of a subcommand, or None where that part is not built yet."""
    target, _ = COMMANDS[command]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"metrics-hub {version('metrics-hub')}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"metrics-hub: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    func = resolve(command)
    if func is None:
        print(f"metrics-hub {command}: not yet built in this version", file=sys.stderr)
        return 3
    return func(rest)


if __name__ == "__main__":
    sys.exit(main())
