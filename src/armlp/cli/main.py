"""``armlp``: the command-line entry point.

Every :class:`~armlp.errors.ArmlpError` becomes one line on stderr and exit
code 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from armlp import __version__
from armlp.errors import ArmlpError

EXIT_USAGE = 2


#: Subcommand -> the module ``armlp.cli.<module>`` whose ``register(sub)``
#: adds it (a module may add several), in help order.
COMMANDS = {"scan": "scan", "trace": "trace", "verify": "verify", "run": "run",
            "attach": "run", "cflags": "run", "patch": "live", "unpatch": "live", "status": "live"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of *command*: the one the user
    typed, so that ``armlp scan`` does not import what ``armlp run`` needs."""
    parser = argparse.ArgumentParser(
        prog="armlp",
        description="Live patching for 32-bit ARM code built with -marm -pg -mapcs-frame.",
    )
    parser.add_argument("--version", action="version", version=f"armlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = dict.fromkeys(COMMANDS.values()) if command is None else [COMMANDS[command]]
    for module in modules:
        importlib.import_module(f"armlp.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ArmlpError as exc:
        print(f"armlp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("armlp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
