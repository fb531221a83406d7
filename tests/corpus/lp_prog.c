/* The livepatch test program: functions of several shapes, a static pair,
 * a recursive function, and a static variable patches read. */
#include <stdarg.h>
#include "armlp_fs.h"

#define KEEP __attribute__((noinline, noipa))

static int scale __attribute__((used)) = 7;

KEEP int leaf(int x) { return x + 1; }
KEEP int many(int a, int b, int c, int d, int e, int f) { return a + b + c + d + e + f; }
KEEP long long wide(long long a, int b, long long c) { return a * b + c; }
KEEP int vsum(int n, ...)
{
	va_list ap;
	int s = 0;
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		s += va_arg(ap, int);
	va_end(ap);
	return s;
}
struct five { int a, b, c, d, e; };
KEEP struct five mkfive(int x) { struct five f = { x, x, x, x, x }; return f; }
KEEP int five_sum(int x) { struct five f = mkfive(x); return f.a + f.b + f.c + f.d + f.e; }
KEEP int bigframe(int i) { volatile char buf[6000]; buf[i] = (char)i; return buf[i] + 1; }
static KEEP int helper(int x) { return x * 2; }
KEEP int use_helper(int x) { return helper(x) + scale; }
volatile int rec_sink;
/* The store after the call keeps GCC from turning the recursion into a loop. */
KEEP int rec(int n)
{
	if (n <= 0)
		return 0;
	int r = rec(n - 1);
	rec_sink = r;
	return r + 1;
}
__attribute__((no_instrument_function)) int untraced(int x) { return x; }
/* What the selftests' test_klp_state patches change (the kernel's
 * console_loglevel; 4 is the kernel's default). */
int console_loglevel = 4;

int main(void)
{
	return (leaf(1) + many(1, 2, 3, 4, 5, 6) + (int)wide(1, 2, 3) + vsum(2, 1, 2) +
		five_sum(1) + bigframe(1) + use_helper(1) + rec(3) + untraced(0)) & 1;
}
