"""The Unicorn machine: loading, syscalls, calls, code writes, errors, counting.

Every program is built from C (or assembly) at test time with
armlp.program_build.build_program and the freestanding runtime.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from armlp.arm.t32 import NEAR_RANGE
from armlp.elf.image import ElfImage
from armlp.errors import CodeModificationError, MachineError
from armlp.machine.base import CodeWrite, Machine, read_word, write_word
from armlp.machine.emulator import MAGIC_RETURN, Emulator, StopReason
from armlp.program_build import build_program

HELLO = r"""
#include "armlp_fs.h"
int main(int argc, char **argv)
{
	fs_print("hello, world\n");
	fs_print_int(argc);
	fs_print(" ");
	fs_print(argv[1]);
	fs_print(" ");
	fs_print_int(-42);
	fs_print(" ");
	fs_print_hex(0xdeadbeef);
	fs_print("\n");
	fs_write_str(2, "to stderr\n");
	return 7;
}
"""

ARGS = r"""
#include "armlp_fs.h"
FS_NOINLINE int add6(int a, int b, int c, int d, int e, int f)
{
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}
FS_NOINLINE long long mix(long long a, int b, long long c)
{
	return a * 3 + b - c;
}
int main(void)
{
	fs_print_int(add6(1, 2, 3, 4, 5, 6));
	fs_print("\n");
	return 0;
}
"""

BRK = r"""
#include "armlp_fs.h"
int main(void)
{
	char *start = fs_sbrk(0);
	char *a = fs_sbrk(10000);
	if (a != start)
		return 1;
	for (int i = 0; i < 10000; i++)
		a[i] = (char)i;
	char *b = fs_sbrk(200000);
	if (b != a + 10000)
		return 2;
	b[199999] = 'z';
	if ((char *)fs_brk(0) != b + 200000)
		return 3;
	fs_print_hex((unsigned long)start);
	fs_print("\n");
	return 0;
}
"""

CLOCK = r"""
#include "armlp_fs.h"
FS_NOINLINE unsigned work(unsigned n)
{
	unsigned x = 1;
	for (unsigned i = 0; i < n; i++)
		x = x * 1103515245u + 12345u;
	return x;
}
int main(void)
{
	unsigned long long t0 = fs_now_ns();
	unsigned long long t1 = fs_now_ns();
	work(1000);
	unsigned long long t2 = fs_now_ns();
	fs_sleep_ns(5000000);
	unsigned long long t3 = fs_now_ns();
	struct fs_timespec rt;
	fs_clock_gettime(FS_CLOCK_REALTIME, &rt);
	fs_print_u64(t0); fs_print(" ");
	fs_print_u64(t1); fs_print(" ");
	fs_print_u64(t2); fs_print(" ");
	fs_print_u64(t3); fs_print(" ");
	fs_print_int(rt.tv_sec); fs_print("\n");
	return 0;
}
"""

SMC = r"""
#include "armlp_fs.h"
FS_NOINLINE int value(void) { return 1; }
FS_NOINLINE void marker(int i) { __asm__ volatile("" :: "r"(i) : "memory"); }
int main(void)
{
	int sum = 0;
	for (int i = 0; i < 10; i++) {
		sum += value();
		marker(i);
	}
	fs_print_int(sum);
	fs_print("\n");
	return 0;
}
"""

FAULTS = r"""
#include "armlp_fs.h"
FS_NOINLINE int poke(int *p) { *p = 5; return 0; }
FS_NOINLINE int spin(int i) { __asm__ volatile("" :: "r"(i) : "memory"); return i; }
FS_NOINLINE void forever(void) { for (int i = 0;; i++) spin(i); }
int main(int argc, char **argv)
{
	(void)argv;
	if (argc > 1)
		forever();
	fs_print("before\n");
	poke((int *)0x1234);
	fs_print("after\n");
	return 0;
}
"""

LOOP_S = r"""
	.syntax unified
	.arm
	.text
	.globl	count_loop
	.type	count_loop, %function
@ r0 = n > 0: 2 n + 1 instructions
count_loop:
1:	subs	r0, r0, #1
	bne	1b
	bx	lr
	.size	count_loop, . - count_loop

	.globl	main
	.type	main, %function
main:
	push	{r4, lr}
	mov	r4, #3
2:	mov	r0, #10
	bl	count_loop
	subs	r4, r4, #1
	bne	2b
	mov	r0, #0
	pop	{r4, pc}
	.size	main, . - main
	.section .note.GNU-stack,"",%progbits
"""

UNKNOWN = r"""
#include "armlp_fs.h"
int main(void)
{
	long r = fs_syscall(999, 1, 2, 3, 4, 5, 6);
	fs_print_int(r);
	fs_print("\n");
	return 0;
}
"""


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("emu-src")
    out: dict[str, Path] = {}
    for name, text, ext in [("hello", HELLO, "c"), ("args", ARGS, "c"), ("brk", BRK, "c"),
                            ("clock", CLOCK, "c"), ("smc", SMC, "c"), ("faults", FAULTS, "c"),
                            ("loop", LOOP_S, "S"), ("unknown", UNKNOWN, "c")]:
        path = src / f"{name}.{ext}"
        path.write_text(text)
        out[name] = build_program([path])
    return out


def sym(path: Path, name: str) -> int:
    return int(ElfImage(path).symbols.lookup(name).value)


# --- loading and syscalls ----------------------------------------------------

def test_is_a_machine(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["hello"])
    assert isinstance(emu, Machine)
    assert emu.threads() == [1]


def test_hello_world_output_and_exit_status(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["hello"], ["hello", "arg-one"])
    stop = emu.run()
    assert stop.reason is StopReason.EXITED
    assert stop.exit_status == 7 == emu.exit_status
    assert emu.stdout == b"hello, world\n2 arg-one -42 0xdeadbeef\n"
    assert emu.stderr == b"to stderr\n"
    assert emu.unknown_syscalls == []
    with pytest.raises(MachineError, match="exited"):
        emu.run()


def test_same_output_as_qemu(progs: dict[str, Path]) -> None:
    import subprocess
    proc = subprocess.run(["qemu-arm", progs["hello"], "arg-one"], capture_output=True,
                          check=False, timeout=60)
    emu = Emulator.from_elf(progs["hello"], ["hello", "arg-one"])
    emu.run()
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, emu.stdout, emu.stderr)


def test_brk(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["brk"])
    assert emu.run().exit_status == 0, emu.stdout
    start = int(emu.stdout.strip(), 16)
    assert start == emu.brk_start
    assert emu.brk == start + 210000
    assert emu.read(start, 4) == bytes([0, 1, 2, 3])
    assert emu.read(start + 209999, 1) == b"z"


def test_clock_monotonic_virtual_and_reproducible(progs: dict[str, Path]) -> None:
    outs = []
    for counting in (True, True, False):
        emu = Emulator.from_elf(progs["clock"], count_instructions=counting)
        assert emu.run().exit_status == 0
        outs.append(emu.stdout)
        t0, t1, t2, t3, rt = map(int, emu.stdout.split())
        assert t0 < t1 < t2 < t3
        assert t3 - t2 >= 5_000_000            # nanosleep advanced the clock
        assert t3 - t2 < 6_000_000
        assert rt > 1_600_000_000
        if counting:
            assert t2 - t1 >= 4000             # 1000 iterations of >= 4 instructions, 1 ns each
    assert outs[0] == outs[1]                  # deterministic


def test_unknown_syscall_is_enosys_and_recorded(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["unknown"])
    emu.run()
    assert emu.stdout == b"-38\n"
    [u] = emu.unknown_syscalls
    assert (u.number, u.args) == (999, (1, 2, 3, 4, 5, 6))


# --- calls --------------------------------------------------------------------

def test_call_with_six_args(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["args"])
    add6 = sym(progs["args"], "add6")
    before = emu.get_regs()
    assert emu.call(add6, [1, 2, 3, 4, 5, 6]) == 91
    assert emu.call(add6, [10, 20, 30, 40, 50, 60]) == 910
    assert emu.call(add6, [0, 0, 0, 0, 0, -1]) == (-6) & 0xFFFFFFFF
    assert emu.get_regs() == before            # the borrowed thread is restored
    mix = sym(progs["args"], "mix")
    # long long a in r0:r1, int b in r2, long long c on the stack (8-aligned)
    a, b, c = 1 << 33, 7, 5
    emu.call(mix, [a & 0xFFFFFFFF, a >> 32, b, 0, c & 0xFFFFFFFF, c >> 32])
    assert emu.reg("r0") == before.r[0]
    # the program still runs normally after calls
    assert emu.run().exit_status == 0
    assert emu.stdout == b"91\n"


def test_call_64bit_result(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["args"])
    mix = sym(progs["args"], "mix")
    a, b, c = (1 << 33) + 5, 7, 3
    regs = emu.call_regs(mix, [a & 0xFFFFFFFF, a >> 32, b, 0, c & 0xFFFFFFFF, c >> 32],
                         until=MAGIC_RETURN)
    assert regs.r[0] | regs.r[1] << 32 == a * 3 + b - c


def test_entry_regs_and_call_regs(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["args"])
    add6 = sym(progs["args"], "add6")
    preset = {f"r{i}": 0x1000 * i + 7 for i in range(4, 12)}
    entry = emu.entry_regs(add6, [1, 2, 3, 4, 5, 6], regs=preset)
    assert entry.pc == add6
    assert entry.r[:4] == [1, 2, 3, 4]
    assert entry.r[4:12] == [0x1000 * i + 7 for i in range(4, 12)]
    assert entry.lr == MAGIC_RETURN
    assert entry.sp % 8 == 0
    assert struct.unpack("<II", emu.read(entry.sp, 8)) == (5, 6)
    # stop inside the function: after the prologue's "sub fp, ip, #4"
    inner = emu.call_regs(add6, [1, 2, 3, 4, 5, 6], until=add6 + 12, regs=preset)
    assert inner.r[11] == entry.sp - 4        # fp -> saved pc slot of the frame
    with pytest.raises(MachineError, match="returned without reaching"):
        emu.call_regs(add6, [1, 2, 3, 4, 5, 6], until=sym(progs["args"], "main"))


def test_call_budget_and_restore(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["faults"], ["faults", "loop"])
    before = emu.get_regs()
    t = time.monotonic()
    with pytest.raises(MachineError, match="did not return within 100000"):
        emu.call(sym(progs["faults"], "forever"), max_instructions=100_000)
    assert time.monotonic() - t < 10
    assert emu.get_regs() == before


# --- memory -------------------------------------------------------------------

def test_alloc_near_is_rwx_and_in_branch_range(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["args"])
    text = sym(progs["args"], "add6")
    blocks = [emu.alloc(0x3000, near=text) for _ in range(3)]
    for b in blocks:
        assert b % 0x1000 == 0
        assert abs(b - text) < NEAR_RANGE and abs(b + 0x3000 - text) < NEAR_RANGE
    assert len({b for b in blocks}) == 3
    far = emu.alloc(0x100)
    # write code: mov r0, #42; bx lr
    emu.write(blocks[0], struct.pack("<II", 0xE3A0002A, 0xE12FFF1E))
    assert emu.call(blocks[0]) == 42
    write_word(emu, far, 0x12345678)
    assert read_word(emu, far) == 0x12345678
    emu.free(far, 0x100)
    with pytest.raises(MachineError, match="cannot read"):
        emu.read(far, 4)
    with pytest.raises(MachineError, match="not a block from alloc"):
        emu.free(text, 0x1000)
    # the brk heap is not taken by near allocations (placed highest first)
    assert all(b > emu.brk_start + (8 << 20) for b in blocks)


# --- code writes --------------------------------------------------------------

def _stop_in_loop(emu: Emulator, prog: Path) -> None:
    """Stop at the first marker() call with a hook, so that nothing else
    (a change of stop addresses, an instruction budget) makes Unicorn drop
    its translations: only the code write itself may."""
    marker = sym(prog, "marker")

    def at_marker(e: Emulator, address: int, size: int) -> None:
        e.stop()

    hook = emu.hook_code(at_marker, marker, marker)
    stop = emu.run()
    emu.remove_hook(hook)
    assert stop.reason is StopReason.STOPPED and stop.pc == marker


def _value_site(emu: Emulator, value: int) -> int:
    code = emu.read(value, 64)
    off = code.find(struct.pack("<I", 0xE3A00001))      # mov r0, #1
    assert off > 0
    return value + off


def test_code_write_drops_translated_code(progs: dict[str, Path]) -> None:
    """value() ran (and was translated) before the write: the loop must see
    the new code from the next iteration on."""
    prog = progs["smc"]
    emu = Emulator.from_elf(prog)
    _stop_in_loop(emu, prog)                  # value() ran once
    site = _value_site(emu, sym(prog, "value"))
    emu.write_code([CodeWrite(site, struct.pack("<I", 0xE3A00001),
                              struct.pack("<I", 0xE3A00064))])    # mov r0, #100
    assert emu.run().exit_status == 0
    assert emu.stdout == b"901\n"


def test_plain_write_keeps_stale_code(progs: dict[str, Path]) -> None:
    """The reason write_code flushes: Unicorn runs the old translation."""
    prog = progs["smc"]
    emu = Emulator.from_elf(prog)
    _stop_in_loop(emu, prog)
    site = _value_site(emu, sym(prog, "value"))
    emu.write(site, struct.pack("<I", 0xE3A00064))
    emu.run()
    assert emu.stdout == b"10\n"


def test_code_write_between_run_until_stops(progs: dict[str, Path]) -> None:
    prog = progs["smc"]
    emu = Emulator.from_elf(prog)
    marker = sym(prog, "marker")
    for i in range(3):
        regs = emu.run_until(marker)
        assert regs.pc == marker and regs.r[0] == i
    site = _value_site(emu, sym(prog, "value"))
    emu.write_code([CodeWrite(site, struct.pack("<I", 0xE3A00001),
                              struct.pack("<I", 0xE3A00064))])
    emu.run()
    assert emu.stdout == b"703\n"


def test_cas_refusal_writes_nothing(progs: dict[str, Path]) -> None:
    prog = progs["smc"]
    emu = Emulator.from_elf(prog)
    value = sym(prog, "value")
    site = _value_site(emu, value)
    before = emu.read(value, 64)
    good = CodeWrite(value, before[:4], struct.pack("<I", 0xE1A00000))
    bad = CodeWrite(site, struct.pack("<I", 0xE3A00002), struct.pack("<I", 0xE3A00064))
    with pytest.raises(CodeModificationError) as exc:
        emu.write_code([good, bad])
    assert f"{site:#010x}" in str(exc.value)
    assert struct.pack("<I", 0xE3A00002).hex() in str(exc.value)    # expected
    assert struct.pack("<I", 0xE3A00001).hex() in str(exc.value)    # found
    assert emu.read(value, 64) == before
    assert emu.run().exit_status == 0
    assert emu.stdout == b"10\n"
    with pytest.raises(MachineError, match="cannot read"):
        emu.write_code([CodeWrite(0x8, b"\0" * 4, b"\1" * 4)])


# --- errors -------------------------------------------------------------------

def test_invalid_access_is_machine_error(progs: dict[str, Path]) -> None:
    prog = progs["faults"]
    emu = Emulator.from_elf(prog)
    with pytest.raises(MachineError) as exc:
        emu.run()
    msg = str(exc.value)
    assert "0x00001234" in msg and "write" in msg
    poke = sym(prog, "poke")
    pc = int(msg.split("pc ")[1].split()[0], 16)
    assert poke <= pc < poke + 64
    assert emu.stdout == b"before\n"


def test_fetch_from_unmapped_is_machine_error(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["hello"])
    with pytest.raises(MachineError, match="0x00400000"):
        emu.call(0x400000)


def test_hook_exception_surfaces(progs: dict[str, Path]) -> None:
    prog = progs["faults"]
    emu = Emulator.from_elf(prog, ["faults", "loop"])
    calls = [0]

    class Boom(Exception):
        pass

    def hook(e: Emulator, address: int, size: int) -> None:
        calls[0] += 1
        if calls[0] == 1000:
            raise Boom("from the hook")

    emu.hook_code(hook, sym(prog, "spin"), sym(prog, "spin"))
    result: list[BaseException | None] = []

    def runner() -> None:
        try:
            emu.run()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    th = threading.Thread(target=runner, daemon=True)
    th.start()
    th.join(30)
    assert not th.is_alive(), "run() hung after a hook raised"
    assert isinstance(result[0], Boom)
    assert calls[0] == 1000


def test_syscall_handler_exception_surfaces(progs: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    emu = Emulator.from_elf(progs["brk"])

    def broken(address: int) -> int:
        raise RuntimeError("brk broke")

    monkeypatch.setattr(emu, "set_brk", broken)
    with pytest.raises(RuntimeError, match="brk broke"):
        emu.run()


def test_limit_stops_infinite_loop(progs: dict[str, Path]) -> None:
    emu = Emulator.from_elf(progs["faults"], ["faults", "loop"], count_instructions=True)
    stop = emu.run(max_instructions=50_000)
    assert stop.reason is StopReason.LIMIT
    assert emu.instructions == 50_000
    stop = emu.run(max_instructions=1_000)
    assert emu.instructions == 51_000


# --- instruction counting ------------------------------------------------------

def test_instruction_count_of_known_loop(progs: dict[str, Path]) -> None:
    prog = progs["loop"]
    emu = Emulator.from_elf(prog, count_instructions=True)
    loop = sym(prog, "count_loop")
    for n in (1, 2, 10, 1000):
        start = emu.instructions
        assert start is not None
        emu.call(loop, [n])
        assert emu.instructions == start + 2 * n + 1


def test_instruction_count_deterministic(progs: dict[str, Path]) -> None:
    prog = progs["loop"]
    counts = []
    for _ in range(2):
        emu = Emulator.from_elf(prog, count_instructions=True)
        assert emu.run().exit_status == 0
        counts.append(emu.instructions)
    # _start (~11) + main: 2 + 3 x (2 + 21 + 2) + 2 ... + exit
    assert counts[0] == counts[1]
    assert 3 * 21 + 10 < (counts[0] or 0) < 3 * 21 + 40
    emu = Emulator.from_elf(prog)
    assert emu.instructions is None
    emu.run()


def test_budget_stop_is_exact_and_resumable(progs: dict[str, Path]) -> None:
    prog = progs["smc"]
    ref = Emulator.from_elf(prog, count_instructions=True)
    ref.run()
    total = ref.instructions
    assert total is not None
    for n in (1, 7, 50, total - 1):
        emu = Emulator.from_elf(prog, count_instructions=True)
        assert emu.run(max_instructions=n).reason is StopReason.LIMIT
        assert emu.instructions == n
        assert emu.run().exit_status == 0
        assert emu.instructions == total
        assert emu.stdout == ref.stdout


# --- the build helper ------------------------------------------------------------

def test_build_program_caches_by_content(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text('#include "armlp_fs.h"\nint main(void) { fs_print("one\\n"); return 0; }\n')
    a = build_program([src])
    mtime = a.stat().st_mtime_ns
    assert build_program([src]) == a and a.stat().st_mtime_ns == mtime
    src.write_text('#include "armlp_fs.h"\nint main(void) { fs_print("two\\n"); return 0; }\n')
    b = build_program([src])
    assert b != a
    out = build_program([src], tmp_path / "bin" / "p")
    assert out == tmp_path / "bin" / "p" and out.read_bytes() == b.read_bytes()
    emu = Emulator.from_elf(out)
    emu.run()
    assert emu.stdout == b"two\n"
    # -O0 changes the flags, hence the key; the runtime has no mcount sites
    c = build_program([src], cflags=["-O0"])
    assert c not in (a, b)
    syms = ElfImage(c).symbols
    assert syms.lookup("__gnu_mcount_nc").value
    assert emu.read(sym(out, "__gnu_mcount_nc"), 12) == struct.pack(
        "<III", 0xE1A0C00E, 0xE49DE004, 0xE12FFF1C)    # mov ip, lr; pop {lr}; bx ip


def test_static_glibc_program_runs(tmp_path: Path) -> None:
    """Static glibc needs the kernel's user helpers (TLS) and mprotect (RELRO):
    the emulator runs it, and armlp trace traces it."""
    from conftest import armlp

    prog = build_program([Path(__file__).parent / "programs" / "glibc_hello.c"],
                         tmp_path / "glibc_hello", freestanding=False)
    emu = Emulator.from_elf(prog)
    stop = emu.run()
    assert stop.reason is StopReason.EXITED and stop.exit_status == 0
    assert emu.stdout == b"r=42\n"
    r = armlp("trace", prog, "--filter", "work")
    assert r.code == 0, r.err
    assert "work <- main" in r.out
