/* One of three stacked patches of leaf(): leaf(x) = x + 100. */
#include <armlp/livepatch.h>
ARMLP_PATCH("stack1");
int leaf_s1(int x) { return x + 100; }
ARMLP_REPLACE(leaf, leaf_s1);
