/* System state 1, version 1, in a cumulative patch of leaf(). */
#include <armlp/livepatch.h>
ARMLP_PATCH("state1");
ARMLP_ATOMIC_REPLACE;
ARMLP_STATE(1, 1);
int leaf_state1(int x) { return x + 1 * 10000; }
ARMLP_REPLACE(leaf, leaf_state1);
