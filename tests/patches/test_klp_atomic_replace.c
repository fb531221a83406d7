/* The kernel selftests' test_klp_atomic_replace (replace=1), for a program:
 * many() changed, every other enabled patch replaced. */
#include <armlp/livepatch.h>
ARMLP_PATCH("test_klp_atomic_replace");
ARMLP_ATOMIC_REPLACE;
int many_replace(int a, int b, int c, int d, int e, int f) { return a + b + c + d + e + f + 7; }
ARMLP_REPLACE(many, many_replace);
