/* One of three stacked patches of leaf(): leaf(x) = x + 200. */
#include <armlp/livepatch.h>
ARMLP_PATCH("stack2");
int leaf_s2(int x) { return x + 200; }
ARMLP_REPLACE(leaf, leaf_s2);
