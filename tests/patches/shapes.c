/* Replaces one function of each prologue shape of lp_prog.c. */
#include <stdarg.h>
#include <armlp/livepatch.h>

ARMLP_PATCH("shapes");

struct five { int a, b, c, d, e; };

int leaf_v2(int x) { return x + 1000; }
int many_v2(int a, int b, int c, int d, int e, int f) { return 2 * (a + b + c + d + e + f); }
long long wide_v2(long long a, int b, long long c) { return a * b - c; }
int vsum_v2(int n, ...)
{
	va_list ap;
	int s = 0;
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		s += 10 * va_arg(ap, int);
	va_end(ap);
	return s;
}
struct five mkfive_v2(int x) { struct five f = { x, 2 * x, 3 * x, 4 * x, 5 * x }; return f; }
int bigframe_v2(int i) { volatile char buf[7000]; buf[i] = (char)(i + 5); return buf[i] + 100; }

ARMLP_REPLACE(leaf, leaf_v2);
ARMLP_REPLACE(many, many_v2);
ARMLP_REPLACE(wide, wide_v2);
ARMLP_REPLACE(vsum, vsum_v2);
ARMLP_REPLACE(mkfive, mkfive_v2);
ARMLP_REPLACE(bigframe, bigframe_v2);
