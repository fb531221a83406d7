"""A stock ARM kernel to try kernel patches on: Debian's armhf kernel under
``qemu-system-arm -M virt``, a busybox shell on its serial console.

Tests and the demo load patch modules here exactly as on a device (insmod,
sysfs, rmmod); :class:`Guest` runs shell commands and returns their output and
status.  The initramfs is written here (newc cpio): busybox, an init that
mounts proc, sysfs, devtmpfs and tracefs, and the files asked for under
``/armlp``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from armlp.errors import ArmlpError
from armlp.kernel.kit import KernelKit, guest_files

READY = "ARMLP-GUEST-READY"
INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin PS1=
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
stty -echo
echo {READY}
# The shell is not pid 1: init must never exit, whatever the shell does.
sh
echo "ARMLP-GUEST-SHELL-EXITED $?"
exec sleep 2147483647
"""
#: Kernel log lines that mean something went wrong.
BAD_LOG = re.compile(r"WARNING:|BUG:|Oops|Unable to handle|Internal error|"
                     r"ftrace bug|ftrace failed|Kernel panic|stack-protector|"
                     r"rcu.*stall|soft lockup|hung_task", re.I)


class GuestError(ArmlpError):
    """The guest did not boot, died, or a command failed."""


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of (name, mode, data, (rdev major, minor)) entries."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, (major, minor)) in enumerate(
            [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields)
        out += name.encode() + b"\0"
        pad()
        out += data
        pad()
    return bytes(out)


def initramfs(busybox: Path, files: Mapping[str, Path]) -> bytes:
    """busybox, the init, a console node and *files* (guest name -> host path)
    under /armlp."""
    d, x, f = 0o040755, 0o100755, 0o100644
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (name, d, b"", (0, 0)) for name in ("bin", "dev", "proc", "sys", "tmp", "armlp")]
    entries += [("dev/console", 0o020600, b"", (5, 1)),
                ("bin/busybox", x, busybox.read_bytes(), (0, 0)),
                ("init", x, INIT.encode(), (0, 0))]
    entries += [(f"armlp/{name}", f, path.read_bytes(), (0, 0)) for name, path in files.items()]
    return cpio_newc(entries)


class Guest:
    """One booted guest; a context manager that powers it off."""

    def __init__(self, kit: KernelKit, files: Mapping[str, Path] | None = None, *,
                 cpus: int = 2, memory_mb: int = 256, boot_timeout: float = 120,
                 loglevel: int = 1) -> None:
        self.kit = kit
        self.files = dict(files or {})
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.loglevel = loglevel
        self._out = bytearray()
        self._cond = threading.Condition()
        self._seq = 0
        self._pos = 0
        self._dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._reading: threading.Thread | None = None
        self.boot_seconds = 0.0

    def __enter__(self) -> Guest:
        try:
            self.boot()
        except BaseException:
            self.close()        # __exit__ does not run: no qemu, no directory left
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def boot(self) -> None:
        if shutil.which("qemu-system-arm") is None:
            raise GuestError("qemu-system-arm not found (install qemu-system-arm)")
        vmlinuz, busybox = guest_files(self.kit)
        self._dir = Path(tempfile.mkdtemp(prefix="armlp-guest-"))
        initrd = self._dir / "initrd.cpio"
        initrd.write_bytes(initramfs(busybox, self.files))
        cmd = ["qemu-system-arm", "-M", "virt", "-cpu", "cortex-a15",
               "-smp", str(self.cpus), "-m", str(self.memory_mb), "-nic", "none",
               "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
               "-kernel", str(vmlinuz), "-initrd", str(initrd),
               "-append", f"console=ttyAMA0 rdinit=/init quiet loglevel={self.loglevel} panic=-1"]
        start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reading = threading.Thread(target=self._reader, daemon=True)
        self._reading.start()
        self._wait_for(READY, self.boot_timeout)
        self.run("true")            # the shell's banner is not a command's output
        self.boot_seconds = time.monotonic() - start

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self._out += chunk
                self._cond.notify_all()

    def _wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._out[self._pos:].decode("utf-8", "replace")
                m = rx.search(text)
                if m:
                    self._pos += len(text[:m.end()].encode())
                    return m
                left = deadline - time.monotonic()
                if self.proc is None or self.proc.poll() is not None:
                    raise GuestError(f"the guest died: {self.console_tail()}")
                if left <= 0:
                    raise GuestError(f"no {pattern!r} from the guest within {timeout:.0f} s: "
                                     f"{self.console_tail()}")
                self._cond.wait(min(left, 0.5))

    def console_tail(self, n: int = 600) -> str:
        return self._out[-n:].decode("utf-8", "replace").replace("\r", "")

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run *command* in the guest's shell: its status and output."""
        assert self.proc is not None and self.proc.stdin is not None
        self._seq += 1
        mark = f"@@{self._seq}@@"
        # The status echo is written so that its own text cannot match.
        try:
            self.proc.stdin.write(f"{command}\necho \"@@$?@{self._seq}@@\"\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise GuestError(f"the guest died: {self.console_tail()}") from None
        m = self._wait_for(rf"(?s)(.*?)@@(\d+)@{mark[2:]}", timeout)
        return int(m.group(2)), m.group(1).replace("\r", "").strip("\n")

    def sh(self, command: str, timeout: float = 60) -> str:
        """Run *command*; its output, or GuestError if it failed."""
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise GuestError(f"guest: {command!r} exited {rc}: {out}")
        return out

    def spawn(self, command: str) -> None:
        """Start *command* in the background, detached from the shell (busybox
        sh on a console ends when a job of its own finishes)."""
        self.sh(f"({command} </dev/null >/dev/null 2>&1 &)")

    def dmesg(self) -> str:
        return self.sh("dmesg", timeout=180)

    def bad_log_lines(self, log: str | None = None) -> list[str]:
        """Kernel log lines that report a warning, an oops or a hang (in
        *log*, else in a fresh dmesg: slow over the serial console)."""
        text = self.dmesg() if log is None else log
        return [ln for ln in text.splitlines() if BAD_LOG.search(ln)]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # Ordering: the console's descriptor is closed only once its reader
        # has seen its end (qemu is gone), never under a read in progress,
        # which could then read whatever file took the number (a reader
        # still there after 10 s keeps it open).
        if self._reading is not None:
            self._reading.join(timeout=10)
        reading = self._reading is not None and self._reading.is_alive()
        if self.proc is not None:
            for f in (self.proc.stdin, None if reading else self.proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
