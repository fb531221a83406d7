"""The compiler wrapper ``armlp build`` points ``$CC`` at (kpatch-build's
``kpatch-cc``): records every C compilation of the program's build.

Each C source compiled is recorded as one object in ``$ARMLP_BUILD_RECORD``
(``N.o`` and ``N.json``: the source, the directory, the flags), built with
the program's own flags plus ``-ffunction-sections -g``: one section per
function, so functions are compared one by one, and debug information, which
says what was inlined where.  Neither changes the code GCC generates
(``-fdata-sections`` would: on ARM it turns off section anchors); the base
proof checks that claim against the running binary every time.

Only the standard library is imported: this runs once per compiler call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

#: What every recorded compile adds to the program's flags.
RECORD_FLAGS = ("-ffunction-sections", "-g")
C_SUFFIXES = (".c",)
#: Options that take the next argument as their value.
_WITH_VALUE = {"-o", "-MF", "-MT", "-MQ", "-x", "-include", "-imacros", "-isystem", "-I",
               "-D", "-U", "-idirafter", "-iquote", "-L", "-l", "-Xlinker", "-T", "-u",
               "-z", "-e", "-Xassembler", "-Xpreprocessor", "--sysroot"}
#: Options that only matter when linking, dropped from a recorded compile.
_LINK_ONLY = ("-l", "-L", "-Wl,", "-Xlinker", "-static", "-shared", "-rdynamic",
              "-nostartfiles", "-nostdlib", "-pie", "-no-pie")
#: Options that make the compiler do something other than compile to an object.
_NOT_COMPILING = {"-E", "-S", "-M", "-MM", "--version", "-v", "-dumpversion", "-dumpmachine",
                  "-print-file-name", "-print-prog-name"}


def split(args: list[str]) -> tuple[list[str], list[str], str | None, bool]:
    """``(flags, C sources, -o value, -c given)`` of a compiler command line;
    *flags* keeps every option that applies to compiling, link-only ones out."""
    flags: list[str] = []
    sources: list[str] = []
    output: str | None = None
    compile_only = False
    language: str | None = None         # -x LANG: what the files after it are
    i = 0
    while i < len(args):
        a = args[i]
        if a in _WITH_VALUE and i + 1 < len(args):
            if a == "-o":
                output = args[i + 1]
            elif a not in ("-L", "-l", "-Xlinker", "-T", "-u", "-z", "-e"):
                flags += [a, args[i + 1]]
            if a == "-x":
                language = None if args[i + 1] == "none" else args[i + 1]
            i += 2
            continue
        if a == "-c":
            compile_only = True
        elif not a.startswith("-") and (language == "c" if language else
                                        a.endswith(C_SUFFIXES)):
            sources.append(a)
        elif a.startswith("-") and not a.startswith(_LINK_ONLY):
            flags.append(a)
        i += 1
    return flags, sources, output, compile_only


def record(real: str, where: str, flags: list[str], source: str, output: str, *,
           built: bool = True) -> int:
    """Compile *source* to *output* with the recording flags; copy the object
    and its description into *where* (*built*: the build itself uses
    *output*; else it is the wrapper's own, and the record names none)."""
    rc = subprocess.call([real, *flags, *RECORD_FLAGS, "-c", source, "-o", output])
    if rc == 0:
        stem = os.path.join(where, f"{time.monotonic_ns()}-{os.getpid()}")
        shutil.copyfile(output, stem + ".o")
        with open(stem + ".json", "w", encoding="utf-8") as f:
            json.dump({"source": os.path.abspath(source), "cwd": os.getcwd(), "flags": flags,
                       "object": os.path.abspath(output) if built else None}, f)
    return rc


def main(argv: list[str]) -> int:
    real = os.environ.get("ARMLP_BUILD_CC", "")
    where = os.environ.get("ARMLP_BUILD_RECORD", "")
    if not real:
        print("armlp-cc: ARMLP_BUILD_CC is not set (run through armlp build)", file=sys.stderr)
        return 2
    flags, sources, output, compile_only = split(argv)
    # A build system's probe (Kbuild's `-x c /dev/null`) is no source file.
    sources = [src for src in sources if os.path.isfile(src)]
    if not where or not sources or _NOT_COMPILING.intersection(argv):
        return subprocess.call([real, *argv])
    if compile_only and len(sources) == 1:
        # The usual `cc -c x.c -o x.o`: one compile serves the build and the record.
        out = output or os.path.splitext(os.path.basename(sources[0]))[0] + ".o"
        return record(real, where, flags, sources[0], out)
    # Several sources, or compile and link at once: record each source
    # separately, then run the command as written.
    tmp = os.path.join(where, "tmp")
    os.makedirs(tmp, exist_ok=True)
    for i, src in enumerate(sources):
        obj = os.path.join(tmp, f"{os.getpid()}-{i}.o")
        rc = record(real, where, flags, src, obj, built=False)
        if rc:
            return rc
    return subprocess.call([real, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
