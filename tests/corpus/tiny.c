/* A small freestanding program (-nostdlib -static) for the bad-input tests
 * and the fuzzer: a few -pg functions, its own __gnu_mcount_nc and _start. */
#define KEEP __attribute__((noinline, noipa))

__asm__(
    ".global __gnu_mcount_nc\n"
    ".type __gnu_mcount_nc, %function\n"
    "__gnu_mcount_nc:\n"
    "    mov ip, lr\n"
    "    pop {lr}\n"
    "    bx ip\n"
    ".size __gnu_mcount_nc, . - __gnu_mcount_nc\n");

volatile int counter;

static KEEP int helper(int x) { counter += x; return x * 2; }

KEEP int add3(int a, int b, int c) { return helper(a) + b + c; }

KEEP int sum_n(int n, ...) { return n + helper(n); }

KEEP int big_frame(int i) {
    volatile char buf[6000];
    buf[i] = 1;
    return buf[i + 3];
}

__attribute__((no_instrument_function)) void _start(void) {
    int r = add3(1, 2, 3) + sum_n(2, 1, 1) + big_frame(4);
    register int r0 __asm__("r0") = r & 0x7f;
    register int r7 __asm__("r7") = 1;
    __asm__ volatile("svc #0" :: "r"(r0), "r"(r7));
    for (;;) {}
}
