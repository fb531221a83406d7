/* The same patch without the replace (the selftests' replace=0). */
#include <armlp/livepatch.h>
ARMLP_PATCH("test_klp_atomic_replace");
int many_replace(int a, int b, int c, int d, int e, int f) { return a + b + c + d + e + f + 7; }
ARMLP_REPLACE(many, many_replace);
