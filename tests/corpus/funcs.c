/* scan test corpus: one function per prologue shape.  Every function is
 * global or noinline+noipa so it exists at every -O level. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define KEEP __attribute__((noinline, noipa))

struct big { int a, b, c, d, e; };

volatile int sink;

KEEP int small_leaf(int x) { return x + 1; }

KEEP int frame_4k(int i) {
    volatile char buf[5000];
    buf[i] = (char)i;
    return buf[i + 1];
}

KEEP int frame_64k(int i) {
    volatile char buf[70000];
    buf[i] = (char)i;
    return buf[i + 1];
}

KEEP int use_alloca(int n) {
    volatile char *p = __builtin_alloca(n);
    p[0] = 1;
    return p[n - 1];
}

KEEP int use_vla(int n) {
    volatile char buf[n];
    buf[0] = 2;
    return buf[n - 1];
}

KEEP int many_args(int a, int b, int c, int d, int e, int f, int g) {
    return a + b * c - d + e * f - g;
}

KEEP long long args64(long long a, int b, long long c) { return a * b + c; }

KEEP int varargs_sum(int n, ...) {
    va_list ap;
    int s = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        s += va_arg(ap, int);
    va_end(ap);
    return s;
}

KEEP struct big struct_ret(int x) {
    struct big b = { x, x + 1, x + 2, x + 3, x + 4 };
    return b;
}

KEEP __attribute__((noreturn)) void never_returns(int code) {
    sink = code;
    exit(code);
}

KEEP int recursive_fib(int n) { return n < 2 ? n : recursive_fib(n - 1) + recursive_fib(n - 2); }

KEEP __attribute__((no_instrument_function)) int not_traced(int x) { return x * 3; }

__attribute__((naked)) int naked_fn(void) {
    __asm__ volatile("mov r0, #42\n\tbx lr");
}

static KEEP int dup_static(int x) { sink = x; return x * 5; }

KEEP int call_dup_a(int x) { return dup_static(x) + 1; }

KEEP int calls_many(int x) {
    struct big b = struct_ret(x);
    return small_leaf(x) + frame_4k(x & 7) + frame_64k(x & 7) + use_alloca(8 + (x & 7))
           + use_vla(8 + (x & 7)) + many_args(x, 2, 3, 4, 5, 6, 7) + (int)args64(x, 2, 3)
           + varargs_sum(3, x, 2, 3) + b.e + recursive_fib(5) + not_traced(x) + naked_fn();
}
