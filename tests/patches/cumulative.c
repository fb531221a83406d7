/* An atomic replace: many() changed, every enabled patch replaced; what they
 * changed and this does not (leaf) runs its original code again. */
#include <armlp/livepatch.h>
ARMLP_PATCH("cumulative");
ARMLP_ATOMIC_REPLACE;
int many_cumulative(int a, int b, int c, int d, int e, int f) { return -(a + b + c + d + e + f); }
ARMLP_REPLACE(many, many_cumulative);
