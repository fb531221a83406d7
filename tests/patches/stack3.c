/* One of three stacked patches of leaf(): leaf(x) = x + 300. */
#include <armlp/livepatch.h>
ARMLP_PATCH("stack3");
int leaf_s3(int x) { return x + 300; }
ARMLP_REPLACE(leaf, leaf_s3);
