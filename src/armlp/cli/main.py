"""``armlp``: the command-line entry point.

Every :class:`~armlp.errors.ArmlpError` becomes one line on stderr and exit
code 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from armlp import __version__
from armlp.errors import ArmlpError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armlp",
        description="Live patching for 32-bit ARM code built with -marm -pg -mapcs-frame.",
    )
    parser.add_argument("--version", action="version", version=f"armlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from armlp.cli import run, scan, trace
    scan.register(sub)
    trace.register(sub)
    from armlp.cli import verify
    verify.register(sub)
    run.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
