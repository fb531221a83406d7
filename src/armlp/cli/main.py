"""``armlp``: the command-line entry point.

Every :class:`~armlp.errors.ArmlpError` becomes one line on stderr and exit
code 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from armlp import __version__
from armlp.errors import ArmlpError

EXIT_USAGE = 2


#: Subcommand -> the module ``armlp.cli.<module>`` whose ``register(sub)``
#: adds it (a module may add several), in help order.
COMMANDS = {"scan": "scan", "trace": "trace", "verify": "verify", "run": "run",
            "attach": "run", "cflags": "run", "patch": "live", "unpatch": "live", "force": "live",
            "status": "live", "build": "build",
            "kernel": "kernel"}


class Parser(argparse.ArgumentParser):
    """Usage errors are one line too: what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"armlp: error: {self.prog}: {printable(message)} "
                              f"(see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of *command*: the one the user
    typed, so that ``armlp scan`` does not import what ``armlp run`` needs."""
    parser = Parser(
        prog="armlp",
        description="Live patching for 32-bit ARM code built with -pg (ARM with "
                    "-marm -mapcs-frame, or Thumb-2).",
    )
    parser.add_argument("--version", action="version", version=f"armlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = dict.fromkeys(COMMANDS.values()) if command is None else [COMMANDS[command]]
    for module in modules:
        importlib.import_module(f"armlp.cli.{module}").register(sub)
    return parser


def printable(text: object, limit: int = 2000) -> str:
    """*text* as one line a terminal shows as it is: control characters and
    undecodable bytes escaped, at most *limit* characters."""
    s = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return out if len(out) <= limit else out[:limit] + "..."


#: What commands left for the operating system to take back (a list only
#: while :func:`entry` runs armlp as a command; see :func:`keep_until_exit`).
_kept: list[object] | None = None


def keep_until_exit(obj: object) -> None:
    """Leave *obj* to the operating system when armlp runs as a command.

    A vmlinux scan builds about 400,000 objects; freeing them one by one as
    the command returns, then tearing the interpreter down, is a twentieth
    of the run and does nothing a process exit does not.  Called in-process
    (a test, a script), nothing is kept: the objects go as usual."""
    if _kept is not None:
        _kept.append(obj)


def entry() -> NoReturn:
    """The ``armlp`` command: :func:`main`, then an exit that frees nothing
    if a command left something to the operating system."""
    global _kept
    _kept = []
    status = main()
    if _kept:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after the first "--" belongs to the program (run, trace).
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if rest:
        if not hasattr(args, "args"):
            parser.error(f"armlp {args.command} takes no program arguments after '--'")
        args.args = [*args.args, *rest]
    try:
        return int(args.func(args))
    except ArmlpError as exc:
        print(f"armlp: error: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("armlp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except RecursionError:
        print("armlp: error: input nested too deeply to process", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if os.environ.get("ARMLP_DEBUG"):
            raise
        print(f"armlp: error: internal error ({type(exc).__name__}: {printable(exc, 300)}); "
              f"ARMLP_DEBUG=1 shows the traceback", file=sys.stderr)
        return EXIT_USAGE


def _quiet_stdout() -> None:
    """After a closed pipe (``armlp ... | head``): no second error at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    # As armlp.cli.main, not __main__: commands reach keep_until_exit there.
    from armlp.cli.main import entry as _entry
    _entry()
