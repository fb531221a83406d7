/* The kernel selftests' test_klp_livepatch, for a program (tests/test_selftests.py):
 * leaf() gets a new body. */
#include <armlp/livepatch.h>
ARMLP_PATCH("test_klp_livepatch");
int leaf_livepatch(int x) { return x + 1000; }
ARMLP_REPLACE(leaf, leaf_livepatch);
