/* The stress patch: f() and g() return values the checker accepts as new. */
#include <armlp/livepatch.h>
ARMLP_PATCH("stress");
int f_new(int x) { return x + 1001; }
long long g_new(long long a, int b, int c, int d, int e) { return 2 * (a + b + c + d + e); }
ARMLP_REPLACE(f, f_new);
ARMLP_REPLACE(g, g_new);
