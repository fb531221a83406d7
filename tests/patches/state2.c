/* System state 1, version 2, in a cumulative patch of leaf(). */
#include <armlp/livepatch.h>
ARMLP_PATCH("state2");
ARMLP_ATOMIC_REPLACE;
ARMLP_STATE(1, 2);
int leaf_state2(int x) { return x + 2 * 10000; }
ARMLP_REPLACE(leaf, leaf_state2);
